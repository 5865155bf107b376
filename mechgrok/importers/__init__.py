"""Importers: other projects' checkpoints as mechgrok run folders, beside the store.

Each format has one module (``nanda.py``: Nanda et al.'s progress-measures-paper files) exposing
``import_<format>_checkpoint(path, out=None, ...) -> Run``; what every importer shares (the
temporary folder renamed as the commit point, re-importing the same file, the imported train/test
split that :func:`run_dataset` reads) lives in ``_common.py``, and :data:`IMPORTERS` maps file
suffixes to importers. The converted run folder is an ordinary one: everything downstream
(trajectories, probes, analysis, reports) reads it unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..store import Run
from ._common import IMPORT_FILES, default_import_dir, run_dataset
from .chughtai import CHUGHTAI_FORMAT, import_chughtai_checkpoint, is_chughtai_config, match_group_table
from .nanda import NANDA_FORMAT, import_nanda_checkpoint, nanda_split, nanda_state_to_mechgrok
from .zhong import ZHONG_FORMAT, import_zhong_checkpoint, zhong_state_to_mechgrok

__all__ = [
    "CHUGHTAI_FORMAT",
    "import_chughtai_checkpoint",
    "is_chughtai_config",
    "match_group_table",
    "IMPORTERS",
    "IMPORT_FILES",
    "NANDA_FORMAT",
    "default_import_dir",
    "importer_for",
    "import_nanda_checkpoint",
    "nanda_split",
    "nanda_state_to_mechgrok",
    "run_dataset",
    "ZHONG_FORMAT",
    "import_zhong_checkpoint",
    "zhong_state_to_mechgrok",
]

IMPORTERS: dict[str, Callable[..., Run]] = {".pth": import_nanda_checkpoint, ".pt": import_nanda_checkpoint}
"""The importer of a file by its suffix (what ``mechgrok analyze FILE`` and :func:`mechgrok.analyze`
use); a new format adds its module and its suffixes here. Zhong et al.'s clock-and-pizza ``.pt``
files need their ``config_<id>.json`` as well, so they are imported by name
(:func:`import_zhong_checkpoint`, ``mechgrok analyze FILE.pt --config CONFIG.json``)."""


def importer_for(path: str | Path) -> Callable[..., Run] | None:
    """The importer for ``path`` by its suffix, or None when no importer reads it."""
    return IMPORTERS.get(Path(path).suffix)

"""Importers: other projects' checkpoints as mechgrok run folders, beside the store.

Each format has one module (``nanda.py``: Nanda et al.'s progress-measures-paper files) exposing
``import_<format>_checkpoint(path, out=None, ...) -> Run``; what every importer shares (the
temporary folder renamed as the commit point, re-importing the same file, the imported train/test
split that :func:`run_dataset` reads) lives in ``_common.py``. The converted run folder is an
ordinary one: everything downstream (trajectories, probes, analysis, reports) reads it unchanged.
"""

from ._common import IMPORT_FILES, default_import_dir, run_dataset
from .nanda import NANDA_FORMAT, import_nanda_checkpoint, nanda_split, nanda_state_to_mechgrok

__all__ = [
    "IMPORT_FILES",
    "NANDA_FORMAT",
    "default_import_dir",
    "import_nanda_checkpoint",
    "nanda_split",
    "nanda_state_to_mechgrok",
    "run_dataset",
]

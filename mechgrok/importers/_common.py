"""What every importer shares: the import folder's commit point, re-imports, the imported split.

An importer converts a foreign file into a :class:`~mechgrok.store.RunConfig` plus a function that
fills a run folder, and hands both to :func:`write_import`, which writes into a temporary sibling
folder (``.OUT.import-*``) renamed to ``out`` as the commit point: a killed import leaves no
half-filled ``out`` that would block importing the file again, and its temporary folder is
removed by the next import. The import record (``import.json``) holds the file's SHA-256, so
importing the same file into the same folder again returns that run unchanged
(:func:`existing_import`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import einops
import torch
from safetensors.torch import load_file

from ..config import MAX_NAME, RunConfig
from ..layout import IMPORT_FILES, RUN_FILES
from ..metrics import loss_and_accuracy
from ..store import Run, RunLock, StoreError
from ..tasks import Dataset, encode_pairs, make_dataset

__all__ = [
    "IMPORT_FILES",
    "check_shapes",
    "default_import_dir",
    "existing_import",
    "file_sha256",
    "load_weights_only",
    "one_layer_transformer",
    "plain",
    "run_dataset",
    "run_name",
    "split_losses",
    "write_import",
]


def default_import_dir(path: str | Path) -> Path:
    """Where ``FILE.pth`` is imported by default: ``FILE.mechgrok/`` next to it."""
    path = Path(path)
    return path.parent / f"{path.stem}.mechgrok"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def plain(value: Any) -> Any:
    """``value`` as JSON-able data for the import record (small tensors as lists, others by shape)."""
    if isinstance(value, torch.Tensor):
        return value.tolist() if value.numel() <= 16 else f"tensor{list(value.shape)}"
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def existing_import(out: Path, digest: str) -> Run | None:
    """The run in ``out`` when it holds this file's import; an error when it holds anything else."""
    if (out / RUN_FILES["config"]).exists():
        try:
            record = json.loads((out / IMPORT_FILES["record"]).read_text())
        except (OSError, ValueError):
            record = {}
        if isinstance(record, dict) and record.get("sha256") == digest:
            return Run.open(out)
        raise StoreError(f"{out}: already holds a different run; choose another folder for the import")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise StoreError(f"{out}: exists and is not an empty folder; choose another folder for the import")
    return None


def write_import(out: Path, digest: str, config: RunConfig, fill: Callable[[Run], None]) -> Run:
    """Create a run folder for ``config`` in a temporary sibling of ``out``, let ``fill`` write its
    checkpoints, metrics and import record, and rename it to ``out`` (the commit point)."""
    _clean_stale_imports(out)
    tmp = out.parent / f".{out.name}.import-{uuid.uuid4().hex[:12]}"
    try:
        run = Run.create(tmp, config, keep_lock=True)
    except StoreError as e:
        raise StoreError(f"{out}: cannot write the import next to it ({e})") from None
    try:
        fill(run)
        committed = _commit(tmp, out, digest)
    finally:
        run.held_lock.release()
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return committed


def _commit(tmp: Path, out: Path, digest: str) -> Run:
    """Rename the finished import folder to ``out`` (the commit point)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(tmp, out)  # replaces an empty folder; fails on a non-empty one
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        existing = existing_import(out, digest)  # another process imported it meanwhile
        if existing is None:
            raise StoreError(
                f"{out}: exists and is not an empty folder; choose another folder for the import"
            ) from None
        return existing
    with contextlib.suppress(OSError):
        fd = os.open(out.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return Run.open(out)


def _clean_stale_imports(out: Path) -> None:
    """Remove ``.OUT.import-*`` folders left by killed imports (those whose lock nobody holds)."""
    if not out.parent.is_dir():
        return
    for stale in out.parent.glob(f".{out.name}.import-*"):
        if not stale.is_dir():
            continue
        try:
            lock = RunLock(stale).acquire()
        except (StoreError, OSError):
            continue  # an import in progress in another process
        try:
            shutil.rmtree(stale, ignore_errors=True)
        finally:
            lock.release()


def run_dataset(run: Run) -> Dataset:
    """The dataset a run was trained on: the imported split when the folder has one
    (``split.safetensors``), otherwise :func:`~mechgrok.tasks.make_dataset` of its task."""
    split = run.path / IMPORT_FILES["split"]
    task = run.config.task
    if not split.exists():
        return make_dataset(task)
    try:
        tensors = load_file(split)
        train_ab, test_ab = tensors["train_ab"], tensors["test_ab"]
    except Exception as e:  # safetensors raises several types for damaged files
        raise StoreError(
            f"{split}: unreadable train/test split ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        ) from None
    if task.kind not in ("modular", "group") or (task.kind == "modular" and task.op != "add"):
        raise StoreError(
            f"{split}: an imported split needs a modular addition or group task, got {task.kind} {task.op}"
        )
    p = task.p

    def xy(ab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if task.kind == "group":
            from ..groups import finite_group

            return encode_pairs(ab[:, 0], ab[:, 1], task), finite_group(task.group).table[ab[:, 0], ab[:, 1]]
        return encode_pairs(ab[:, 0], ab[:, 1], task), (ab[:, 0] + ab[:, 1]) % p

    (train_x, train_y), (test_x, test_y) = xy(train_ab), xy(test_ab)
    return Dataset(task, train_x, train_y, test_x, test_y, train_ab, test_ab)


def run_name(prefix: str, path: Path) -> str:
    """``PREFIX-STEM``, cut to a valid run name (control characters and slashes replaced)."""
    stem = "".join(c if ord(c) >= 32 and c not in "/\\" else "_" for c in path.stem) or "run"
    return f"{prefix}-{stem}"[:MAX_NAME]


DEFAULT_MAX_UNPACKED_GB = 16.0
"""What an imported torch file may unpack to by default (``TrainConfig.max_memory_gb``'s default)."""


def check_unpacked_size(path: Path, max_memory_gb: float) -> None:
    """Refuse a torch zip file whose members unpack to more than the limit, before loading it
    (torch reads deflate-compressed members: a 3 MB crafted file can unpack to gigabytes)."""
    if not max_memory_gb or not zipfile.is_zipfile(path):
        return  # legacy (non-zip) files are read as stored: their size on disk bounds them
    try:
        with zipfile.ZipFile(path) as z:
            total = sum(i.file_size for i in z.infolist())
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise StoreError(f"{path}: damaged torch zip file ({e})") from None
    if total > max_memory_gb * 1e9:
        raise StoreError(f"{path}: unpacks to {total / 1e9:,.3g} GB, over the limit of {max_memory_gb:g} GB")


def load_weights_only(path: Path, max_memory_gb: float = DEFAULT_MAX_UNPACKED_GB) -> Any:
    """``torch.load(path, weights_only=True)`` onto the CPU after :func:`check_unpacked_size`
    (0 = no limit); any failure as a :class:`StoreError`. Every importer reads through here."""
    check_unpacked_size(path, max_memory_gb)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises pickle / runtime errors of many types
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StoreError(f"{path}: cannot read as a weights-only torch file ({msg[:200]})") from None


def check_shapes(state: dict[str, Any], where: str, expect: dict[str, tuple[int, ...]]) -> None:
    """Every ``state[key]`` has the shape ``expect[key]`` (checked in ``expect``'s order)."""
    for key, shape in expect.items():
        if tuple(state[key].shape) != shape:
            raise StoreError(f"{where}: {key} has shape {list(state[key].shape)}, expected {list(shape)}")


def one_layer_transformer(
    state: dict[str, torch.Tensor], p: int, n_heads: int, n_tokens: int
) -> dict[str, torch.Tensor]:
    """A progress-measures-paper layout one-layer transformer (their ``W_E [d_model, vocab]``,
    ``W_Q [head, d_head, d_model]``, ``W_O [d_model, head * d_head]``, ``W_in [d_mlp, d_model]``,
    ...) as :class:`~mechgrok.models.OneLayerTransformer`'s state dict in float32: the first
    ``n_tokens`` embeddings and the first ``p`` logits (those beyond p, e.g. '=', are ignored)."""
    f = lambda k: state[k].detach().to(torch.float32)
    return {
        "embed.W_E": f("embed.W_E")[:, :n_tokens].T.contiguous(),
        "pos_embed.W_pos": f("pos_embed.W_pos").contiguous(),
        "blocks.0.attn.W_Q": f("blocks.0.attn.W_Q").transpose(1, 2).contiguous(),
        "blocks.0.attn.W_K": f("blocks.0.attn.W_K").transpose(1, 2).contiguous(),
        "blocks.0.attn.W_V": f("blocks.0.attn.W_V").transpose(1, 2).contiguous(),
        # their z is flattened as (head, d_head) -> head-major columns of W_O
        "blocks.0.attn.W_O": einops.rearrange(f("blocks.0.attn.W_O"), "d (h e) -> h e d", h=n_heads).contiguous(),
        "blocks.0.mlp.W_in": f("blocks.0.mlp.W_in").T.contiguous(),
        "blocks.0.mlp.b_in": f("blocks.0.mlp.b_in").contiguous(),
        "blocks.0.mlp.W_out": f("blocks.0.mlp.W_out").T.contiguous(),
        "blocks.0.mlp.b_out": f("blocks.0.mlp.b_out").contiguous(),
        "unembed.W_U": f("unembed.W_U")[:, :p].contiguous(),
    }


def split_losses(model: torch.nn.Module, data: Dataset) -> tuple[torch.Tensor, ...]:
    """``(train_loss, train_acc, test_loss, test_acc)`` of ``model`` on ``data`` (NaN for an empty
    test split)."""
    with torch.no_grad():
        tr_loss, tr_acc = loss_and_accuracy(model(data.train_x), data.train_y)
        te_loss, te_acc = (
            loss_and_accuracy(model(data.test_x), data.test_y)
            if data.test_x.shape[0]
            else (torch.tensor(float("nan")),) * 2
        )
    return tr_loss, tr_acc, te_loss, te_acc

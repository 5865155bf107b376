"""Run folders: config, metrics, dense safetensors checkpoints, resume state, trajectories.

Layout of a run folder (file names live only here, in :data:`FILES`)::

    RUN/
      config.json          RunConfig + library versions + seed (written once, atomically)
      metrics.jsonl        one JSON object per logged step, appended as the run goes
      checkpoints.json     index of the checkpoints written so far with each file's sha256
                           (rewritten atomically; rebuilt from the files if lost)
      checkpoints/step_00001234.safetensors   the model's parameters at that step
      resume.safetensors   parameters, optimiser state, Grokfast EMA and RNG state, with the step
                           and scalar optimiser state in its safetensors metadata: ONE file, so
                           one rename commits the whole resume state (atomically replaced)
      summary.json         written at the end of training
      .lock                held (flock) while a trainer writes into the folder

Every file is written to a temporary name in the same folder, fsynced and renamed, so a kill at any
moment leaves each listed checkpoint readable; temporary files a kill leaves behind
(``.NAME.*.tmp``) are removed when the folder is next opened for writing. Folders written before
the resume metadata moved into ``resume.safetensors`` (a separate ``resume.json``) still resume.
No pickle anywhere: tensors are safetensors, everything else JSON; non-finite metrics are written
as ``null`` so that ``metrics.jsonl`` stays strict JSON.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import platform
import struct
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from .config import ConfigError, RunConfig
from .layout import NAME_PATTERNS, RUN_FILES, pattern_affixes

__all__ = [
    "FILES",
    "StoreError",
    "CheckpointError",
    "Run",
    "Trajectory",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_save_tensors",
    "library_versions",
    "RunLock",
]

FILES = RUN_FILES  # the run folder's names, from the registry (mechgrok.layout); the name is kept for callers


class StoreError(RuntimeError):
    """A problem with a run folder (missing, locked, unreadable); one line naming the path."""


class CheckpointError(StoreError):
    """A checkpoint file that cannot be read (truncated or corrupted)."""


def checkpoint_name(step: int) -> str:
    return NAME_PATTERNS["checkpoint"].format(step=step)


# metadata key of resume.safetensors holding the JSON resume metadata (step, optimiser scalars)
_RESUME_KEY = "mechgrok_resume"
# buffered metrics rows are appended to metrics.jsonl at most this many at a time (one write and
# no fsync per row; a kill loses at most the rows after the last resume state, which are replayed)
METRICS_FLUSH_ROWS = 500


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's bytes (``{}`` when there is none)."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise ValueError("__metadata__ is not an object")
    return meta


def strict_json(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by ``None``: bare ``NaN`` is not JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def metrics_line(row: dict[str, Any]) -> str:
    """One metrics row as a strict JSON line: NaN and infinities become ``null`` (read back as NaN)."""
    return json.dumps(strict_json(row), allow_nan=False) + "\n"


def append_text(path: Path, text: str) -> None:
    """Append ``text`` to ``path`` (metrics.jsonl). Not atomic: a kill can tear the last line,
    which readers ignore and a resume rewrites."""
    with _naming(path), open(path, "a") as f:
        f.write(text)
        f.flush()


@contextlib.contextmanager
def _naming(path: str | Path):
    """Give an OSError raised inside (``write`` on a full disk names no file) ``path``, so the
    CLI can say which file could not be written."""
    try:
        yield
    except OSError as e:
        if e.filename is None and e.errno is not None:
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise


def remove_temporary(folder: Path) -> list[Path]:
    """Delete the ``.NAME.*.tmp`` files an interrupted :func:`atomic_write_bytes` left in
    ``folder``. Only call it while holding the folder's lock (a live writer's file looks the same)."""
    removed = []
    for tmp in folder.glob(".*.tmp"):
        if tmp.is_file():
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            removed.append(tmp)
    return removed


# ----------------------------------------------------------------------------------------------
# atomic writes


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temporary file in the same folder, fsync, rename."""
    path = Path(path)
    with _naming(path):
        _atomic_write_bytes(path, data)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def atomic_save_tensors(
    path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """safetensors file written atomically (contiguous CPU copies of the tensors)."""
    data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write_bytes(path, save(data, metadata=metadata))


# record key -> distribution name on the package index (what ``pip install`` takes)
_VERSIONED_DISTRIBUTIONS = {
    "torch": "torch",
    "transformer_lens": "transformer-lens",
    "numpy": "numpy",
    "einops": "einops",
    "safetensors": "safetensors",
}


def _installed_version(distribution: str) -> str:
    """The installed version from the package metadata, as ``pip`` sees it.

    Reading ``module.__version__`` is not enough: transformer_lens 4.x has no such attribute, so
    every run used to record ``transformer_lens unknown``. The module attribute is only a fallback
    for a package used from a source tree without metadata.
    """
    import importlib
    import importlib.metadata

    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        module = importlib.import_module(distribution.replace("-", "_"))
    except ImportError:
        return "not installed"
    return str(getattr(module, "__version__", "unknown"))


def library_versions() -> dict[str, str]:
    """Versions stored with every run and sweep: mechgrok, Python, the numerical libraries, OS."""
    from . import __version__

    return {
        "mechgrok": __version__,
        "python": platform.python_version(),
        **{key: _installed_version(dist) for key, dist in _VERSIONED_DISTRIBUTIONS.items()},
        "platform": sys.platform,
    }


# ----------------------------------------------------------------------------------------------
# lock


class RunLock:
    """An exclusive ``flock`` on ``RUN/.lock``; released by the kernel even on kill -9."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / FILES["lock"]
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StoreError(
                f"{self.path.parent}: run folder is in use by another process (pid {holder}); "
                "wait for it to finish or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


# ----------------------------------------------------------------------------------------------
# reading


def _live_model(config: RunConfig, state: dict[str, torch.Tensor], source: str = "checkpoint"):
    """The config's hooked model holding ``state``, in eval mode.

    Building initialises random parameters that ``state`` then replaces; the build runs under a
    forked RNG so that loading a checkpoint never changes the caller's global torch random state.
    Parameters that do not fit the config (a hand-edited ``d_mlp``) raise :class:`CheckpointError`
    naming ``source``.
    """
    from .models import build_model

    with torch.random.fork_rng(devices=[]):
        model = build_model(config.model, config.task)
    _check_fits(model.state_dict(), state, source)
    model.load_state_dict(state)
    return model.eval()


def _check_fits(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], source: str) -> None:
    if set(expected) != set(state):
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        raise CheckpointError(
            f"{source}: parameters do not match the run's {FILES['config']} "
            f"(missing {missing[:3]}, unexpected {extra[:3]})"
        )
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise CheckpointError(
                f"{source}: {k} has shape {tuple(state[k].shape)} but the run's "
                f"{FILES['config']} gives {tuple(v.shape)}"
            )


@dataclass
class Trajectory:
    """A run's checkpoints stacked: ``params[name]`` is ``[n_checkpoints, *shape]``.

    ``steps`` (int64 ``[n_checkpoints]``) gives the training step of each row. Probes iterate or
    batch over the leading axis; :meth:`model` rebuilds one row as a live hooked model.
    """

    steps: torch.Tensor
    params: dict[str, torch.Tensor]
    config: RunConfig

    def __len__(self) -> int:
        return int(self.steps.shape[0])

    def state_dict(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.params.items()}

    def index_of(self, step: int) -> int:
        """Row of the checkpoint at ``step`` (the nearest one at or before it)."""
        idx = int(torch.searchsorted(self.steps, torch.tensor(step), right=True)) - 1
        return max(idx, 0)

    def model(self, i: int):
        """Row ``i`` as a live hooked model (a fresh module; the trajectory is not shared)."""
        return _live_model(self.config, {k: v.clone() for k, v in self.state_dict(i).items()})

    def subset(self, rows: list[int] | torch.Tensor) -> Trajectory:
        rows = torch.as_tensor(rows, dtype=torch.long)
        return Trajectory(self.steps[rows], {k: v[rows] for k, v in self.params.items()}, self.config)


class Run:
    """A run folder on disk. Opening never needs the process that wrote it.

    >>> run = Run.open("checkpoints/parity")
    >>> run.config.optim.weight_decay, run.steps[-1]
    >>> model = run.model(run.steps[-1])          # live hooked model
    >>> traj = run.trajectory()                    # every checkpoint, stacked
    >>> m = run.metrics()                          # dict of numpy columns
    """

    def __init__(self, path: str | Path, config: RunConfig):
        self.path = Path(path)
        self.config = config
        self.held_lock: RunLock | None = None  # set by create(..., keep_lock=True)
        self._rebuilt: tuple[tuple, dict[int, str]] | None = None  # index rebuilt from the files

    # -- creation ------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, config: RunConfig, *, keep_lock: bool = False) -> Run:
        """Create (or reuse an empty) run folder and write its config.

        The folder's lock is taken *before* checking for and writing ``config.json``: two trainers
        started at once on a new folder would otherwise both see no config, and the slower one
        could leave its config (another seed) beside the faster one's weights. With
        ``keep_lock=True`` the lock stays held in ``run.held_lock`` for the caller to release.
        """
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise StoreError(f"{path}: exists and is not a folder")
        try:
            (path / FILES["checkpoints"]).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"{path}: cannot create the run folder ({e.strerror or e})") from None
        lock = RunLock(path).acquire()
        try:
            if (path / FILES["config"]).exists():
                raise StoreError(f"{path}: already holds a run; use --resume to continue it or choose another --out")
            remove_temporary(path)
            record = {"config": config.to_dict(), "seed": config.train.seed, "versions": library_versions()}
            atomic_write_json(path / FILES["config"], record)
        except BaseException:
            lock.release()
            raise
        run = cls(path, config)
        if keep_lock:
            run.held_lock = lock
        else:
            lock.release()
        return run

    def clean_temporary(self) -> None:
        """Remove temporary files left by a killed writer (call with the folder's lock held)."""
        remove_temporary(self.path)
        if (self.path / FILES["checkpoints"]).is_dir():
            remove_temporary(self.path / FILES["checkpoints"])

    @classmethod
    def open(cls, path: str | Path) -> Run:
        path = Path(path)
        cfg_file = path / FILES["config"]
        if not path.is_dir():
            raise StoreError(f"{path}: no such run folder")
        if not cfg_file.exists():
            raise StoreError(f"{path}: not a mechgrok run folder (no {FILES['config']})")
        try:
            record = json.loads(cfg_file.read_text())
            config = RunConfig.from_dict(record["config"])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise StoreError(f"{cfg_file}: unreadable run config ({e})") from None
        except ConfigError as e:
            raise StoreError(f"{cfg_file}: {e}") from None
        return cls(path, config)

    @property
    def versions(self) -> dict[str, str]:
        return json.loads((self.path / FILES["config"]).read_text()).get("versions", {})

    # -- checkpoints ---------------------------------------------------------------------------
    def _index(self, warn: bool = True) -> dict[int, str | None]:
        """step -> sha256 of the checkpoint file (``None`` for indexes written before checksums).

        A missing index with checkpoint files present (the index was lost) is rebuilt in memory
        from the files that read back whole; it is written back the next time a trainer, holding
        the lock, writes the index (readers never write: they could race a live trainer).
        """
        index = self.path / FILES["index"]
        if not index.exists():
            return dict(self._rebuild_index(warn))
        try:
            record = json.loads(index.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise StoreError(f"{index}: unreadable checkpoint index ({e})") from None
        except OSError as e:
            raise StoreError(f"{index}: cannot read the checkpoint index ({e.strerror or e})") from None
        steps = record.get("steps") if isinstance(record, dict) else None
        sums = record.get("sha256", {}) if isinstance(record, dict) else None
        if (
            not isinstance(steps, list)
            or not all(type(s) is int and s >= 0 for s in steps)
            or not isinstance(sums, dict)
            or not all(isinstance(v, str) for v in sums.values())
        ):
            raise StoreError(
                f'{index}: malformed checkpoint index (expected {{"steps": [non-negative ints], '
                f'"sha256": {{step: hex}}}})'
            )
        return {s: sums.get(str(s)) for s in sorted(set(steps))}

    def _rebuild_index(self, warn: bool) -> dict[int, str]:
        folder = self.path / FILES["checkpoints"]
        prefix, suffix = pattern_affixes("checkpoint")
        files = sorted(folder.glob(f"{prefix}*{suffix}")) if folder.is_dir() else []
        key = tuple((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in files)
        if self._rebuilt is not None and self._rebuilt[0] == key:
            return self._rebuilt[1]  # warned already
        found: dict[int, str] = {}
        for f in files:
            stem = f.name[len(prefix) : -len(suffix)]
            if not stem.isdigit() or f.name != checkpoint_name(int(stem)):
                continue
            data = f.read_bytes()
            try:
                load(data)
            except (SafetensorError, ValueError, RuntimeError):
                continue  # damaged: not listed (an indexed file is always whole)
            found[int(stem)] = sha256_hex(data)
        if found and warn:
            warnings.warn(
                f"{self.path / FILES['index']}: missing; rebuilt from {len(found)} readable checkpoint files",
                stacklevel=3,
            )
        self._rebuilt = (key, found)
        return found

    def _write_index(self, index: dict[int, str | None]) -> None:
        steps = sorted(index)
        sums = {str(s): index[s] for s in steps if index[s] is not None}
        atomic_write_json(self.path / FILES["index"], {"steps": steps, "sha256": sums})

    @property
    def steps(self) -> list[int]:
        """Steps of the checkpoints listed in the index (each one fully written)."""
        return sorted(self._index())

    def checkpoint_path(self, step: int) -> Path:
        return self.path / FILES["checkpoints"] / checkpoint_name(step)

    def write_checkpoint(self, step: int, state: dict[str, torch.Tensor]) -> None:
        """Save parameters at ``step`` atomically, then list it with its sha256 in the index
        (atomically): the index is the commit point, so a listed checkpoint is always whole."""
        data = save({k: v.detach().to("cpu").contiguous() for k, v in state.items()}, metadata={"step": str(step)})
        atomic_write_bytes(self.checkpoint_path(step), data)
        index = self._index(warn=False)  # no index yet: this is the first checkpoint (or it was lost)
        index[step] = sha256_hex(data)
        self._write_index(index)

    def truncate_checkpoints(self, after_step: int) -> None:
        """Forget checkpoints with step > ``after_step`` (used when resuming)."""
        # the trainer holding the lock: a missing index is rebuilt here without a warning (a kill
        # between the first checkpoint file and its index leaves exactly that)
        self._write_index({s: h for s, h in self._index(warn=False).items() if s <= after_step})

    def checkpoint(self, step: int, *, _index: dict[int, str | None] | None = None) -> dict[str, torch.Tensor]:
        """Parameters at ``step``; a damaged file (bytes that do not match the index's sha256,
        or that do not parse) raises :class:`CheckpointError` naming it."""
        path = self.checkpoint_path(step)
        index = self._index() if _index is None else _index
        if not path.exists():
            raise CheckpointError(f"{path}: no checkpoint at step {step} (have {len(index)} checkpoints)")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise CheckpointError(f"{path}: cannot read checkpoint ({e.strerror or e})") from None
        expected = index.get(step)
        if expected is not None and sha256_hex(data) != expected:
            raise CheckpointError(f"{path}: corrupted checkpoint (sha256 does not match {FILES['index']})")
        try:
            return load(data)
        except (SafetensorError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{path}: corrupted or truncated checkpoint ({e})") from None

    def model(self, step: int | None = None):
        """A live hooked model with the parameters of ``step`` (default: the last checkpoint)."""
        if step is None:
            steps = self.steps
            if not steps:
                raise StoreError(f"{self.path}: run has no checkpoints yet")
            step = steps[-1]
        return _live_model(self.config, self.checkpoint(step), str(self.checkpoint_path(step)))

    def trajectory(self, steps: list[int] | None = None, errors: str = "warn") -> Trajectory:
        """Load checkpoints (default: all listed) stacked as ``[n, ...]`` tensors.

        ``errors``: ``"raise"`` stops at a damaged checkpoint; ``"warn"`` skips it with a warning
        naming the file; ``"skip"`` skips silently.
        """
        import warnings

        if errors not in ("raise", "warn", "skip"):
            raise ValueError(f"errors: must be 'raise', 'warn' or 'skip', got {errors!r}")
        index = self._index()  # read once, not once per checkpoint
        wanted = sorted(index) if steps is None else list(steps)
        with torch.random.fork_rng(devices=[]):
            from .models import build_model

            expected = build_model(self.config.model, self.config.task).state_dict()
        good: list[int] = []
        states: list[dict[str, torch.Tensor]] = []
        last_error: CheckpointError | None = None
        for step in wanted:
            try:
                state = self.checkpoint(step, _index=index)
            except CheckpointError as e:
                last_error = e
                if errors == "raise":
                    raise
                if errors == "warn":
                    warnings.warn(str(e), stacklevel=2)
                continue
            # parameters that do not fit the config are not one damaged file but a folder whose
            # config was edited: raised whatever ``errors`` says (skipping would skip them all)
            _check_fits(expected, state, str(self.checkpoint_path(step)))
            states.append(state)
            good.append(step)
        if not states:
            raise StoreError(
                f"{self.path}: no readable checkpoints" + (f" (last problem: {last_error})" if last_error else "")
            )
        params = {k: torch.stack([s[k] for s in states]) for k in states[0]}
        return Trajectory(torch.tensor(good, dtype=torch.int64), params, self.config)

    # -- metrics -------------------------------------------------------------------------------
    def metrics_rows(self) -> list[dict[str, Any]]:
        """Logged rows, ``null`` read back as NaN.

        A damaged line is skipped with a warning naming the file and line, and every other row is
        kept; a torn last line (no final newline: a kill during an append) is ignored silently.
        """
        path = self.path / FILES["metrics"]
        if not path.exists():
            return []
        try:
            text = path.read_bytes().decode("utf-8", errors="replace")
        except OSError as e:
            raise StoreError(f"{path}: cannot read metrics ({e.strerror or e})") from None
        lines = text.split("\n")
        last = len(lines)  # the piece after the final newline: "" or an append a kill cut short
        rows = []
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict) or type(row.get("step")) is not int:
                    raise ValueError("not an object with an integer 'step'")
            except ValueError as e:  # JSONDecodeError is a ValueError
                if lineno != last:  # a torn last line is expected after a kill: silent
                    warnings.warn(f"{path}:{lineno}: damaged metrics line skipped ({e})", stacklevel=2)
                continue
            rows.append({k: (math.nan if v is None else v) for k, v in row.items()})
        return rows

    def metrics(self) -> dict[str, np.ndarray]:
        """Columns of the metrics: ``step``, ``train_loss``, ``train_acc``, ``test_loss``,
        ``test_acc``, ``weight_norm``, ``lr``, ``weight_decay``, ``l1`` (NaN where not evaluated)."""
        rows = self.metrics_rows()
        keys: list[str] = []
        for r in rows:
            for k in r:
                if k not in keys:
                    keys.append(k)
        return {
            k: np.array([r.get(k, np.nan) for r in rows], dtype=np.float64 if k != "step" else np.int64) for k in keys
        }

    def append_metrics(self, rows: list[dict[str, Any]]) -> None:
        """Append rows to ``metrics.jsonl`` (strict JSON: non-finite values as ``null``)."""
        if rows:
            self.append_metrics_text("".join(metrics_line(r) for r in rows))

    def append_metrics_text(self, text: str) -> None:
        """Append lines already made by :func:`metrics_line` (the sweep engine makes them early)."""
        append_text(self.path / FILES["metrics"], text)

    def truncate_metrics(self, before_step: int) -> None:
        """Keep the rows with step < ``before_step`` (used when resuming); damaged lines are
        dropped with a warning, every good row is kept."""
        rows = [r for r in self.metrics_rows() if r["step"] < before_step]
        atomic_write_bytes(self.path / FILES["metrics"], "".join(metrics_line(r) for r in rows).encode())

    # -- resume / summary ----------------------------------------------------------------------
    def write_resume(self, step: int, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Resume state for continuing *at* ``step`` (parameters, optimiser, EMA, RNG).

        The JSON metadata (step, optimiser scalars) goes into the safetensors metadata of the same
        file, so one rename commits it all: with two files a kill between the writes resumed from
        the old step with the newer weights. A legacy ``resume.json`` is removed afterwards (a kill
        before that leaves it behind, ignored: the new file's own metadata wins).
        """
        data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        record = json.dumps({"step": int(step), **meta}, allow_nan=False)
        atomic_write_bytes(self.path / FILES["resume"], save(data, metadata={_RESUME_KEY: record}))
        (self.path / FILES["resume_meta"]).unlink(missing_ok=True)

    def has_resume(self) -> bool:
        return (self.path / FILES["resume"]).exists()

    def resume_step(self) -> int:
        """The step the resume state continues at (reads only the file's header)."""
        return self.read_resume(tensors=False)[0]

    def read_resume(self, tensors: bool = True) -> tuple[int, dict[str, torch.Tensor], dict[str, Any]]:
        path = self.path / FILES["resume"]
        if not path.exists():
            raise StoreError(f"{self.path}: no resume state to continue from")
        try:
            data = path.read_bytes()
            md = _safetensors_metadata(data)
            if _RESUME_KEY in md:
                meta_path, meta = path, json.loads(md[_RESUME_KEY])
            else:  # a folder written before the metadata moved into resume.safetensors
                meta_path = self.path / FILES["resume_meta"]
                if not meta_path.exists():
                    raise StoreError(
                        f"{path}: resume state without its metadata (no {_RESUME_KEY!r} "
                        f"entry and no {FILES['resume_meta']})"
                    )
                meta = json.loads(meta_path.read_text())
            loaded = load(data) if tensors else {}
        except StoreError:
            raise
        except (json.JSONDecodeError, UnicodeDecodeError, SafetensorError, OSError, ValueError, struct.error) as e:
            raise StoreError(f"{path}: unreadable resume state ({e})") from None
        if not isinstance(meta, dict) or type(meta.get("step")) is not int or meta["step"] < 0:
            raise StoreError(f"{meta_path}: resume metadata without a non-negative integer 'step'")
        return meta["step"], loaded, meta

    def summary(self) -> dict[str, Any] | None:
        path = self.path / FILES["summary"]
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise StoreError(f"{path}: unreadable summary ({e})") from None

    def write_summary(self, summary: dict[str, Any]) -> None:
        """The summary as strict JSON (a diverged run's NaN/inf values become ``null``)."""
        atomic_write_bytes(
            self.path / FILES["summary"], (json.dumps(strict_json(summary), indent=2, allow_nan=False) + "\n").encode()
        )

    def lock(self) -> RunLock:
        return RunLock(self.path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, preset={self.config.name!r}, checkpoints={len(self.steps)})"

"""Run folders: config, metrics, dense safetensors checkpoints, resume state, trajectories.

Layout of a run folder (file names live only here, in :data:`FILES`)::

    RUN/
      config.json          RunConfig + library versions + seed (written once, atomically)
      metrics.jsonl        one JSON object per logged step, appended as the run goes
      checkpoints.json     index of the checkpoints written so far (rewritten atomically)
      checkpoints/step_00001234.safetensors   the model's parameters at that step
      resume.safetensors   optimiser state, Grokfast EMA and RNG state (atomically replaced)
      resume.json          the step the resume state belongs to and scalar optimiser state
      summary.json         written at the end of training
      .lock                held (flock) while a trainer writes into the folder

Every file is written to a temporary name in the same folder, fsynced and renamed, so a kill at any
moment leaves each listed checkpoint readable. No pickle anywhere: tensors are safetensors,
everything else JSON.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from .config import ConfigError, RunConfig

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

FILES = {
    "config": "config.json",
    "metrics": "metrics.jsonl",
    "index": "checkpoints.json",
    "checkpoints": "checkpoints",
    "resume": "resume.safetensors",
    "resume_meta": "resume.json",
    "summary": "summary.json",
    "lock": ".lock",
}


class StoreError(RuntimeError):
    """A problem with a run folder (missing, locked, unreadable); one line naming the path."""


class CheckpointError(StoreError):
    """A checkpoint file that cannot be read (truncated or corrupted)."""


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}.safetensors"


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


def atomic_save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """safetensors file written atomically (contiguous CPU copies of the tensors)."""
    data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write_bytes(path, save(data, metadata=metadata))


# record key -> distribution name on the package index (what ``pip install`` takes)
_VERSIONED_DISTRIBUTIONS = {
    "torch": "torch", "transformer_lens": "transformer-lens", "numpy": "numpy", "einops": "einops",
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

    def acquire(self) -> "RunLock":
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

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


# ----------------------------------------------------------------------------------------------
# reading


def _live_model(config: RunConfig, state: dict[str, torch.Tensor]):
    """The config's hooked model holding ``state``, in eval mode.

    Building initialises random parameters that ``state`` then replaces; the build runs under a
    forked RNG so that loading a checkpoint never changes the caller's global torch random state.
    """
    from .models import build_model

    with torch.random.fork_rng(devices=[]):
        model = build_model(config.model, config.task)
    model.load_state_dict(state)
    return model.eval()


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

    def subset(self, rows: list[int] | torch.Tensor) -> "Trajectory":
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

    # -- creation ------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, config: RunConfig) -> "Run":
        """Create (or reuse an empty) run folder and write its config."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise StoreError(f"{path}: exists and is not a folder")
        if (path / FILES["config"]).exists():
            raise StoreError(f"{path}: already holds a run; use --resume to continue it or choose another --out")
        (path / FILES["checkpoints"]).mkdir(parents=True, exist_ok=True)
        record = {"config": config.to_dict(), "seed": config.train.seed, "versions": library_versions()}
        atomic_write_json(path / FILES["config"], record)
        return cls(path, config)

    @classmethod
    def open(cls, path: str | Path) -> "Run":
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
    @property
    def steps(self) -> list[int]:
        """Steps of the checkpoints listed in the index (each one fully written)."""
        index = self.path / FILES["index"]
        if not index.exists():
            return []
        try:
            return sorted(int(s) for s in json.loads(index.read_text())["steps"])
        except (json.JSONDecodeError, KeyError, ValueError) as e:
            raise StoreError(f"{index}: unreadable checkpoint index ({e})") from None

    def checkpoint_path(self, step: int) -> Path:
        return self.path / FILES["checkpoints"] / checkpoint_name(step)

    def write_checkpoint(self, step: int, state: dict[str, torch.Tensor]) -> None:
        """Save parameters at ``step`` atomically, then list it in the index (atomically)."""
        atomic_save_tensors(self.checkpoint_path(step), state, {"step": str(step)})
        steps = sorted(set(self.steps) | {step})
        atomic_write_json(self.path / FILES["index"], {"steps": steps})

    def truncate_checkpoints(self, after_step: int) -> None:
        """Forget checkpoints with step > ``after_step`` (used when resuming)."""
        steps = [s for s in self.steps if s <= after_step]
        atomic_write_json(self.path / FILES["index"], {"steps": steps})

    def checkpoint(self, step: int) -> dict[str, torch.Tensor]:
        """Parameters at ``step``; a damaged file raises :class:`CheckpointError` naming it."""
        path = self.checkpoint_path(step)
        if not path.exists():
            raise CheckpointError(f"{path}: no checkpoint at step {step} (have {len(self.steps)} checkpoints)")
        try:
            return load_file(path)
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{path}: corrupted or truncated checkpoint ({e})") from None

    def model(self, step: int | None = None):
        """A live hooked model with the parameters of ``step`` (default: the last checkpoint)."""
        if step is None:
            steps = self.steps
            if not steps:
                raise StoreError(f"{self.path}: run has no checkpoints yet")
            step = steps[-1]
        return _live_model(self.config, self.checkpoint(step))

    def trajectory(self, steps: list[int] | None = None, errors: str = "warn") -> Trajectory:
        """Load checkpoints (default: all listed) stacked as ``[n, ...]`` tensors.

        ``errors``: ``"raise"`` stops at a damaged checkpoint; ``"warn"`` skips it with a warning
        naming the file; ``"skip"`` skips silently.
        """
        import warnings

        if errors not in ("raise", "warn", "skip"):
            raise ValueError(f"errors: must be 'raise', 'warn' or 'skip', got {errors!r}")
        wanted = self.steps if steps is None else list(steps)
        good: list[int] = []
        states: list[dict[str, torch.Tensor]] = []
        for step in wanted:
            try:
                states.append(self.checkpoint(step))
                good.append(step)
            except CheckpointError as e:
                if errors == "raise":
                    raise
                if errors == "warn":
                    warnings.warn(str(e), stacklevel=2)
        if not states:
            raise StoreError(f"{self.path}: no readable checkpoints")
        params = {k: torch.stack([s[k] for s in states]) for k in states[0]}
        return Trajectory(torch.tensor(good, dtype=torch.int64), params, self.config)

    # -- metrics -------------------------------------------------------------------------------
    def metrics_rows(self) -> list[dict[str, Any]]:
        """Logged rows (a torn last line from a kill is ignored)."""
        path = self.path / FILES["metrics"]
        if not path.exists():
            return []
        rows = []
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
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
        return {k: np.array([r.get(k, np.nan) for r in rows], dtype=np.float64 if k != "step" else np.int64) for k in keys}

    def truncate_metrics(self, before_step: int) -> None:
        rows = [r for r in self.metrics_rows() if r["step"] < before_step]
        atomic_write_bytes(self.path / FILES["metrics"], "".join(json.dumps(r) + "\n" for r in rows).encode())

    # -- resume / summary ----------------------------------------------------------------------
    def write_resume(self, step: int, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Resume state for continuing *at* ``step`` (parameters, optimiser, EMA, RNG)."""
        atomic_save_tensors(self.path / FILES["resume"], tensors)
        atomic_write_json(self.path / FILES["resume_meta"], {"step": step, **meta})

    def read_resume(self) -> tuple[int, dict[str, torch.Tensor], dict[str, Any]]:
        meta_path, path = self.path / FILES["resume_meta"], self.path / FILES["resume"]
        if not meta_path.exists() or not path.exists():
            raise StoreError(f"{self.path}: no resume state to continue from")
        try:
            meta = json.loads(meta_path.read_text())
            tensors = load_file(path)
        except (json.JSONDecodeError, SafetensorError, OSError) as e:
            raise StoreError(f"{path}: unreadable resume state ({e})") from None
        return int(meta["step"]), tensors, meta

    def summary(self) -> dict[str, Any] | None:
        path = self.path / FILES["summary"]
        return json.loads(path.read_text()) if path.exists() else None

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_json(self.path / FILES["summary"], summary)

    def lock(self) -> RunLock:
        return RunLock(self.path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, preset={self.config.name!r}, checkpoints={len(self.steps)})"


def iter_runs(root: str | Path) -> Iterator[Run]:
    """Every run folder directly under ``root``."""
    for p in sorted(Path(root).iterdir()):
        if (p / FILES["config"]).exists():
            yield Run.open(p)


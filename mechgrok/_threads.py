"""How many intra-op threads torch may use: from the work size, never more than helps.

torch starts with one OpenMP thread per core. Between two small matmuls those threads spin-wait
at a barrier; when another process holds a core, a spinning thread waits for a thread that is not
running, and a tiny model's step takes 100x longer (``mechgrok train parity`` took
55 s for 400 steps beside one busy process, 0.9 s with one thread). So mechgrok picks the count
from the work per step: one thread below :data:`MACS_PER_EXTRA_THREAD`, and one more per that much
work above it, up to the cores this process may use (and ``OMP_NUM_THREADS`` when set). The
threshold comes from ``benchmarks/bench_threads.py`` (README: numbers and command).

Everything that trains or analyses sets the count through :func:`intra_op_threads`, which restores
the caller's count afterwards, so calling mechgrok from a notebook leaves torch as it was. The
user overrides the automatic count with ``--threads`` / a ``threads=`` argument,
``$MECHGROK_THREADS`` or ``train.threads`` (:func:`threads_for`).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

if TYPE_CHECKING:
    from .config import RunConfig

T = TypeVar("T")

__all__ = [
    "ENV_VAR",
    "MACS_PER_EXTRA_THREAD",
    "auto_threads",
    "available_cores",
    "intra_op_threads",
    "run_config_of",
    "threads_for",
    "with_threads",
    "work_per_step",
]

MACS_PER_EXTRA_THREAD = 1e10
"""Multiply-adds per training step (forward, one batch) each extra thread needs before it is used.

Measured on the 2-core development machine, shared with other jobs (``benchmarks/bench_threads.py
--auto 1``): one thread beat torch's two on every preset, by 4.8x on the largest (the transformer,
~2.6e9 per step) and 10-150x on the MLPs. So every preset gets one thread; a model with ~8x the
transformer's work per step gets a second. Raise ``train.threads`` on a machine of your own."""


def available_cores() -> int:
    """CPU cores this process may run on, capped by ``OMP_NUM_THREADS`` when that is set."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.strip().isdigit() and int(env) > 0:
        cores = min(cores, int(env))
    return max(1, cores)


def work_per_step(config: RunConfig) -> float:
    """Multiply-adds of one forward pass over one batch: parameters x batch rows x positions.

    A rough size, not a FLOP count (the MLP fast paths do less, attention more); it only has to
    order configs by size for :func:`auto_threads`."""
    res = config.resources()
    t, o = config.task, config.optim
    n_train = t.n_train if t.kind == "parity" else max(1, round(t.n_examples * t.train_fraction))
    batch = o.batch_size if 0 < o.batch_size < n_train else n_train
    positions = (
        1
        if t.kind == "parity" or config.model.kind in ("mlp", "cossin_mlp")
        else {"pairs": 2, "equals": 3, "sequence": 6}[t.format]
    )
    return float(res["params"]) * batch * positions


def auto_threads(macs_per_step: float, cores: int | None = None) -> int:
    """Threads for a step of ``macs_per_step`` multiply-adds: 1 for small work, then one per
    :data:`MACS_PER_EXTRA_THREAD`, at most ``cores`` (default :func:`available_cores`)."""
    cores = available_cores() if cores is None else cores
    return max(1, min(cores, int(macs_per_step // MACS_PER_EXTRA_THREAD)))


ENV_VAR = "MECHGROK_THREADS"
"""Environment variable: the thread count for every mechgrok call in this process and the
processes it starts (``mechgrok demo --threads`` sets it for its background trainer)."""


def _check(value: int, what: str) -> int:
    from .config import MAX_THREADS, ConfigError

    if not 0 <= value <= MAX_THREADS:
        raise ConfigError(f"{what}: must be in [0, {MAX_THREADS}] (0 = automatic), got {value}")
    return value


def threads_for(config: RunConfig | None, requested: int | None = None) -> int:
    """The intra-op thread count for training or analysing ``config``.

    In order, the first that is > 0: ``requested`` (``--threads``, a ``threads=`` argument),
    ``$MECHGROK_THREADS``, ``config.train.threads``; else automatic: :func:`auto_threads` of
    :func:`work_per_step`, 1 on CUDA (the host only launches kernels) or without a config."""
    from .config import ConfigError

    if requested:
        return _check(requested, "threads")
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ConfigError(f"${ENV_VAR}: must be an integer, got {env!r}") from None
        if _check(n, f"${ENV_VAR}"):
            return n
    if config is None:
        return 1
    if config.train.threads:
        return config.train.threads
    if config.train.device.startswith("cuda"):
        return 1
    return auto_threads(work_per_step(config))


def run_config_of(run_or_path: Any) -> RunConfig | None:
    """The config of a run folder, :class:`~mechgrok.store.Run` or trajectory; None when there is
    none to read (a ``.pth`` to import, a sweep folder, a damaged folder: the caller reports that)."""
    from .layout import RUN_FILES
    from .store import Run

    config = getattr(run_or_path, "config", None)
    if config is not None or isinstance(run_or_path, Run):
        return config
    try:
        path = Path(run_or_path)
        if (path / RUN_FILES["config"]).is_file():
            return Run.open(path).config
    except Exception:
        return None
    return None


def with_threads(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorate a function whose first argument is a run (folder, Run, Trajectory) with a
    ``threads=`` keyword: it runs under :func:`intra_op_threads` of :func:`threads_for` the run's
    config, and the caller's thread count is restored afterwards."""

    @functools.wraps(fn)
    def wrapper(run_or_path: Any, *args: Any, threads: int | None = None, **kwargs: Any) -> T:
        with intra_op_threads(threads_for(run_config_of(run_or_path), threads)):
            return fn(run_or_path, *args, **kwargs)

    return wrapper


@contextlib.contextmanager
def intra_op_threads(n: int) -> Iterator[int]:
    """``torch.set_num_threads(n)`` for the block, the caller's count restored afterwards.

    ``n <= 0`` leaves the count alone. Yields the count in force."""
    before = torch.get_num_threads()
    if n <= 0 or n == before:
        yield before
        return
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)

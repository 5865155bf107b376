"""How the batched engine trains (:class:`EngineConfig`), and which members may share a batch
(:data:`GROUP_FIELDS`, :func:`group_key`)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Literal

from ..config import ConfigError, RunConfig, check_types

__all__ = ["EngineConfig", "GROUP_FIELDS", "group_key"]


@dataclass(frozen=True)
class EngineConfig:
    """How the batched engine trains (not what it trains)."""

    max_batch: int = 1024
    """Models trained at once (rows); further members wait and take the row of one that finishes."""
    engine: Literal["auto", "fused", "vmap", "loop"] = "auto"
    """Batched forward: ``fused`` hand-batched MLPs, ``vmap`` torch.func on the hooked model,
    ``loop`` member by member (RNN/LSTM), ``auto`` the fastest that supports the model."""
    device: str = ""
    """torch device; empty = the members' ``train.device``."""
    log_every: int = 1
    """Metrics row every this many steps (evaluation steps are always logged); 1 = every step,
    like the single trainer."""
    early_stop: bool = False
    """Stop a member once it has clearly generalised (see ``patience``) or diverged (non-finite
    loss); its row goes to the next waiting member."""
    patience: int = 500
    """Early stop: steps a member must stay at train and test accuracy >= ``threshold``."""
    threshold: float = 0.99
    """Early stop: the accuracy that counts as generalised."""
    chunk_mb: float = 0.0
    """Members are pushed through forward/backward in chunks whose activations take about this
    many MiB (small chunks stay in CPU cache); 0 = auto (8 on CPU, 4096 on CUDA)."""
    writers: int = 4
    """Background threads writing run folders."""
    workers: int = 0
    """Threads training chunks in parallel (CPU); 0 = one per CPU core this process may use. With
    more than 1, each runs torch ops on one intra-op thread (``torch.set_num_threads(1)`` while
    the engine runs, restored after): chunks are independent, so this scales across cores without
    OpenMP's barriers, which stall badly when other processes share the cores. Trajectories are
    bitwise the same for any number of workers (tested)."""

    def __post_init__(self) -> None:
        check_types(self)
        if self.max_batch < 1:
            raise ConfigError(f"engine.max_batch: must be >= 1, got {self.max_batch}")
        if self.log_every < 1:
            raise ConfigError(f"engine.log_every: must be >= 1, got {self.log_every}")
        if self.patience < 0:
            raise ConfigError(f"engine.patience: must be >= 0, got {self.patience}")
        if not 0 < self.threshold <= 1:
            raise ConfigError(f"engine.threshold: must be in (0, 1], got {self.threshold}")
        if self.chunk_mb < 0:
            raise ConfigError(f"engine.chunk_mb: must be >= 0, got {self.chunk_mb}")
        if self.writers < 1:
            raise ConfigError(f"engine.writers: must be >= 1, got {self.writers}")
        if self.workers < 0:
            raise ConfigError(f"engine.workers: must be >= 0 (0 = one per CPU core), got {self.workers}")

    def n_workers(self) -> int:
        """``workers``, with 0 resolved to the CPU cores this process may run on."""
        if self.workers:
            return self.workers
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not on Linux
            return max(1, os.cpu_count() or 1)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineConfig:
        known = set(cls.__dataclass_fields__)
        bad = set(data) - known
        if bad:
            raise ConfigError(f"engine.{sorted(bad)[0]}: unknown key; allowed: {', '.join(sorted(known))}")
        return cls(**data)


# Config fields every member of one batch must share; everything else may differ per member.
GROUP_FIELDS = {
    "task": ("kind", "p", "op", "pairs", "format", "n_bits"),
    "model": None,  # all of it: one architecture per batch
    "optim": (
        "betas",
        "eps",
        "grad_clip",
        "grokfast_alpha",
        "grokfast_lambda",
        "batch_size",
        "loss_reduction",
        "loss",
        "loss_dtype",
        "orthograd",
        "grokfast_filter",
        "grokfast_window",
    ),
    "train": ("device",),
}


def group_key(config: RunConfig) -> str:
    """Members with equal keys can be trained in one batch."""
    d = config.to_dict()
    key = {}
    for section, names in GROUP_FIELDS.items():
        key[section] = d[section] if names is None else {n: d[section][n] for n in names}
    return json.dumps(key, sort_keys=True)

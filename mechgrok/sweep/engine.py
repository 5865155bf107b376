"""The batched training engine: many models of one architecture trained at once.

Members are rows of stacked parameter tensors (``{name: [rows, *shape]}``, the single model's
``state_dict`` names). Each row has its own seed (initialised by ``build_model(..., seed=...)``
exactly like :func:`mechgrok.train.train`), learning rate, weight decay and their schedules, L1
coefficient, step count, minibatch generator and training set; the update is torch's AdamW
arithmetic per row (:func:`._kernels.adamw_step`). So a member's trajectory is the one the
single-model trainer produces, to float tolerance (``tests/test_sweep_engine.py`` checks it).

Each member with an output folder gets a normal run folder (config, metrics.jsonl, dense
checkpoints, resume state in the single trainer's format, summary) written through the store's
writers; files are written by background threads because every write is fsynced.

The parts, one concern a file:

* :mod:`.engine_config` - :class:`EngineConfig`; which members may share a batch (:func:`group_key`);
* :mod:`._pool`         - the pool: rows as slots, the training loop, evaluation, early stop, outputs;
* :mod:`._rows`         - the stacked parameters, AdamW moments and Grokfast EMA of the rows;
* :mod:`._data`         - the members' datasets and per-chunk inputs;
* :mod:`._writer`       - background writes of run folders;
* :mod:`._saved`        - the pool's resume state in a sweep folder;
* :mod:`._kernels`      - the batched numerics (forwards, fused loss and gradient, AdamW, clipping).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..config import RunConfig
from ..store import FILES, StoreError
from ..tasks import Dataset
from ..train import TrainResult
from ._pool import Member, Pool
from .engine_config import GROUP_FIELDS, EngineConfig, group_key

__all__ = ["EngineConfig", "train_batch", "group_key", "GROUP_FIELDS", "Member"]


def train_batch(
    configs: Sequence[RunConfig],
    outs: Sequence[str | Path | None] | None = None,
    *,
    engine: EngineConfig | None = None,
    data: Sequence[Dataset | None] | None = None,
    progress: bool = True,
) -> list[TrainResult]:
    """Train every config at once with the batched engine: the batched :func:`mechgrok.train.train`.

    All configs must share the architecture and the fields in :data:`GROUP_FIELDS`; seeds,
    learning rates, weight decay (and schedules), L1, step counts and training sets may differ.
    ``outs`` gives each member's run folder (``None`` = in memory). Returns one
    :class:`~mechgrok.train.TrainResult` per config, in order.
    """
    engine = engine or EngineConfig()
    configs = list(configs)
    if outs is not None and len(outs) != len(configs):
        raise ValueError(f"outs: expected {len(configs)} folders, got {len(outs)}")
    if data is not None and len(data) != len(configs):
        raise ValueError(f"data: expected {len(configs)} datasets, got {len(data)}")
    members = [
        Member(
            cfg,
            Path(outs[i]) if outs is not None and outs[i] is not None else None,
            data[i] if data is not None else None,
            key=i,
        )
        for i, cfg in enumerate(configs)
    ]
    for m in members:
        if m.out is not None and (m.out / FILES["config"]).exists():
            raise StoreError(f"{m.out}: already holds a run; choose another output folder")
    total = sum(c.train.steps for c in configs)
    from tqdm.auto import tqdm

    bar = tqdm(
        total=total,
        disable=not progress,
        desc=f"{len(configs)} x {configs[0].name}",
        unit="model-step",
        mininterval=0.5,
        leave=False,
        unit_scale=True,
    )
    pool = Pool(members, engine, on_steps=bar.update)
    try:
        results = pool.run()
    finally:
        bar.close()
    return [results[i] for i in range(len(configs))]

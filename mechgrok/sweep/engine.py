"""The batched training engine: many models of one architecture trained at once.

Members are rows of stacked parameter tensors (``{name: [rows, *shape]}``, the single model's
``state_dict`` names). Each row has its own seed (initialised by ``build_model(..., seed=...)``
exactly like :func:`mechgrok.train.train`), learning rate, weight decay and their schedules, L1
coefficient, step count, minibatch generator and training set; the update is torch's AdamW
arithmetic per row (:func:`._kernels.adamw_step`). So a member's trajectory is the one the
single-model trainer produces, to float tolerance (``tests/test_sweep_engine.py`` checks it).

Rows are slots: when a member finishes (or stops early) its row is handed to the next waiting
member, or dropped when none waits, so finished members cost nothing.

Each member with an output folder gets a normal run folder (config, metrics.jsonl, dense
checkpoints, resume state in the single trainer's format, summary) written through the store's
writers; files are written by background threads because every write is fsynced.
"""

from __future__ import annotations

import json
import math
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch

from ..config import ConfigError, RunConfig, check_types
from ..models import build_model
from ..probes.events import detect_events
from ..store import (
    FILES, METRICS_FLUSH_ROWS, Run, StoreError, atomic_save_tensors, atomic_write_json, metrics_line,
)
from ..tasks import Dataset, make_dataset
from ..train import TrainResult, resume_tensors, grokfast_update, summarize_metrics
from ._kernels import BatchedModel, adamw_step, clip_grad_norms, make_model, row_norms

__all__ = ["EngineConfig", "train_batch", "group_key", "GROUP_FIELDS"]


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
    def from_dict(cls, data: dict[str, Any]) -> "EngineConfig":
        known = set(cls.__dataclass_fields__)
        bad = set(data) - known
        if bad:
            raise ConfigError(f"engine.{sorted(bad)[0]}: unknown key; allowed: {', '.join(sorted(known))}")
        return cls(**data)


# Config fields every member of one batch must share; everything else may differ per member.
GROUP_FIELDS = {
    "task": ("kind", "p", "op", "pairs", "format", "n_bits"),
    "model": None,  # all of it: one architecture per batch
    "optim": ("betas", "eps", "grad_clip", "grokfast_alpha", "grokfast_lambda", "batch_size", "loss_reduction"),
    "train": ("device",),
}


def group_key(config: RunConfig) -> str:
    """Members with equal keys can be trained in one batch."""
    d = config.to_dict()
    key = {}
    for section, names in GROUP_FIELDS.items():
        key[section] = d[section] if names is None else {n: d[section][n] for n in names}
    return json.dumps(key, sort_keys=True)


_METRIC_KEYS = ("step", "train_loss", "train_acc", "test_loss", "test_acc", "weight_norm", "lr", "weight_decay", "l1")


# ----------------------------------------------------------------------------------------------
# background writes


class _Writer:
    """Runs store writes on worker threads; the jobs of one member stay in order (one thread per
    member). ``join`` waits for everything submitted and re-raises the first failure."""

    def __init__(self, workers: int):
        self.queues = [queue.Queue() for _ in range(workers)]
        self.error: BaseException | None = None
        self.threads = [threading.Thread(target=self._work, args=(q,), daemon=True) for q in self.queues]
        for t in self.threads:
            t.start()

    def _work(self, q: queue.Queue) -> None:
        while True:
            job = q.get()
            try:
                if job is None:
                    return
                if self.error is None:
                    job()
            except BaseException as e:  # noqa: BLE001 - reported on the main thread by join()
                self.error = self.error or e
            finally:
                q.task_done()

    def submit(self, key: int, job: Callable[[], None]) -> None:
        if self.error is not None:
            self.join()
        self.queues[key % len(self.queues)].put(job)

    def join(self) -> None:
        for q in self.queues:
            q.join()
        if self.error is not None:
            err, self.error = self.error, None
            if isinstance(err, (StoreError, OSError)):
                raise StoreError(f"writing run folders failed: {err}") from err
            raise err

    def close(self) -> None:
        try:
            self.join()
        finally:
            for q in self.queues:
                q.put(None)


# ----------------------------------------------------------------------------------------------
# data


@dataclass
class _Data:
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    prepared: dict[str, torch.Tensor] = field(default_factory=dict)

    def n(self, split: str) -> int:
        return int((self.train_y if split == "train" else self.test_y).shape[0])


class _DataBank:
    """The distinct datasets of the members of a batch, and per-chunk input tensors: shared
    ``[n, ...]`` when every member of the chunk trains on the same set, else stacked ``[c, n_max,
    ...]`` with a mask (padding rows carry no loss)."""

    def __init__(self, model: BatchedModel, device: torch.device):
        self.model = model
        self.device = device
        self.sets: list[_Data] = []
        self.index: dict[str, int] = {}
        self.cache: dict[tuple, tuple] = {}

    def add(self, config: RunConfig, data: Dataset | None) -> int:
        key = json.dumps(config.task.__dict__, sort_keys=True, default=list) if data is None else f"id{id(data)}"
        if key not in self.index:
            data = data if data is not None else make_dataset(config.task)
            d = data.to(self.device)
            self.index[key] = len(self.sets)
            self.sets.append(_Data(d.train_x, d.train_y, d.test_x, d.test_y))
        return self.index[key]

    def clear_cache(self) -> None:
        self.cache.clear()

    def full(self, split: str, ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, bool]:
        """Inputs, labels, mask, counts and the shared flag for the whole ``split`` of each member."""
        key = (split, tuple(ids))
        if key in self.cache:
            return self.cache[key]
        c = len(ids)
        first = self.sets[ids[0]]
        if all(i == ids[0] for i in ids):
            if split not in first.prepared:
                first.prepared[split] = self.model.prepare(first.train_x if split == "train" else first.test_x)
            n = first.n(split)
            y = (first.train_y if split == "train" else first.test_y).expand(c, n)
            out = (first.prepared[split], y, None, torch.full((c,), n, device=self.device), True)
        else:
            sets = [self.sets[i] for i in ids]
            ns = [s.n(split) for s in sets]
            n_max = max(ns)
            xs, ys = [], []
            for s, n in zip(sets, ns):
                x = s.train_x if split == "train" else s.test_x
                y = s.train_y if split == "train" else s.test_y
                pad = n_max - n
                xs.append(torch.cat([x, x.new_zeros((pad,) + tuple(x.shape[1:]))]) if pad else x)
                ys.append(torch.cat([y, y.new_zeros(pad)]) if pad else y)
            counts = torch.tensor(ns, device=self.device)
            mask = torch.arange(n_max, device=self.device)[None, :] < counts[:, None]
            out = (self.model.prepare(torch.stack(xs)), torch.stack(ys), mask, counts, False)
        if len(self.cache) < 256:
            self.cache[key] = out
        return out

    def minibatch(self, ids: Sequence[int], idx: list[torch.Tensor]) -> tuple:
        xs = [self.sets[i].train_x[j] for i, j in zip(ids, idx)]
        ys = [self.sets[i].train_y[j] for i, j in zip(ids, idx)]
        counts = torch.full((len(ids),), int(idx[0].shape[0]), device=self.device)
        return self.model.prepare(torch.stack(xs)), torch.stack(ys), None, counts, False


# ----------------------------------------------------------------------------------------------
# members


@dataclass
class Member:
    """One model of a batch: its config, where it is written (``None`` = in memory) and,
    optionally, a dataset overriding ``config.task``'s. ``key`` names it in sweep resume state."""

    config: RunConfig
    out: Path | None = None
    data: Dataset | None = None
    key: int = 0


@dataclass
class _Slot:
    member: Member
    run: Run | None
    data_id: int
    step: int
    start: int
    total: int
    ckpt: set[int]
    gen: torch.Generator
    full_batch: bool
    const_sched: tuple[float, float, float] | None
    fresh: bool = True
    streak: int | None = None
    lines: list[str] = field(default_factory=list)
    history: dict[str, list[float]] | None = None
    t0: float = field(default_factory=time.perf_counter)
    stop: str | None = None
    key: int = 0
    gen_before: torch.Tensor | None = None

    @property
    def config(self) -> RunConfig:
        return self.member.config

    def sched(self, step: int) -> tuple[float, float, float]:
        if self.const_sched is not None:
            return self.const_sched
        oc = self.config.optim
        return oc.lr_at(step), oc.weight_decay_at(step), oc.l1_at(step)


def _const_sched(config: RunConfig) -> tuple[float, float, float] | None:
    oc = config.optim
    if oc.wd_schedule or oc.l1_schedule or oc.warmup_steps:
        return None
    return oc.lr, oc.weight_decay, oc.l1


# ----------------------------------------------------------------------------------------------
# the pool


class _Pool:
    """Trains a queue of members of one group in at most ``max_batch`` rows."""

    def __init__(
        self,
        members: list[Member],
        engine: EngineConfig,
        *,
        state_dir: Path | None = None,
        state_name: str = "pool",
        saved: "_SavedStates | None" = None,
        on_steps: Callable[[int], None] | None = None,
        on_done: Callable[[_Slot, dict[str, Any]], None] | None = None,
        keep_results: bool = True,
    ):
        if not members:
            raise ValueError("no members to train")
        keys = {group_key(m.config) for m in members}
        if len(keys) > 1:
            raise ConfigError("train_batch: members differ in a field a batch must share (architecture, task shape, "
                              "betas, eps, grad_clip, grokfast, batch_size); use run_sweep, which groups them")
        self.cfg0 = members[0].config
        self.engine = engine
        self.device = torch.device(engine.device or self.cfg0.train.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise StoreError(f"device: {self.device} requested but no CUDA device is available")
        template = build_model(self.cfg0.model, self.cfg0.task).to(self.device)
        self.names = [n for n, _ in template.named_parameters()]
        self.model = make_model(self.cfg0, template, engine.engine)
        self.bank = _DataBank(self.model, self.device)
        self.pending = list(members)
        self.slots: list[_Slot] = []
        self.P: dict[str, torch.Tensor] = {}
        self.M: dict[str, torch.Tensor] = {}
        self.V: dict[str, torch.Tensor] = {}
        self.E: dict[str, torch.Tensor] | None = None
        oc = self.cfg0.optim
        self.grokfast = oc.grokfast_lambda > 0
        self.betas, self.eps = oc.betas, oc.eps
        self.state_dir, self.state_name, self.saved = state_dir, state_name, saved
        self.state_gen = 0
        self.on_steps, self.on_done = on_steps, on_done
        self.results: dict[int, TrainResult] = {}
        self.keep_results = keep_results
        self.writer = _Writer(engine.writers)
        chunk_mb = engine.chunk_mb or (4096.0 if self.device.type == "cuda" else 8.0)
        self.chunk_bytes = chunk_mb * 2**20
        self.resume_every = min(m.config.train.resume_every for m in members)
        self.iteration = 0
        self.executor = None
        self.workers = engine.n_workers() if self.device.type == "cpu" else 1

    # -- rows ----------------------------------------------------------------------------------
    def _rows(self) -> int:
        return len(self.slots)

    def _admit(self) -> None:
        free = self.engine.max_batch - len(self.slots)
        if free <= 0 or not self.pending:
            return
        new, self.pending = self.pending[:free], self.pending[free:]
        states, moments, emas, slots = [], [], [], []
        for member in new:
            slot, state, moment, ema = self._start_member(member)
            states.append(state)
            moments.append(moment)
            emas.append(ema)
            slots.append(slot)
        add = {k: torch.stack([s[k] for s in states]).to(self.device) for k in self.names}
        addm = {k: torch.stack([m[0][k] for m in moments]).to(self.device) for k in self.names}
        addv = {k: torch.stack([m[1][k] for m in moments]).to(self.device) for k in self.names}
        if not self.P:
            self.P, self.M, self.V = add, addm, addv
        else:
            self.P = {k: torch.cat([self.P[k], add[k]]) for k in self.names}
            self.M = {k: torch.cat([self.M[k], addm[k]]) for k in self.names}
            self.V = {k: torch.cat([self.V[k], addv[k]]) for k in self.names}
        if self.grokfast:
            adde = {k: torch.stack([e[k] if e is not None else torch.zeros_like(add[k][0]) for e in emas]) for k in self.names}
            adde = {k: v.to(self.device) for k, v in adde.items()}
            self.E = adde if self.E is None else {k: torch.cat([self.E[k], adde[k]]) for k in self.names}
        self.slots.extend(slots)
        self.bank.clear_cache()
        self._order()

    def _start_member(self, member: Member):
        cfg = member.config
        tc = cfg.train
        data_id = self.bank.add(cfg, member.data)
        n_train = self.bank.sets[data_id].n("train")
        bs = cfg.optim.batch_size
        gen = torch.Generator().manual_seed(tc.seed + 1)
        saved = self.saved.get(member.key) if self.saved is not None else None
        run = None
        start = 0
        zeros = None
        if saved is not None:
            start, state, m, v, ema, rng, extra = saved
            gen.set_state(rng)
            fresh, streak = extra["fresh"], extra["streak"]
        else:
            state = {k: v.detach().clone() for k, v in build_model(cfg.model, cfg.task, seed=tc.seed).state_dict().items()}
            zeros = {k: torch.zeros_like(v) for k, v in state.items()}
            m, v, ema = zeros, {k: t.clone() for k, t in zeros.items()}, None
            fresh, streak = True, None
        if member.out is not None:
            run = self._prepare_run(member, start)
        slot = _Slot(
            member=member,
            run=run,
            data_id=data_id,
            step=start,
            start=start,
            total=tc.steps,
            ckpt=set(tc.checkpoint_steps()),
            gen=gen,
            full_batch=bs == 0 or bs >= n_train,
            const_sched=_const_sched(cfg),
            fresh=fresh,
            streak=streak,
            history={k: [] for k in _METRIC_KEYS} if run is None else None,
            key=member.key,
        )
        return slot, state, (m, v), ema

    def _prepare_run(self, member: Member, start: int) -> Run:
        path = Path(member.out)
        if (path / FILES["config"]).exists():
            run = Run.open(path)
            if run.config.to_dict() != member.config.to_dict():
                raise StoreError(f"{path}: holds a run with a different config; choose another output folder")
            run.clean_temporary()  # left by a kill; this pool is the member's only writer
            # continue at `start`: forget what was written after it (0 = from scratch)
            self.writer.submit(member.key, lambda: (run.truncate_metrics(start), run.truncate_checkpoints(start if start else -1)))
            return run
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and not path.is_dir():
            raise StoreError(f"{path}: exists and is not a folder")
        run = Run(path, member.config)
        self.writer.submit(member.key, lambda: Run.create(path, member.config))
        return run

    def _drop(self, rows: list[int]) -> None:
        """Remove finished rows (their slots are free for waiting members)."""
        if not rows:
            return
        keep = [i for i in range(len(self.slots)) if i not in set(rows)]
        self.slots = [self.slots[i] for i in keep]
        if not keep:
            self.P, self.M, self.V, self.E = {}, {}, {}, None if self.grokfast else None
            return
        idx = torch.tensor(keep, device=self.device)
        self.P = {k: v.index_select(0, idx) for k, v in self.P.items()}
        self.M = {k: v.index_select(0, idx) for k, v in self.M.items()}
        self.V = {k: v.index_select(0, idx) for k, v in self.V.items()}
        if self.E is not None:
            self.E = {k: v.index_select(0, idx) for k, v in self.E.items()}
        self.bank.clear_cache()

    # -- chunks --------------------------------------------------------------------------------
    def _order(self) -> None:
        """Keep rows sorted by (minibatch, dataset) so every training chunk is a contiguous slice
        (views, no copies) and chunks of one dataset share their inputs."""
        keys = [(not s.full_batch, s.data_id) for s in self.slots]
        order = sorted(range(len(keys)), key=lambda r: keys[r])
        if order == list(range(len(order))):
            return
        idx = torch.tensor(order, device=self.device)
        self.slots = [self.slots[r] for r in order]
        for table in (self.P, self.M, self.V, self.E or {}):
            for k in list(table):
                table[k] = table[k].index_select(0, idx)
        self.bank.clear_cache()

    def _chunk_size(self, rows: list[int], split: str) -> int:
        n = max(self.bank.sets[self.slots[r].data_id].n(split) for r in rows) or 1
        if split == "train" and not self.slots[rows[0]].full_batch:
            n = self.cfg0.optim.batch_size
        return max(1, int(self.chunk_bytes // (4.0 * n * self.model.act_floats)))

    def _chunks(self, rows: list[int], split: str = "train") -> list[list[int]]:
        """Consecutive rows cut to the cache budget; a chunk ends at a change of dataset once it
        is half full (so most chunks share one input tensor) and at a full-batch/minibatch change."""
        if not rows:
            return []
        size = self._chunk_size(rows, split)
        out: list[list[int]] = [[rows[0]]]
        for prev, r in zip(rows, rows[1:]):
            cur = out[-1]
            a, b = self.slots[prev], self.slots[r]
            boundary = a.data_id != b.data_id and len(cur) * 2 >= size
            if len(cur) >= size or boundary or a.full_batch != b.full_batch:
                out.append([r])
            else:
                cur.append(r)
        return out

    def _take(self, tensors: dict[str, torch.Tensor], rows: list[int]) -> dict[str, torch.Tensor]:
        if rows == list(range(rows[0], rows[-1] + 1)):
            return {k: v[rows[0] : rows[-1] + 1] for k, v in tensors.items()}
        idx = torch.tensor(rows, device=self.device)
        return {k: v.index_select(0, idx) for k, v in tensors.items()}

    def _train_step(
        self,
        steps: np.ndarray,
        lr: np.ndarray,
        wd: np.ndarray,
        l1: np.ndarray,
        want_norms: bool,
        decide: Callable[[int, float, float], bool],
        want_metrics: bool = True,
    ) -> tuple[list[float], list[float], list[float]]:
        """One update of every row: forward/backward chunk by chunk (activations sized to stay in
        cache), then L1, Grokfast, clipping and AdamW once per *block* of consecutive chunks
        (:meth:`_blocks`: few, large elementwise ops when members are small, the chunk itself when
        they are large, so its gradients are still in cache).

        Returns train loss, train accuracy (NaN unless ``want_metrics``: the float64 loss is only
        computed on steps that log or when early stopping needs it) and (pre-update) weight norms
        per row. ``decide(row, loss, acc)`` says whether a row stops *before* this update (early
        stop): it is skipped.
        """
        R = len(self.slots)
        loss_all, acc_all, norm_all = [math.nan] * R, [math.nan] * R, [math.nan] * R
        blocks = self._blocks(self._chunks(list(range(R))))
        args = (steps, lr, wd, l1, want_norms, want_metrics, decide, loss_all, acc_all, norm_all)
        if self.executor is not None and len(blocks) > 1:
            # blocks touch disjoint rows (parameters, moments, slots): safe to run side by side
            for job in [self.executor.submit(self._train_block, b, *args) for b in blocks]:
                job.result()
        else:
            for block in blocks:
                self._train_block(block, *args)
        return loss_all, acc_all, norm_all

    def _blocks(self, chunks: list[list[int]]) -> list[list[list[int]]]:
        """Consecutive chunks grouped for the optimiser step: up to ~1 MiB of parameters per block
        (one chunk per block when a chunk alone is larger), and at least one block per worker."""
        if not chunks:
            return []
        per_row = sum(v[0].numel() * v.element_size() for v in self.P.values())
        budget = max(2**20, per_row)
        rows = sum(len(c) for c in chunks)
        if self.executor is not None:
            budget = min(budget, max(per_row, per_row * rows // self.workers))
        out: list[list[list[int]]] = [[chunks[0]]]
        size = len(chunks[0]) * per_row
        for chunk in chunks[1:]:
            if size + len(chunk) * per_row > budget:
                out.append([chunk])
                size = len(chunk) * per_row
            else:
                out[-1].append(chunk)
                size += len(chunk) * per_row
        return out

    def _train_block(self, block, steps, lr, wd, l1, want_norms, want_metrics, decide, loss_all, acc_all, norm_all) -> None:
        grads = [self._chunk_grads(c, want_norms, want_metrics, loss_all, acc_all, norm_all) for c in block]
        G = grads[0] if len(grads) == 1 else {k: torch.cat([g[k] for g in grads]) for k in grads[0]}
        rows = [r for c in block for r in c]
        stopping = [r for r in rows if decide(r, loss_all[r], acc_all[r])]
        self._update(rows[0], rows[-1] + 1, G, steps, lr, wd, l1, stopping)

    def _chunk_grads(self, chunk, want_norms, want_metrics, loss_all, acc_all, norm_all) -> dict[str, torch.Tensor]:
        s0, s1 = chunk[0], chunk[-1] + 1
        params = {k: v[s0:s1] for k, v in self.P.items()}
        ids = [self.slots[r].data_id for r in chunk]
        if self.slots[s0].full_batch:
            x, y, mask, count, shared = self.bank.full("train", ids)
        else:
            bs = self.cfg0.optim.batch_size
            idx = []
            for r in chunk:
                s = self.slots[r]
                if self.engine.early_stop:
                    s.gen_before = s.gen.get_state()  # a member stopping here resumes before this draw
                n_train = self.bank.sets[s.data_id].n("train")
                idx.append(torch.randint(0, n_train, (bs,), generator=s.gen).to(self.device))
            x, y, mask, count, shared = self.bank.minibatch(ids, idx)
        lo, ac, grads = self.model.loss_grad(params, x, y, mask, count, shared, metrics=want_metrics)
        if lo is not None:
            loss_all[s0:s1], acc_all[s0:s1] = lo.tolist(), ac.tolist()
        if want_norms:
            norm_all[s0:s1] = row_norms(list(params.values())).tolist()
        return grads

    def _update(self, s0: int, s1: int, grads: dict[str, torch.Tensor], steps: np.ndarray, lr: np.ndarray,
                wd: np.ndarray, l1: np.ndarray, stopping: list[int]) -> None:
        """L1, Grokfast, clipping and AdamW for rows ``s0:s1`` (views into the stacked state)."""
        names = self.names
        P = [self.P[k][s0:s1] for k in names]
        G = [grads[k] for k in names]
        snapshot = self._snapshot(stopping) if stopping else None
        l1c = l1[s0:s1]
        if (l1c > 0).any():
            coef = torch.from_numpy(np.ascontiguousarray(l1c)).to(P[0].dtype).to(self.device)
            for p, g in zip(P, G):
                # d/dp of l1 * |p| as autograd computes it: l1 in the parameters' dtype * sign(p)
                g.add_(coef.view((-1,) + (1,) * (g.dim() - 1)) * p.sign())
        if self.grokfast:
            self._grokfast(s0, s1, G)
        if self.cfg0.optim.grad_clip > 0:
            clip_grad_norms(G, self.cfg0.optim.grad_clip)
        adamw_step(P, G, [self.M[k][s0:s1] for k in names], [self.V[k][s0:s1] for k in names],
                   steps[s0:s1] + 1, lr[s0:s1], wd[s0:s1], self.betas, self.eps)
        if snapshot is not None:
            # rows stopping at this step keep the state they were logged with (no update)
            self._restore(stopping, snapshot)

    def _evaluate(self, rows: list[int], split: str) -> tuple[list[float], list[float]]:
        """No-grad loss and accuracy of ``rows`` on their full ``split`` (NaN for an empty split)."""
        loss = {r: float("nan") for r in rows}
        acc = {r: float("nan") for r in rows}
        live = [r for r in rows if self.bank.sets[self.slots[r].data_id].n(split) > 0]
        for chunk in self._chunks(live, split) if live else []:
            params = self._take(self.P, chunk)
            x, y, mask, count, shared = self.bank.full(split, [self.slots[r].data_id for r in chunk])
            lo, ac = self.model.evaluate(params, x, y, mask, count, shared)
            for r, l, a in zip(chunk, lo.tolist(), ac.tolist()):
                loss[r], acc[r] = l, a
        return [loss[r] for r in rows], [acc[r] for r in rows]

    # -- outputs -------------------------------------------------------------------------------
    def _row_state(self, r: int) -> dict[str, torch.Tensor]:
        return {k: v[r].detach().to("cpu", copy=True) for k, v in self.P.items()}

    def _log(self, r: int, row: dict[str, Any]) -> None:
        s = self.slots[r]
        if s.history is not None:
            for k in _METRIC_KEYS:
                s.history[k].append(row.get(k, float("nan")))
        else:
            s.lines.append(metrics_line(row))
            if len(s.lines) >= METRICS_FLUSH_ROWS:
                self._flush_lines(s)

    def _flush_lines(self, s: _Slot) -> None:
        if s.run is None or not s.lines:
            return
        text, s.lines, run = "".join(s.lines), [], s.run
        self.writer.submit(s.key, lambda: run.append_metrics_text(text))

    def _checkpoint(self, r: int) -> None:
        s = self.slots[r]
        if s.run is not None:
            state, step, run = self._row_state(r), s.step, s.run
            self._flush_lines(s)
            self.writer.submit(s.key, lambda: run.write_checkpoint(step, state))

    def _single_resume(self, r: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Row ``r``'s resume state in the single trainer's format (``mechgrok train --resume``
        continues it, e.g. a member that stopped early)."""
        s = self.slots[r]
        cfg = s.config
        model = build_model(cfg.model, cfg.task)
        model.load_state_dict(self._row_state(r))
        params = list(model.parameters())
        lr, wd, _ = s.sched(max(s.step - 1, 0))
        opt = torch.optim.AdamW(params, lr=lr, betas=cfg.optim.betas, eps=cfg.optim.eps, weight_decay=wd)
        if s.step > s.start or s.start > 0 or s.step > 0:
            for name, p in zip(self.names, params):
                opt.state[p] = {
                    "step": torch.tensor(float(s.step)),
                    "exp_avg": self.M[name][r].detach().to("cpu", copy=True),
                    "exp_avg_sq": self.V[name][r].detach().to("cpu", copy=True),
                }
        ema = None
        if self.E is not None and not s.fresh:
            ema = [self.E[name][r].detach().to("cpu", copy=True) for name in self.names]
        return resume_tensors(model, opt, ema, s.gen)

    def _finish(self, r: int, elapsed: float) -> None:
        s = self.slots[r]
        cfg = s.config
        steps_done = s.step
        extra = {
            "seconds": elapsed,
            "steps_per_second": (steps_done - s.start) / max(elapsed, 1e-9),
            "resumed_from": s.start or None,
            "engine": self.model.name,
            "batched": True,
        }
        if s.stop is not None:
            extra.update(stopped_early=s.stop, planned_steps=s.total)
        state = self._row_state(r)
        tensors, meta = self._single_resume(r)
        if s.run is None:
            hist = s.history
            summary = summarize_metrics(hist, steps_done)
            summary.update(extra)
            summary["events"] = detect_events(hist).to_dict()
            model = build_model(cfg.model, cfg.task)
            model.load_state_dict(state)
            result = TrainResult(cfg, model.eval(), hist, summary, None, None)
            if self.keep_results:
                self.results[s.key] = result
            if self.on_done is not None:
                self.on_done(s, summary)
            return
        run, step = s.run, steps_done
        self._flush_lines(s)
        on_done, keep, results = self.on_done, self.keep_results, self.results

        def finish() -> None:
            if step not in run.steps:
                run.write_checkpoint(step, state)
            run.write_resume(step, tensors, meta)
            metrics = run.metrics()
            summary = summarize_metrics(metrics, step)
            summary.update(extra)
            summary["events"] = detect_events(metrics).to_dict()
            run.write_summary(summary)
            if keep:
                model = build_model(cfg.model, cfg.task)
                model.load_state_dict(state)
                hist = {k: [float(v) for v in metrics.get(k, [])] for k in _METRIC_KEYS}
                results[s.key] = TrainResult(cfg, model.eval(), hist, summary, run, None)
            if on_done is not None:
                on_done(s, summary)

        self.writer.submit(s.key, finish)

    # -- resume state ------------------------------------------------------------------------------
    def _save_state(self) -> None:
        """Pool resume state: every row's parameters, moments, EMA, generator and step."""
        for s in self.slots:
            self._flush_lines(s)
        self.writer.join()  # everything before each row's step is on disk
        if not self.slots:
            return
        self.state_gen += 1
        tensors: dict[str, torch.Tensor] = {}
        for k in self.names:
            tensors[f"param.{k}"] = self.P[k]
            tensors[f"opt.{k}.exp_avg"] = self.M[k]
            tensors[f"opt.{k}.exp_avg_sq"] = self.V[k]
            if self.E is not None:
                tensors[f"ema.{k}"] = self.E[k]
        tensors["rng"] = torch.stack([s.gen.get_state() for s in self.slots])
        name = f"{self.state_name}.{self.state_gen}.safetensors"
        atomic_save_tensors(self.state_dir / name, tensors)
        meta = {
            "tensors": name,
            "members": [s.key for s in self.slots],
            "steps": [s.step for s in self.slots],
            "fresh": [s.fresh for s in self.slots],
            "streak": [s.streak for s in self.slots],
            "has_ema": self.E is not None,
        }
        atomic_write_json(self.state_dir / f"{self.state_name}.json", meta)  # the commit point
        for old in self.state_dir.glob(f"{self.state_name}.*.safetensors"):
            if old.name != name:
                old.unlink(missing_ok=True)

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> dict[int, TrainResult]:
        threads = torch.get_num_threads()
        if self.workers > 1:
            from concurrent.futures import ThreadPoolExecutor

            self.executor = ThreadPoolExecutor(self.workers, thread_name_prefix="mechgrok-chunk")
            torch.set_num_threads(1)
        try:
            self._loop()
            self.writer.join()
        finally:
            self.writer.close()
            if self.executor is not None:
                self.executor.shutdown()
                self.executor = None
                torch.set_num_threads(threads)
        return self.results

    def _loop(self) -> None:
        eng = self.engine
        while self.pending or self.slots:
            self._admit()
            slots = self.slots
            R = len(slots)
            if self.state_dir is not None and self.iteration > 0 and self.iteration % self.resume_every == 0:
                self._save_state()
            self.iteration += 1
            steps = np.array([s.step for s in slots], dtype=np.int64)
            for r, s in enumerate(slots):
                if s.step in s.ckpt:
                    self._checkpoint(r)
            # which rows evaluate / log this step; evaluations see the parameters before the update
            eval_rows = [r for r, s in enumerate(slots) if s.step % s.config.train.eval_every == 0]
            log_rows = [
                r for r, s in enumerate(slots)
                if s.step % s.config.train.eval_every == 0 or (s.full_batch and s.step % eng.log_every == 0)
            ]
            test: dict[int, tuple[float, float]] = {}
            if eval_rows:
                test = dict(zip(eval_rows, zip(*self._evaluate(eval_rows, "test"))))
            mini = [r for r in log_rows if not slots[r].full_batch]
            mini_train = dict(zip(mini, zip(*self._evaluate(mini, "train")))) if mini else {}
            sched = [s.sched(s.step) for s in slots]
            lr = np.array([x[0] for x in sched])
            wd = np.array([x[1] for x in sched])
            l1 = np.array([x[2] for x in sched])

            def decide(r: int, loss: float, acc: float) -> bool:
                """Early stop before this row's update: diverged, or generalised for `patience` steps."""
                if not eng.early_stop:
                    return False
                s = slots[r]
                if not math.isfinite(loss):
                    s.stop = "diverged"
                elif r in test:
                    self._track(s, mini_train[r][1] if r in mini_train else acc, test[r][1])
                    if s.streak is not None and s.step - s.streak >= eng.patience:
                        s.stop = "generalised"
                return s.stop is not None

            loss_l, acc_l, wn = self._train_step(steps, lr, wd, l1, bool(log_rows), decide,
                                                 want_metrics=bool(log_rows) or eng.early_stop)
            for r in log_rows:
                s = slots[r]
                tl, ta = mini_train[r] if r in mini_train else (loss_l[r], acc_l[r])
                row: dict[str, Any] = {"step": s.step, "train_loss": tl, "train_acc": ta}
                if r in test:
                    row["test_loss"], row["test_acc"] = test[r]
                lr_r, wd_r, l1_r = sched[r]
                row.update(weight_norm=wn[r], lr=lr_r, weight_decay=wd_r, l1=l1_r)
                self._log(r, row)
            done_rows = []
            now = time.perf_counter()
            for r, s in enumerate(slots):
                if s.stop is not None:
                    done_rows.append(r)
                    continue
                s.step += 1
                if s.step >= s.total:
                    done_rows.append(r)
            if self.on_steps is not None:
                self.on_steps(R)
            if done_rows:
                self._close(done_rows, now)

    def _track(self, s: _Slot, train_acc: float, test_acc: float) -> None:
        thr = self.engine.threshold
        if train_acc >= thr and test_acc >= thr:
            if s.streak is None:
                s.streak = s.step
        else:
            s.streak = None

    def _grokfast(self, s0: int, s1: int, G: list[torch.Tensor]) -> None:
        """Grokfast-EMA on rows ``s0:s1`` with :func:`mechgrok.train.grokfast_update`; a row's
        first gradient initialises its EMA, as in the single trainer."""
        oc = self.cfg0.optim
        fresh = [r - s0 for r in range(s0, s1) if self.slots[r].fresh]
        E = [self.E[k][s0:s1] for k in self.names]
        if fresh:
            idx = torch.tensor(fresh, device=self.device)
            first = [g.index_select(0, idx) for g in G]
        grokfast_update(G, E, oc.grokfast_alpha, oc.grokfast_lambda)
        if fresh:
            for e, g, f in zip(E, G, first):
                e.index_copy_(0, idx, f)
                g.index_copy_(0, idx, f.clone().add_(f, alpha=oc.grokfast_lambda))
            for r in fresh:
                self.slots[s0 + r].fresh = False

    def _close(self, rows: list[int], now: float) -> None:
        """Final row, checkpoint, resume state and summary of finished rows, then free them."""
        slots = self.slots
        normal = [r for r in rows if slots[r].stop is None]
        if normal:
            # the parameters after the last update: evaluate train and test like the single trainer
            tl, ta = self._evaluate(normal, "train")
            el, ea = self._evaluate(normal, "test")
            wn = row_norms(list(self._take(self.P, normal).values())).tolist()
            for i, r in enumerate(normal):
                s = slots[r]
                lr, wd, l1 = s.sched(s.step)
                row = {"step": s.step, "train_loss": tl[i], "train_acc": ta[i], "test_loss": el[i], "test_acc": ea[i],
                       "weight_norm": wn[i], "lr": lr, "weight_decay": wd, "l1": l1}
                self._log(r, row)
        for r in rows:
            self._finish(r, now - slots[r].t0)
        self._drop(rows)

    def _snapshot(self, rows: list[int]) -> list[dict[str, torch.Tensor]]:
        idx = torch.tensor(rows, device=self.device)
        tables = [self.P, self.M, self.V] + ([self.E] if self.E is not None else [])
        return [{k: v.index_select(0, idx) for k, v in t.items()} for t in tables]

    def _restore(self, rows: list[int], snapshot: list[dict[str, torch.Tensor]]) -> None:
        idx = torch.tensor(rows, device=self.device)
        tables = [self.P, self.M, self.V] + ([self.E] if self.E is not None else [])
        for table, snap in zip(tables, snapshot):
            for k, v in table.items():
                v.index_copy_(0, idx, snap[k])
        for r in rows:
            s = self.slots[r]
            if s.gen_before is not None:
                s.gen.set_state(s.gen_before)


class _SavedStates:
    """Pool resume states found in a sweep's state folder, by member key (the latest step wins)."""

    def __init__(self, state_dir: Path):
        self.state_dir = state_dir
        self.where: dict[int, tuple[Path, int, int]] = {}
        self.loaded: dict[Path, dict[str, torch.Tensor]] = {}
        for meta_path in sorted(state_dir.glob("*.json")):
            try:
                meta = json.loads(meta_path.read_text())
                tensors = state_dir / meta["tensors"]
                for row, (key, step) in enumerate(zip(meta["members"], meta["steps"])):
                    if key not in self.where or step > self.where[key][2]:
                        self.where[int(key)] = (meta_path, row, int(step))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise StoreError(f"{meta_path}: unreadable sweep resume state ({e})") from None
            if not tensors.exists():
                raise StoreError(f"{tensors}: missing sweep resume state named by {meta_path.name}")

    def get(self, key: int):
        """(step, params, exp_avg, exp_avg_sq, ema or None, rng state, extra) or None."""
        if key not in self.where:
            return None
        meta_path, row, step = self.where[key]
        meta = json.loads(meta_path.read_text())
        path = self.state_dir / meta["tensors"]
        if path not in self.loaded:
            from safetensors.torch import load_file

            try:
                self.loaded = {path: load_file(path)}  # keep one file in memory at a time
            except Exception as e:  # noqa: BLE001 - safetensors raises several types
                raise StoreError(f"{path}: unreadable sweep resume state ({e})") from None
        t = self.loaded[path]
        names = [k[6:] for k in t if k.startswith("param.")]
        params = {n: t[f"param.{n}"][row].clone() for n in names}
        m = {n: t[f"opt.{n}.exp_avg"][row].clone() for n in names}
        v = {n: t[f"opt.{n}.exp_avg_sq"][row].clone() for n in names}
        ema = {n: t[f"ema.{n}"][row].clone() for n in names} if meta.get("has_ema") else None
        extra = {"fresh": bool(meta["fresh"][row]), "streak": meta["streak"][row]}
        return step, params, m, v, ema, t["rng"][row].clone(), extra


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
        Member(cfg, Path(outs[i]) if outs is not None and outs[i] is not None else None,
               data[i] if data is not None else None, key=i)
        for i, cfg in enumerate(configs)
    ]
    for m in members:
        if m.out is not None and (m.out / FILES["config"]).exists():
            raise StoreError(f"{m.out}: already holds a run; choose another output folder")
    total = sum(c.train.steps for c in configs)
    from tqdm.auto import tqdm

    bar = tqdm(total=total, disable=not progress, desc=f"{len(configs)} x {configs[0].name}", unit="model-step",
               mininterval=0.5, leave=False, unit_scale=True)
    pool = _Pool(members, engine, on_steps=bar.update)
    try:
        results = pool.run()
    finally:
        bar.close()
    return [results[i] for i in range(len(configs))]

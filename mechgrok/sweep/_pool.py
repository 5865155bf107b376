"""The pool: trains a queue of members of one group in at most ``max_batch`` rows.

Rows are slots: when a member finishes (or stops early) its row is handed to the next waiting
member, or dropped when none waits, so finished members cost nothing. The rows' parameters,
moments and EMA live in one :class:`~._rows.Rows`; each member's run folder is written through
the store's writers on background threads (:class:`~._writer.Writer`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import ConfigError, RunConfig
from ..metrics import METRIC_KEYS, MetricsBuffer, metrics_row
from ..models import build_model
from ..probes.events import detect_events, loss_scale_of
from ..store import FILES, Run, StoreError
from ..tasks import Dataset
from ..train import TrainResult, grokfast_update, resume_tensors, summarize_metrics
from ._data import DataBank
from ._kernels import adamw_step, clip_grad_norms, make_model, orthograd_rows_, row_norms
from ._rows import Rows
from ._saved import SavedStates, save_pool_state
from ._writer import Writer
from .engine_config import EngineConfig, group_key

__all__ = ["Member", "Pool"]


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
    metrics: MetricsBuffer = field(default_factory=lambda: MetricsBuffer(None, history=False))
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


class Pool:
    """Trains a queue of members of one group in at most ``max_batch`` rows."""

    def __init__(
        self,
        members: list[Member],
        engine: EngineConfig,
        *,
        state_dir: Path | None = None,
        state_name: str = "pool",
        saved: SavedStates | None = None,
        on_steps: Callable[[int], None] | None = None,
        on_done: Callable[[_Slot, dict[str, Any]], None] | None = None,
        keep_results: bool = True,
    ):
        if not members:
            raise ValueError("no members to train")
        keys = {group_key(m.config) for m in members}
        if len(keys) > 1:
            raise ConfigError(
                "train_batch: members differ in a field a batch must share (architecture, task shape, "
                "betas, eps, grad_clip, grokfast, batch_size); use run_sweep, which groups them"
            )
        self.cfg0 = members[0].config
        if self.cfg0.optim.grokfast_lambda > 0 and self.cfg0.optim.grokfast_filter == "ma":
            # its [window, *shape] ring buffers are not among the stacked tables (yet)
            raise ConfigError(
                "optim.grokfast_filter: 'ma' is trained by the single trainer (mechgrok train), "
                "not by the sweep engine; use 'ema' or train the members one by one"
            )
        self.engine = engine
        self.device = torch.device(engine.device or self.cfg0.train.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise StoreError(f"device: {self.device} requested but no CUDA device is available")
        template = build_model(self.cfg0.model, self.cfg0.task).to(self.device)
        self.names = [n for n, _ in template.named_parameters()]
        self.model = make_model(self.cfg0, template, engine.engine)
        self.bank = DataBank(self.model, self.device)
        self.pending = list(members)
        self.slots: list[_Slot] = []
        oc = self.cfg0.optim
        self.grokfast = oc.grokfast_lambda > 0
        tables = ("param", "exp_avg", "exp_avg_sq") + (("ema",) if self.grokfast else ())
        self.rows = Rows(self.names, tables, self.device)
        self.betas, self.eps = oc.betas, oc.eps
        self.state_dir, self.state_name, self.saved = state_dir, state_name, saved
        self.state_gen = 0
        self.on_steps, self.on_done = on_steps, on_done
        self.results: dict[int, TrainResult] = {}
        self.keep_results = keep_results
        self.writer = Writer(engine.writers)
        chunk_mb = engine.chunk_mb or (4096.0 if self.device.type == "cuda" else 8.0)
        self.chunk_bytes = chunk_mb * 2**20
        self.resume_every = min(m.config.train.resume_every for m in members)
        self.iteration = 0
        self.executor = None
        self.workers = engine.n_workers() if self.device.type == "cpu" else 1

    # -- rows ----------------------------------------------------------------------------------
    def _admit(self) -> None:
        free = self.engine.max_batch - len(self.slots)
        if free <= 0 or not self.pending:
            return
        new, self.pending = self.pending[:free], self.pending[free:]
        slots, new_rows = [], {t: [] for t in self.rows.tables}
        for member in new:
            slot, state, (m, v), ema = self._start_member(member)
            slots.append(slot)
            new_rows["param"].append(state)
            new_rows["exp_avg"].append(m)
            new_rows["exp_avg_sq"].append(v)
            if self.grokfast:  # a fresh member's EMA is set from its first gradient
                new_rows["ema"].append(ema if ema is not None else {k: torch.zeros_like(t) for k, t in state.items()})
        self.rows.cat(new_rows)
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
        if saved is not None:
            start, state, m, v, ema, rng, extra = saved
            gen.set_state(rng)
            fresh, streak = extra["fresh"], extra["streak"]
        else:
            model = build_model(cfg.model, cfg.task, seed=tc.seed)
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            m = {k: torch.zeros_like(t) for k, t in state.items()}
            v, ema = {k: torch.zeros_like(t) for k, t in state.items()}, None
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
            metrics=self._metrics_buffer(member.key, run),
            key=member.key,
        )
        return slot, state, (m, v), ema

    def _metrics_buffer(self, key: int, run: Run | None) -> MetricsBuffer:
        """A member with a run folder: rows go to its metrics.jsonl on the writer thread (in order
        with its checkpoints); in memory: the columns are kept for its TrainResult."""
        if run is None:
            return MetricsBuffer(None, history=True)

        def sink(text: str) -> None:
            self.writer.submit(key, lambda: run.append_metrics_text(text))

        return MetricsBuffer(sink, history=False)

    def _prepare_run(self, member: Member, start: int) -> Run:
        path = Path(member.out)
        if (path / FILES["config"]).exists():
            run = Run.open(path)
            if run.config.to_dict() != member.config.to_dict():
                raise StoreError(f"{path}: holds a run with a different config; choose another output folder")
            run.clean_temporary()  # left by a kill; this pool is the member's only writer
            # continue at `start`: forget what was written after it (0 = from scratch)
            self.writer.submit(
                member.key, lambda: (run.truncate_metrics(start), run.truncate_checkpoints(start if start else -1))
            )
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
        gone = set(rows)
        keep = [i for i in range(len(self.slots)) if i not in gone]
        self.slots = [self.slots[i] for i in keep]
        self.rows.select(keep)
        if keep:
            self.bank.clear_cache()

    # -- chunks --------------------------------------------------------------------------------
    def _order(self) -> None:
        """Keep rows sorted by (minibatch, dataset) so every training chunk is a contiguous slice
        (views, no copies) and chunks of one dataset share their inputs."""
        keys = [(not s.full_batch, s.data_id) for s in self.slots]
        order = sorted(range(len(keys)), key=lambda r: keys[r])
        if order == list(range(len(order))):
            return
        self.slots = [self.slots[r] for r in order]
        self.rows.select(order)
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
        per_row = self.rows.row_bytes("param")
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

    def _train_block(
        self, block, steps, lr, wd, l1, want_norms, want_metrics, decide, loss_all, acc_all, norm_all
    ) -> None:
        grads = [self._chunk_grads(c, want_norms, want_metrics, loss_all, acc_all, norm_all) for c in block]
        G = grads[0] if len(grads) == 1 else {k: torch.cat([g[k] for g in grads]) for k in grads[0]}
        rows = [r for c in block for r in c]
        stopping = [r for r in rows if decide(r, loss_all[r], acc_all[r])]
        self._update(rows[0], rows[-1] + 1, G, steps, lr, wd, l1, stopping)

    def _chunk_grads(self, chunk, want_norms, want_metrics, loss_all, acc_all, norm_all) -> dict[str, torch.Tensor]:
        s0, s1 = chunk[0], chunk[-1] + 1
        params = self.rows.take("param", chunk)
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

    def _update(
        self,
        s0: int,
        s1: int,
        grads: dict[str, torch.Tensor],
        steps: np.ndarray,
        lr: np.ndarray,
        wd: np.ndarray,
        l1: np.ndarray,
        stopping: list[int],
    ) -> None:
        """L1, Grokfast, clipping and AdamW for rows ``s0:s1`` (views into the stacked state)."""
        P = self.rows.slices("param", s0, s1)
        G = [grads[k] for k in self.names]
        snapshot = self.rows.snapshot(stopping) if stopping else None
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
        if self.cfg0.optim.orthograd:  # wraps the AdamW step, as in the single trainer
            orthograd_rows_(P, G)
        adamw_step(
            P,
            G,
            self.rows.slices("exp_avg", s0, s1),
            self.rows.slices("exp_avg_sq", s0, s1),
            steps[s0:s1] + 1,
            lr[s0:s1],
            wd[s0:s1],
            self.betas,
            self.eps,
        )
        if snapshot is not None:
            # rows stopping at this step keep the state they were logged with (no update)
            self.rows.restore(stopping, snapshot)
            for r in stopping:
                s = self.slots[r]
                if s.gen_before is not None:
                    s.gen.set_state(s.gen_before)

    def _evaluate(self, rows: list[int], split: str) -> tuple[list[float], list[float]]:
        """No-grad loss and accuracy of ``rows`` on their full ``split`` (NaN for an empty split)."""
        loss = {r: float("nan") for r in rows}
        acc = {r: float("nan") for r in rows}
        live = [r for r in rows if self.bank.sets[self.slots[r].data_id].n(split) > 0]
        for chunk in self._chunks(live, split) if live else []:
            params = self.rows.take("param", chunk)
            x, y, mask, count, shared = self.bank.full(split, [self.slots[r].data_id for r in chunk])
            lo, ac = self.model.evaluate(params, x, y, mask, count, shared)
            for r, lv, av in zip(chunk, lo.tolist(), ac.tolist()):
                loss[r], acc[r] = lv, av
        return [loss[r] for r in rows], [acc[r] for r in rows]

    # -- outputs -------------------------------------------------------------------------------
    def _checkpoint(self, r: int) -> None:
        s = self.slots[r]
        if s.run is not None:
            state, step, run = self.rows.row("param", r), s.step, s.run
            s.metrics.flush()
            self.writer.submit(s.key, lambda: run.write_checkpoint(step, state))

    def _single_resume(self, r: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Row ``r``'s resume state in the single trainer's format (``mechgrok train --resume``
        continues it, e.g. a member that stopped early)."""
        s = self.slots[r]
        cfg = s.config
        model = build_model(cfg.model, cfg.task)
        model.load_state_dict(self.rows.row("param", r))
        params = list(model.parameters())
        lr, wd, _ = s.sched(max(s.step - 1, 0))
        opt = torch.optim.AdamW(params, lr=lr, betas=cfg.optim.betas, eps=cfg.optim.eps, weight_decay=wd)
        if s.step > 0:  # AdamW has state once a step was taken (s.start <= s.step)
            m, v = self.rows.row("exp_avg", r), self.rows.row("exp_avg_sq", r)
            for name, p in zip(self.names, params):
                opt.state[p] = {"step": torch.tensor(float(s.step)), "exp_avg": m[name], "exp_avg_sq": v[name]}
        ema = None
        if self.grokfast and not s.fresh:
            e = self.rows.row("ema", r)
            ema = [e[name] for name in self.names]
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
        state = self.rows.row("param", r)
        tensors, meta = self._single_resume(r)
        if s.run is None:
            hist = s.metrics.history
            summary = summarize_metrics(hist, steps_done)
            summary.update(extra)
            summary["events"] = detect_events(hist, loss_scale=loss_scale_of(cfg)).to_dict()
            model = build_model(cfg.model, cfg.task)
            model.load_state_dict(state)
            result = TrainResult(cfg, model.eval(), hist, summary, None, None)
            if self.keep_results:
                self.results[s.key] = result
            if self.on_done is not None:
                self.on_done(s, summary)
            return
        run, step = s.run, steps_done
        s.metrics.flush()
        on_done, keep, results = self.on_done, self.keep_results, self.results

        def finish() -> None:
            if step not in run.steps:
                run.write_checkpoint(step, state)
            run.write_resume(step, tensors, meta)
            metrics = run.metrics()
            summary = summarize_metrics(metrics, step)
            summary.update(extra)
            summary["events"] = detect_events(metrics, loss_scale=loss_scale_of(cfg)).to_dict()
            run.write_summary(summary)
            if keep:
                model = build_model(cfg.model, cfg.task)
                model.load_state_dict(state)
                hist = {k: [float(v) for v in metrics.get(k, [])] for k in METRIC_KEYS}
                results[s.key] = TrainResult(cfg, model.eval(), hist, summary, run, None)
            if on_done is not None:
                on_done(s, summary)

        self.writer.submit(s.key, finish)

    # -- resume state ------------------------------------------------------------------------------
    def _save_state(self) -> None:
        """Pool resume state: every row's parameters, moments, EMA, generator and step."""
        for s in self.slots:
            s.metrics.flush()
        self.writer.join()  # everything before each row's step is on disk
        if not self.slots:
            return
        self.state_gen += 1
        save_pool_state(self.state_dir, self.state_name, self.state_gen, self.rows, self.slots)

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
                r
                for r, s in enumerate(slots)
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

            loss_l, acc_l, wn = self._train_step(
                steps, lr, wd, l1, bool(log_rows), decide, want_metrics=bool(log_rows) or eng.early_stop
            )
            for r in log_rows:
                s = slots[r]
                train = mini_train[r] if r in mini_train else (loss_l[r], acc_l[r])
                s.metrics.add(metrics_row(s.step, train, test.get(r), wn[r], sched[r]))
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
        E = self.rows.slices("ema", s0, s1)
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
            wn = row_norms(list(self.rows.take("param", normal).values())).tolist()
            for i, r in enumerate(normal):
                s = slots[r]
                s.metrics.add(metrics_row(s.step, (tl[i], ta[i]), (el[i], ea[i]), wn[i], s.sched(s.step)))
        for r in rows:
            self._finish(r, now - slots[r].t0)
        self._drop(rows)

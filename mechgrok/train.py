"""The single-model trainer: AdamW (+ L1, schedules, warmup, clipping, Grokfast), dense
checkpoints and exact resume.

Step convention: the metrics row and the checkpoint at step ``t`` describe the parameters after
``t`` optimiser updates (step 0 = initialisation). With full-batch training the train loss of
row ``t`` is the loss the update ``t -> t+1`` differentiates, so it costs nothing extra.

Resume: the resume state at step ``s`` holds the parameters, AdamW moments, Grokfast EMA and the
minibatch RNG *before* update ``s``; continuing from it replays exactly the arithmetic an
uninterrupted run would have done, so the final weights are bitwise equal on CPU.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._threads import intra_op_threads, threads_for
from ._util import first_step
from .config import ConfigError, RunConfig
from .metrics import MetricsBuffer, loss_and_accuracy, metrics_row
from .models import build_model
from .store import FILES, Run, StoreError, _check_fits
from .tasks import Dataset, make_dataset

__all__ = [
    "TrainResult",
    "train",
    "resume",
    "loss_and_accuracy",
    "weight_norm",
    "grokfast_update",
    "grokfast_ma_update",
    "orthograd_",
    "summarize_metrics",
    "resume_tensors",
]


def weight_norm(params: list[torch.Tensor]) -> float:
    """Euclidean norm of all parameters together."""
    return math.sqrt(sum(float(p.detach().double().pow(2).sum()) for p in params))


def grokfast_update(
    grads: list[torch.Tensor], ema: list[torch.Tensor] | None, alpha: float, lamb: float
) -> list[torch.Tensor]:
    """Grokfast-EMA (Lee et al. 2024): ema <- alpha ema + (1 - alpha) g;  g <- g + lamb ema.

    Edits ``grads`` in place and returns the new EMA (initialised with the first gradient, as in
    the reference implementation).
    """
    if ema is None:
        ema = [g.detach().clone() for g in grads]
    else:
        for e, g in zip(ema, grads):
            e.mul_(alpha).add_(g, alpha=1 - alpha)
    for e, g in zip(ema, grads):
        g.add_(e, alpha=lamb)
    return ema


def grokfast_ma_update(
    grads: list[torch.Tensor], window: list[torch.Tensor] | None, filled: int, size: int, lamb: float
) -> tuple[list[torch.Tensor], int]:
    """Grokfast-MA (Lee et al. 2024, ``gradfilter_ma`` with warmup): keep the last ``size``
    gradients; once ``size`` are kept, g <- g + lamb * mean(kept).

    ``window`` holds one ``[size, *shape]`` ring buffer per gradient (``None``: start one),
    ``filled`` how many gradients it has seen; gradient ``filled`` goes to slot ``filled % size``.
    Edits ``grads`` in place; returns the buffers and the new count. The mean is taken over the
    buffer's slots in slot order, the same arithmetic in the trainer and the sweep engine.
    """
    if window is None:
        window = [torch.zeros((size,) + tuple(g.shape), dtype=g.dtype, device=g.device) for g in grads]
    slot = filled % size
    for w, g in zip(window, grads):
        w[slot].copy_(g)
    filled += 1
    if filled >= size:
        for w, g in zip(window, grads):
            g.add_(w.mean(0), alpha=lamb)
    return window, filled


def orthograd_(params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
    """⊥Grad (Prieto et al. 2025), in place, per tensor: g <- g - (w.g / w.w) w, rescaled to the
    norm g had. The 1e-30 guards are the publisher's (``orthograd.py``): a zero tensor (w.w = 0)
    keeps its gradient, a gradient parallel to w becomes ~0 rather than NaN."""
    for w, g in zip(params, grads):
        wf, gf = w.detach().reshape(-1), g.reshape(-1)  # gf may be a copy: written back with copy_
        proj = torch.dot(wf, gf) / (torch.dot(wf, wf) + 1e-30)
        orth = gf - proj * wf
        g.copy_((orth * (gf.norm(2) / (orth.norm(2) + 1e-30))).view_as(g))


def summarize_metrics(metrics: dict[str, Any], total_steps: int) -> dict[str, Any]:
    """Headline numbers of a run from its metric columns."""
    steps = metrics["step"]
    out: dict[str, Any] = {
        "steps": int(total_steps),
        "step_train_acc_100": first_step(steps, np.asarray(metrics["train_acc"], dtype=np.float64) >= 1.0),
        "step_test_acc_99": first_step(steps, np.asarray(metrics["test_acc"], dtype=np.float64) >= 0.99),
    }
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "weight_norm"):
        # last evaluated (non-NaN) value; None when never evaluated (no test set) or the run diverged
        col = [float(v) for v in metrics.get(key, []) if v is not None and v == v]
        out[f"final_{key}"] = col[-1] if col and math.isfinite(col[-1]) else None
    return out


@dataclass
class TrainResult:
    """What :func:`train` returns: the final live model, metric columns and the summary."""

    config: RunConfig
    model: torch.nn.Module
    metrics: dict[str, list[float]]
    summary: dict[str, Any]
    run: Run | None = None
    data: Dataset | None = field(default=None, repr=False)


def resume_tensors(model, opt, ema, gen, ma=None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Resume state (tensors, JSON meta) in the trainer's format: parameters, AdamW moments and
    step, the Grokfast EMA (or ``ma``: the Grokfast-MA ring buffers and their count) and the
    minibatch generator (also written by the sweep engine)."""
    tensors = {f"param.{k}": v for k, v in model.state_dict().items()}
    names = [n for n, _ in model.named_parameters()]
    state = opt.state_dict()
    for idx, st in state["state"].items():
        for key, val in st.items():
            tensors[f"opt.{names[idx]}.{key}"] = val if torch.is_tensor(val) else torch.tensor(val)
    if ema is not None:
        for name, e in zip(names, ema):
            tensors[f"ema.{name}"] = e
    tensors["rng"] = gen.get_state()
    meta = {"param_groups": state["param_groups"], "has_ema": ema is not None}
    if ma is not None and ma[0] is not None:
        for name, w in zip(names, ma[0]):
            tensors[f"ma.{name}"] = w
        meta["ma_filled"] = int(ma[1])
    return tensors, meta


def _load_resume(
    run: Run, model, opt, gen
) -> tuple[int, list[torch.Tensor] | None, tuple[list[torch.Tensor] | None, int]]:
    step, tensors, meta = run.read_resume()
    where = run.path / FILES["resume"]
    _check_fits(model.state_dict(), {k[6:]: v for k, v in tensors.items() if k.startswith("param.")}, str(where))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("param.")})
    names = [n for n, _ in model.named_parameters()]
    state: dict[int, dict[str, torch.Tensor]] = {}
    for i, name in enumerate(names):
        keys = [k for k in tensors if k.startswith(f"opt.{name}.")]
        if keys:
            state[i] = {k[len(f"opt.{name}.") :]: tensors[k] for k in keys}
    try:
        opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        ema = [tensors[f"ema.{n}"].clone() for n in names] if meta.get("has_ema") else None
        ma = ([tensors[f"ma.{n}"].clone() for n in names], int(meta["ma_filled"])) if "ma_filled" in meta else (None, 0)
        gen.set_state(tensors["rng"])
    except (KeyError, ValueError, TypeError, RuntimeError) as e:  # a hand-edited or foreign file
        raise StoreError(f"{where}: incomplete or inconsistent resume state ({type(e).__name__}: {e})") from None
    return step, ema, ma


def _progress(total: int, initial: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, unit="step", mininterval=0.5, leave=False)


def train(
    config: RunConfig,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    data: Dataset | None = None,
    threads: int | None = None,
) -> TrainResult:
    """Train one model as ``config`` says.

    ``out``: the run folder (``None`` trains in memory and writes nothing). ``resume=True``
    continues the run in ``out`` from its last resume state (the config stored there wins).
    ``data`` overrides the dataset generated from ``config.task`` (the sweep engine and tests use it).
    ``threads``: intra-op CPU threads while training, overriding ``config.train.threads`` (e.g. for
    a run resumed on another machine); both 0/None = automatic from the model size. The caller's
    ``torch.get_num_threads()`` is restored afterwards.
    """
    run: Run | None = None
    lock = None
    if out is not None:
        out = Path(out)
        if resume:
            run = Run.open(out)
            config = run.config
    # everything that can fail is tried before anything is created: a folder whose config was
    # written but whose training could never start can be neither resumed nor re-run
    device = _device(config.train.device)
    n_threads = threads_for(config, threads)
    data = (data if data is not None else make_dataset(config.task)).to(device)
    model = build_model(config.model, config.task, seed=config.train.seed).to(device)
    if out is not None:
        if resume:
            lock = run.lock().acquire()
        else:
            run = Run.create(out, config, keep_lock=True)
            lock = run.held_lock
    try:
        if run is not None:
            run.clean_temporary()  # left by a killed writer; safe now that the lock is held
        # torch's default of one thread per core makes tiny models crawl beside a busy process
        with intra_op_threads(n_threads):
            return _train(config, run, resume, progress, data, model, device)
    finally:
        if lock is not None:
            lock.release()


def resume(out: str | Path, *, progress: bool = True, threads: int | None = None) -> TrainResult:
    """Continue the killed (or finished) run in ``out`` from its last resume state, with the
    config stored there; ends with the same weights as an uninterrupted run."""
    return train(Run.open(out).config, out, resume=True, progress=progress, threads=threads)


def _device(name: str) -> torch.device:
    """``train.device`` as a torch device, refused (ConfigError) when unknown or absent here."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"train.device: unknown device {name!r} (expected 'cpu', 'cuda', 'cuda:0', ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name!r} requested but no CUDA device is available")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"train.device: {name!r} is not supported (expected 'cpu' or 'cuda[:N]')")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"train.device: {name!r} but only {torch.cuda.device_count()} CUDA device(s) are present")
    return device


def _train(
    config: RunConfig,
    run: Run | None,
    resume: bool,
    progress: bool,
    data: Dataset,
    model: torch.nn.Module,
    device: torch.device,
) -> TrainResult:
    tc, oc = config.train, config.optim
    params = [p for p in model.parameters()]
    opt = torch.optim.AdamW(params, lr=oc.lr, betas=oc.betas, eps=oc.eps, weight_decay=oc.weight_decay)
    gen = torch.Generator().manual_seed(tc.seed + 1)
    ema: list[torch.Tensor] | None = None
    ma: tuple[list[torch.Tensor] | None, int] = (None, 0)  # Grokfast-MA ring buffers, gradients seen
    start = 0
    if resume and run is not None:
        if run.has_resume():
            start, ema, ma = _load_resume(run, model, opt, gen)
            ema = [e.to(device) for e in ema] if ema is not None else None
            ma = ([w.to(device) for w in ma[0]] if ma[0] is not None else None, ma[1])
            run.truncate_checkpoints(start)
        else:
            # killed before its first resume state: nothing to continue, so start again from
            # step 0 (the freshly built model and generator are exactly a new run's)
            run.truncate_checkpoints(-1)
        run.truncate_metrics(start)

    ckpt_steps = set(tc.checkpoint_steps())
    writer = MetricsBuffer(run.append_metrics_text if run is not None else None)
    row: dict[str, Any] = {}
    n_train = data.train_x.shape[0]
    full_batch = oc.batch_size == 0 or oc.batch_size >= n_train
    t0 = time.perf_counter()
    bar = _progress(tc.steps, start, progress, config.name)

    def evaluate(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        if x.shape[0] == 0:
            return float("nan"), float("nan")
        with torch.no_grad():
            loss, acc = loss_and_accuracy(model(x), y, oc.loss_reduction, oc.loss, oc.loss_dtype)
        return float(loss), float(acc)

    def log(step: int, train_loss: float, train_acc: float) -> dict[str, Any]:
        test = evaluate(data.test_x, data.test_y) if step % tc.eval_every == 0 or step == tc.steps else None
        sched = (oc.lr_at(step), oc.weight_decay_at(step), oc.l1_at(step))
        row = metrics_row(step, (train_loss, train_acc), test, weight_norm(params), sched)
        writer.add(row)
        return row

    for step in range(start, tc.steps):
        if run is not None and step % tc.resume_every == 0 and step > start:
            writer.flush()
            tensors, meta = resume_tensors(model, opt, ema, gen, ma)
            run.write_resume(step, tensors, meta)
        if run is not None and step in ckpt_steps:
            writer.flush()
            run.write_checkpoint(step, model.state_dict())

        if full_batch:
            x, y = data.train_x, data.train_y
        else:
            idx = torch.randint(0, n_train, (oc.batch_size,), generator=gen).to(device)
            x, y = data.train_x[idx], data.train_y[idx]
        loss, acc = loss_and_accuracy(model(x), y, oc.loss_reduction, oc.loss, oc.loss_dtype)
        if full_batch:
            row = log(step, loss.item(), acc.item())
        elif step % tc.eval_every == 0:
            row = log(step, *evaluate(data.train_x, data.train_y))
        l1 = oc.l1_at(step)
        objective = loss + l1 * sum(p.abs().sum() for p in params) if l1 > 0 else loss
        opt.zero_grad(set_to_none=True)
        objective.backward()
        grads = [p.grad for p in params if p.grad is not None]
        if oc.grokfast_lambda > 0 and oc.grokfast_filter == "ma":
            ma = grokfast_ma_update(grads, ma[0], ma[1], oc.grokfast_window, oc.grokfast_lambda)
        elif oc.grokfast_lambda > 0:
            ema = grokfast_update(grads, ema, oc.grokfast_alpha, oc.grokfast_lambda)
        if oc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, oc.grad_clip)
        if oc.orthograd:  # wraps the optimiser step: after Grokfast and clipping, as the publisher's wrapper
            orthograd_([p for p in params if p.grad is not None], grads)
        for group in opt.param_groups:
            group["lr"] = oc.lr_at(step)
            group["weight_decay"] = oc.weight_decay_at(step)
        opt.step()
        bar.update(1)
        if step % 50 == 0 and "test_acc" in row:
            bar.set_postfix(train=f"{row['train_acc']:.2f}", test=f"{row['test_acc']:.2f}", refresh=False)

    # the final parameters: evaluate, checkpoint, resume state, summary
    log(tc.steps, *evaluate(data.train_x, data.train_y))
    bar.close()
    writer.flush()
    elapsed = time.perf_counter() - t0
    history = writer.history
    metrics = run.metrics() if run is not None else history
    summary = summarize_metrics(metrics, tc.steps)
    summary.update(
        seconds=elapsed, steps_per_second=(tc.steps - start) / max(elapsed, 1e-9), resumed_from=start or None
    )
    # the same events the sweep engine stores: a sweep member finished (or resumed) by this
    # trainer keeps its phase in results.csv
    from .probes.events import detect_events, loss_scale_of

    with contextlib.suppress(ValueError):  # no test metrics (train_fraction=1): no events to claim
        summary["events"] = detect_events(metrics, loss_scale=loss_scale_of(config)).to_dict()
    if run is not None:
        run.write_checkpoint(tc.steps, model.state_dict())
        tensors, meta = resume_tensors(model, opt, ema, gen, ma)
        run.write_resume(tc.steps, tensors, meta)
        run.write_summary(summary)
    return TrainResult(config, model.eval(), history, summary, run, data)

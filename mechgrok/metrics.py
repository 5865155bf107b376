"""Training metrics shared by the single trainer, the sweep engine and the probes: the float64
loss and accuracy (with ``optim.loss_reduction``), the metric keys, the metrics row, and the
buffered writer of ``metrics.jsonl``.

The sweep engine's kernels (:mod:`mechgrok.sweep._kernels`) compute the same loss fused with its
gradient (faster than autograd through these functions); ``tests/test_metrics.py`` and
``tests/test_sweep_engine.py`` hold them to these definitions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from .store import METRICS_FLUSH_ROWS, metrics_line

__all__ = [
    "METRIC_KEYS",
    "LOSS_DTYPES",
    "loss_divisor",
    "stablemax_s",
    "log_probs",
    "example_nll",
    "loss_and_accuracy",
    "batched_loss_and_accuracy",
    "metrics_row",
    "MetricsBuffer",
]

METRIC_KEYS = ("step", "train_loss", "train_acc", "test_loss", "test_acc", "weight_norm", "lr", "weight_decay", "l1")
"""The columns of ``metrics.jsonl`` (and of ``TrainResult.metrics``), in order."""


def loss_divisor(n_logits: int, reduction: str = "mean") -> float:
    """What the mean loss is divided by for ``optim.loss_reduction``: the number of logits for
    ``mean_classes`` (PAIR's ``-mean(onehot * log_softmax)`` over batch and classes), else 1; a
    single (BCE) logit is never divided."""
    return float(n_logits) if reduction == "mean_classes" and n_logits > 1 else 1.0


LOSS_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}
"""``optim.loss_dtype`` names and their torch dtypes."""


def stablemax_s(x: torch.Tensor) -> torch.Tensor:
    """StableMax's replacement of exp (Prieto et al. 2025): x + 1 for x >= 0, 1 / (1 - x) for x < 0.

    Each branch reads its input clamped to its own side, so the branch ``torch.where`` discards
    never divides by zero (its 0 * inf would make the gradient NaN at x = 1); the publisher's
    ``1 / (1 - x + 1e-30)`` equals this wherever their 1e-30 is not rounded away.
    """
    return torch.where(x < 0, 1.0 / (1.0 - x.clamp(max=0)), x.clamp(min=0) + 1.0)


def log_probs(logits: torch.Tensor, loss: str = "cross_entropy", dtype: str = "float64") -> torch.Tensor:
    """Log-probabilities over the last axis for ``optim.loss`` (log-softmax or log-StableMax),
    computed in ``optim.loss_dtype`` (the logits are cast to it first)."""
    z = logits.to(LOSS_DTYPES[dtype])
    if loss == "stablemax":
        s = stablemax_s(z)
        return torch.log(s / s.sum(-1, keepdim=True))  # the publisher's log(s / sum s)
    return z.log_softmax(-1)


def example_nll(
    logits: torch.Tensor, y: torch.Tensor, loss: str = "cross_entropy", dtype: str = "float64"
) -> torch.Tensor:
    """Per-example negative log-likelihood ``[...]`` of ``logits [..., C]`` (C >= 2) against ``y``,
    in ``dtype``; its gradient is exactly the one the run trains with (0 for a collapsed sample)."""
    return -log_probs(logits, loss, dtype).gather(-1, y.expand(logits.shape[:-1])[..., None])[..., 0]


def loss_and_accuracy(
    logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean", loss: str = "cross_entropy", dtype: str = "float64"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean loss and accuracy. One logit: BCE; several: cross-entropy (``loss``: ``optim.loss``).

    By default the log-softmax runs in float64: near 100% train accuracy float32 log-probs round
    to 0 and the loss (and its gradient) stalls - the "slingshot" artefacts of low-precision losses,
    Prieto et al.'s softmax collapse. ``dtype`` (``optim.loss_dtype``) chooses that precision;
    the returned loss is float64 whatever it was computed in.
    ``reduction`` is ``optim.loss_reduction``: ``mean_classes`` also divides by the number of
    logits (PAIR's ``-mean(onehot * log_softmax)`` over batch and classes; one logit: unchanged).
    """
    if logits.shape[-1] == 1:
        z = logits[..., 0].double()
        loss = F.binary_cross_entropy_with_logits(z, y.double())
        acc = ((z > 0).long() == y).double().mean()
    else:
        if loss == "cross_entropy" and dtype == "float64":
            loss = F.cross_entropy(logits.double(), y)  # today's arithmetic, bit for bit
        else:
            loss = example_nll(logits, y, loss, dtype).mean().double()
        acc = (logits.argmax(-1) == y).double().mean()
        div = loss_divisor(logits.shape[-1], reduction)
        if div != 1.0:
            loss = loss / div
    return loss, acc


def batched_loss_and_accuracy(
    logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean", loss: str = "cross_entropy", dtype: str = "float64"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row mean loss and accuracy of ``logits [n, batch, C]`` against ``y [batch]`` (no grad):
    :func:`loss_and_accuracy` vectorised over the leading axis (e.g. checkpoints); NaN for an
    empty batch."""
    n, batch, c = logits.shape
    if batch == 0:
        nan = torch.full((n,), float("nan"), dtype=torch.float64)
        return nan, nan.clone()
    if c == 1:
        z = logits[..., 0].double()
        target = y.double().expand(n, batch)
        loss = F.binary_cross_entropy_with_logits(z, target, reduction="none").mean(-1)
        acc = ((z > 0).long() == y).double().mean(-1)
    else:
        loss = example_nll(logits, y, loss, dtype).mean(-1).double()
        acc = (logits.argmax(-1) == y).double().mean(-1)
        div = loss_divisor(c, reduction)
        if div != 1.0:
            loss = loss / div
    return loss, acc


def metrics_row(
    step: int,
    train: tuple[float, float],
    test: tuple[float, float] | None,
    weight_norm: float,
    sched: tuple[float, float, float],
) -> dict[str, Any]:
    """One metrics row: ``train`` and ``test`` are (loss, accuracy), ``test=None`` when not
    evaluated at this step (the row then has no test keys: on disk a metric that was not
    evaluated is absent, strict JSON has no NaN); ``sched`` is (lr, weight_decay, l1)."""
    row: dict[str, Any] = {"step": step, "train_loss": train[0], "train_acc": train[1]}
    if test is not None:
        row["test_loss"], row["test_acc"] = test
    row["weight_norm"] = weight_norm
    row["lr"], row["weight_decay"], row["l1"] = sched
    return row


class MetricsBuffer:
    """The metrics rows of one run on their way to ``metrics.jsonl``.

    Rows become strict JSON lines when added and go to ``sink`` (e.g. ``Run.append_metrics_text``,
    or a job queued for a writer thread) every :data:`mechgrok.store.METRICS_FLUSH_ROWS` rows and
    on :meth:`flush` (call it before a checkpoint or resume state, so what is on disk agrees).
    ``sink=None``: nothing is written. ``history=True`` also keeps the columns in memory
    (:data:`METRIC_KEYS`, NaN for a metric not evaluated at a step).
    """

    def __init__(self, sink: Callable[[str], None] | None, history: bool = True):
        self.sink = sink
        self.lines: list[str] = []
        self.history: dict[str, list[float]] | None = {k: [] for k in METRIC_KEYS} if history else None

    def add(self, row: dict[str, Any]) -> None:
        if self.history is not None:
            for k in METRIC_KEYS:
                self.history[k].append(row.get(k, math.nan))
        if self.sink is not None:
            self.lines.append(metrics_line(row))
            if len(self.lines) >= METRICS_FLUSH_ROWS:
                self.flush()

    def flush(self) -> None:
        if self.sink is not None and self.lines:
            text, self.lines = "".join(self.lines), []
            self.sink(text)

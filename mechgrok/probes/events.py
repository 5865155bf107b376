"""Grokking events and run classification from metric curves.

Definitions (thresholds are arguments; these are the defaults):

* memorisation step - first logged step with train accuracy >= ``train_threshold`` (0.99);
* generalisation step - first evaluated step with test accuracy >= ``test_threshold`` (0.99);
* lag = generalisation - memorisation; ratio = generalisation / max(memorisation, 1).

**Steps without accuracy** (imported runs log the loss every step but accuracy only at their few
checkpoints; test loss may be logged where test accuracy is not): the step counts as having
reached an accuracy threshold ``t`` when its mean cross-entropy loss is <= ``(1 - t) * ln 2``.
This bound is exact, not a heuristic: a misclassified example has probability <= 1/2 on its
true class (softmax or a single logit), so it costs >= ln 2, and a mean loss below
``(1 - t) ln 2`` leaves fewer than a fraction ``1 - t`` of the examples misclassified. It is
conservative (a run can reach 99% accuracy with a larger loss), so loss-derived events can come
late, never early. Which evidence each split used is recorded in ``GrokEvents.evidence``. A run
logging PAIR's class-averaged loss (``optim.loss_reduction="mean_classes"``) logs the
cross-entropy times ``loss_scale`` = 1 / n_classes, and the bound scales with it
(:func:`loss_scale_of` reads it from a config).

Phases, ``rule="accuracy"`` (the names of Liu et al., "Omnigrok"):

* ``confusion``     - never memorised (train accuracy never reaches the threshold);
* ``memorisation``  - memorised, never generalised;
* ``grokking``      - generalised with a delay: ratio >= ``grok_ratio`` (2) *and*
  lag >= ``grok_min_lag`` (50 steps), i.e. the test set was learned at least as long after the
  training set as the training set took to learn;
* ``comprehension`` - generalised without such a delay;
* ``unknown``       - the run does not have the evidence: fewer than ``min_evaluated`` (2) steps
  with train evidence or with test evidence (e.g. a single checkpoint and no loss curves, or no
  test set). A phase is never claimed from one evaluated step: one point cannot tell memorising
  first from learning both at once.

``rule="loss"``: the loss rule of Google PAIR's hyperparameter sweeps ("Do machine learning models
memorize or generalize?"), on the logged ``train_loss`` / ``test_loss`` at the steps that have both
(PAIR-code/ai-explorables, ``source/grokking/sweep-mod/parse.js`` computes ``minTrainLoss``,
``minEvalLoss`` and ``maxRatio = max(eval_loss / train_loss)`` over a run's metric rows;
``sparse-parity-sweep/init.js`` ``circleFillFn`` colours with both loss thresholds at 1e-5):

* min train loss > ``pair_min_loss`` (1e-5): ``confusion`` (their "high train loss");
* min test loss > ``pair_min_loss``: ``memorisation`` ("high test loss");
* max test loss / train loss < ``pair_max_ratio`` (5e4): ``comprehension`` ("train/test drop
  together");
* otherwise ``grokking``; ``unknown`` with fewer than ``min_evaluated`` steps having both losses.

With this rule the memorisation / generalisation steps are the first steps with train / test loss
<= ``pair_min_loss``. PAIR's loss is ``-mean(onehot * log_softmax)`` over the batch *and* the
classes, i.e. the usual cross-entropy divided by the number of classes; the thresholds apply to
the loss as logged, so compare with their map on runs that log their loss scale (or scale
``pair_min_loss``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .._util import first_step, format_step

__all__ = [
    "GrokEvents",
    "ParityEvents",
    "ModularEvents",
    "PHASES",
    "PHASE_RULES",
    "detect_events",
    "classify_phase",
    "loss_for_accuracy",
    "loss_scale_of",
]

PHASES = ("comprehension", "grokking", "memorisation", "confusion", "unknown")
PHASE_RULES = ("accuracy", "loss")

# The rules' default thresholds (module docstring); arguments of detect_events / classify_phase.
ACC_THRESHOLD = 0.99
"""Train / test accuracy at which a run counts as memorised / generalised."""
GROK_RATIO = 2.0
"""Grokking: generalised at >= this multiple of the memorisation step ..."""
GROK_MIN_LAG = 50
"""... and at least this many steps after it."""
MIN_EVALUATED = 2
"""Steps with evidence per split below which the phase is ``unknown``."""
PAIR_MIN_LOSS = 1e-5
"""PAIR's loss rule: the loss a split must reach to count as learned."""
PAIR_MAX_RATIO = 5e4
"""PAIR's loss rule: max test / train loss below which train and test dropped together."""


@dataclass
class GrokEvents:
    """Event steps of one run (``None`` = never happened within the run)."""

    memorised_step: int | None
    generalised_step: int | None
    lag: int | None
    ratio: float | None
    phase: str
    final_train_acc: float | None
    final_test_acc: float | None
    total_steps: int
    thresholds: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    """Task-specific events added by other probes (e.g. ``pruned_step`` for parity)."""
    rule: str = "accuracy"
    """The phase rule used (:data:`PHASE_RULES`)."""
    evidence: dict[str, Any] = field(default_factory=dict)
    """Per split: what the events were read from (``accuracy``, ``loss``, ``accuracy+loss`` or
    ``none``) and how many steps had evidence; for the loss rule also the loss statistics."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        fmt = format_step
        if self.phase == "unknown":
            ev = self.evidence or {}
            return (
                f"unknown: not enough evidence for a phase ({ev.get('n_train', 0)} evaluated train step(s), "
                f"{ev.get('n_test', 0)} test step(s); need {ev.get('min_evaluated', MIN_EVALUATED)} of each)"
            )
        text = (
            f"{self.phase}: memorised at step {fmt(self.memorised_step)}, "
            f"generalised at step {fmt(self.generalised_step)}"
        )
        if self.lag is not None:
            text += f" (lag {self.lag:,} steps, ratio {self.ratio:.1f})"
        return text


@dataclass
class ParityEvents:
    """Pruning events of a sparse-parity run (:func:`~mechgrok.probes.bits.parity_events`);
    steps are ``None`` when the event never happened or was not asked for."""

    pruned_step: int | None
    """First checkpoint from which no irrelevant-bit weight exceeds ``prune_threshold``."""
    sensitivity_zero_step: int | None
    """First checkpoint from which flipping any irrelevant bit changes <= ``sensitivity_tol``."""
    prune_threshold: float
    sensitivity_tol: float
    prune_lag: int | None = None
    """generalised_step - pruned_step (when the generalisation step was given)."""
    sensitivity_lag: int | None = None
    """generalised_step - sensitivity_zero_step (likewise)."""
    prune_now_step: int | None = None
    """First checkpoint at/after memorisation whose pruned copy reaches the accuracy threshold
    (when the prune-now accuracies were given)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ModularEvents:
    """Progress-measure events of a modular-arithmetic run (:func:`~mechgrok.probes.progress.modular_events`)."""

    key_frequencies: list[int]
    """The key frequencies the progress measures used."""
    key_freq_step: int | None
    """First checkpoint from which every key frequency stays in the logits' key set."""
    restricted_drop_step: int | None
    """First checkpoint from which the restricted loss stays below the geometric mean of its
    maximum and its final value (``None`` when it never halves)."""
    excluded_rise_step: int | None
    """First checkpoint where the excluded loss is >= ``rise_factor`` x train loss (and above chance)."""
    rise_factor: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def classify_phase(
    memorised_step: int | None,
    generalised_step: int | None,
    grok_ratio: float = GROK_RATIO,
    grok_min_lag: int = GROK_MIN_LAG,
) -> str:
    """Phase name from the two event steps (see the module docstring)."""
    if memorised_step is None:
        return "confusion"
    if generalised_step is None:
        return "memorisation"
    lag = generalised_step - memorised_step
    ratio = generalised_step / max(memorised_step, 1)
    return "grokking" if ratio >= grok_ratio and lag >= grok_min_lag else "comprehension"


def loss_for_accuracy(threshold: float, loss_scale: float = 1.0) -> float:
    """Mean cross-entropy at or below which accuracy >= ``threshold`` is guaranteed: ``(1 - t) ln 2``
    (times ``loss_scale`` for a loss logged on another scale, e.g. 1 / n_classes)."""
    return loss_scale * (1.0 - threshold) * math.log(2.0)


def loss_scale_of(config: Any) -> float:
    """Logged loss / mean cross-entropy for a run config: 1, or 1 / (number of logits) with
    ``optim.loss_reduction="mean_classes"`` (PAIR's ``-mean(onehot * log_softmax)``)."""
    if getattr(config.optim, "loss_reduction", "mean") != "mean_classes":
        return 1.0
    n = config.model.n_out if config.task.kind == "parity" else config.task.p
    return 1.0 / max(int(n), 1)


def _last(values: np.ndarray | None) -> float | None:
    if values is None:
        return None
    ok = values[~np.isnan(values)]
    return float(ok[-1]) if ok.size else None


def _column(metrics: Mapping[str, Sequence[float]], key: str, n: int) -> np.ndarray | None:
    if key not in metrics:
        return None
    col = np.asarray(metrics[key], dtype=np.float64)
    if col.shape != (n,):
        raise ValueError(f"metrics: column {key!r} has {col.shape[0] if col.ndim else 0} rows, 'step' has {n}")
    return col


def _reached(
    acc: np.ndarray | None, loss: np.ndarray | None, threshold: float, n: int, loss_scale: float = 1.0
) -> tuple[np.ndarray, str]:
    """Per step: 1.0 reached, 0.0 not, NaN no evidence - accuracy where evaluated, else the loss bound."""
    out = np.full(n, np.nan)
    used = []
    if loss is not None:
        ok = np.isfinite(loss)
        out[ok] = (loss[ok] <= loss_for_accuracy(threshold, loss_scale)).astype(np.float64)
        if ok.any():
            used.append("loss")
    if acc is not None:
        ok = ~np.isnan(acc)  # accuracy wins where both exist
        out[ok] = (acc[ok] >= threshold).astype(np.float64)
        if ok.any():
            used.insert(0, "accuracy")
    return out, "+".join(used) or "none"


def detect_events(
    metrics: Mapping[str, Sequence[float]],
    train_threshold: float = ACC_THRESHOLD,
    test_threshold: float = ACC_THRESHOLD,
    grok_ratio: float = GROK_RATIO,
    grok_min_lag: int = GROK_MIN_LAG,
    *,
    rule: str = "accuracy",
    min_evaluated: int = MIN_EVALUATED,
    pair_min_loss: float = PAIR_MIN_LOSS,
    pair_max_ratio: float = PAIR_MAX_RATIO,
    loss_scale: float = 1.0,
) -> GrokEvents:
    """Events of a run from its metric columns (``Run.metrics()`` or ``TrainResult.metrics``).

    Needs ``step`` and, per split, ``*_acc`` or ``*_loss`` (both for ``rule="accuracy"``: the loss
    fills steps without accuracy; the losses for ``rule="loss"``). NaN entries (not evaluated) are
    skipped. See the module docstring for the rules and the ``unknown`` phase. ``loss_scale``:
    logged loss / mean cross-entropy (:func:`loss_scale_of`; the accuracy rule's loss bound).
    """
    if rule not in PHASE_RULES:
        raise ValueError(f"rule: must be one of {', '.join(PHASE_RULES)}, got {rule!r}")
    if "step" not in metrics:
        raise ValueError("metrics: missing column 'step'")
    steps = np.asarray(metrics["step"]).astype(np.int64)
    n = steps.shape[0]
    cols = {k: _column(metrics, k, n) for k in ("train_acc", "test_acc", "train_loss", "test_loss")}
    need = ("train_acc", "test_acc") if rule == "accuracy" else ("train_loss", "test_loss")
    for key in need:
        other = key.replace("_acc", "_loss") if key.endswith("_acc") else key
        if cols[key] is None and (rule == "loss" or cols[other] is None):
            raise ValueError(f"metrics: missing column {key!r}")
    thresholds: dict[str, float] = {
        "train": train_threshold,
        "test": test_threshold,
        "grok_ratio": grok_ratio,
        "grok_min_lag": grok_min_lag,
        "min_evaluated": min_evaluated,
    }
    if rule == "accuracy":
        train_hit, train_from = _reached(cols["train_acc"], cols["train_loss"], train_threshold, n, loss_scale)
        test_hit, test_from = _reached(cols["test_acc"], cols["test_loss"], test_threshold, n, loss_scale)
        thresholds.update(
            train_loss=loss_for_accuracy(train_threshold, loss_scale),
            test_loss=loss_for_accuracy(test_threshold, loss_scale),
        )
        n_train, n_test = int(np.isfinite(train_hit).sum()), int(np.isfinite(test_hit).sum())
        evidence: dict[str, Any] = {"train": train_from, "test": test_from, "n_train": n_train, "n_test": n_test}
    else:
        tr, te = cols["train_loss"], cols["test_loss"]
        train_hit = np.where(np.isfinite(tr), (tr <= pair_min_loss).astype(np.float64), np.nan)
        test_hit = np.where(np.isfinite(te), (te <= pair_min_loss).astype(np.float64), np.nan)
        both = np.isfinite(tr) & np.isfinite(te)
        n_train = n_test = int(both.sum())
        # a loss of exactly 0 (float32 underflow) makes the ratio infinite: grokking-like, as in PAIR's
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = te[both] / tr[both]
        evidence = {
            "train": "loss",
            "test": "loss",
            "n_train": n_train,
            "n_test": n_test,
            "min_train_loss": float(tr[both].min()) if both.any() else None,
            "min_test_loss": float(te[both].min()) if both.any() else None,
            "max_loss_ratio": float(np.nanmax(ratios)) if both.any() and not np.isnan(ratios).all() else None,
        }
        thresholds.update(pair_min_loss=pair_min_loss, pair_max_ratio=pair_max_ratio)
    evidence["min_evaluated"] = min_evaluated
    mem, gen = first_step(steps, train_hit > 0), first_step(steps, test_hit > 0)  # NaN (no evidence) > 0 is False
    lag = gen - mem if mem is not None and gen is not None else None
    ratio = gen / max(mem, 1) if lag is not None else None
    if n_train < min_evaluated or n_test < min_evaluated:
        phase = "unknown"
    elif rule == "accuracy":
        phase = classify_phase(mem, gen, grok_ratio, grok_min_lag)
    elif evidence["min_train_loss"] > pair_min_loss:
        phase = "confusion"
    elif evidence["min_test_loss"] > pair_min_loss:
        phase = "memorisation"
    elif evidence["max_loss_ratio"] is not None and evidence["max_loss_ratio"] < pair_max_ratio:
        phase = "comprehension"
    else:
        phase = "grokking"
    return GrokEvents(
        memorised_step=mem,
        generalised_step=gen,
        lag=lag,
        ratio=ratio,
        phase=phase,
        final_train_acc=_last(cols["train_acc"]),
        final_test_acc=_last(cols["test_acc"]),
        total_steps=int(steps[-1]) if steps.size else 0,
        thresholds=thresholds,
        rule=rule,
        evidence=evidence,
    )

"""Grokking events and phases on synthetic metric curves with known steps."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mechgrok.probes import PHASE_RULES, PHASES, GrokEvents, classify_phase, detect_events
from mechgrok.probes.events import loss_for_accuracy


def curves(n: int, mem: int | None, gen: int | None, eval_every: int = 1) -> dict[str, np.ndarray]:
    """Accuracies stepping from chance to 1.0 at the given steps (test evaluated every few steps)."""
    step = np.arange(n)
    train = np.where(step >= mem, 1.0, 0.5) if mem is not None else np.full(n, 0.6)
    test = np.where(step >= gen, 1.0, 0.5) if gen is not None else np.full(n, 0.5)
    test = np.where(step % eval_every == 0, test, np.nan)
    return {"step": step, "train_acc": train, "test_acc": test}


def test_grokking_curve():
    ev = detect_events(curves(2000, mem=100, gen=1500))
    assert (ev.memorised_step, ev.generalised_step, ev.lag) == (100, 1500, 1400)
    assert ev.ratio == pytest.approx(15.0) and ev.phase == "grokking"
    assert ev.final_train_acc == 1.0 and ev.final_test_acc == 1.0 and ev.total_steps == 1999


def test_test_accuracy_only_counts_where_evaluated():
    ev = detect_events(curves(2000, mem=100, gen=1503, eval_every=10))
    assert ev.generalised_step == 1510  # first evaluated step at or after the jump


def test_comprehension_memorisation_confusion():
    assert detect_events(curves(500, mem=100, gen=120)).phase == "comprehension"  # ratio 1.2
    assert detect_events(curves(500, mem=10, gen=40)).phase == "comprehension"  # ratio 4 but lag 30 < 50
    mem = detect_events(curves(500, mem=100, gen=None))
    assert mem.phase == "memorisation" and mem.generalised_step is None and mem.lag is None and mem.ratio is None
    conf = detect_events(curves(500, mem=None, gen=None))
    assert conf.phase == "confusion" and conf.memorised_step is None
    assert "never" in conf.describe()


def test_thresholds_are_arguments():
    m = curves(1000, mem=100, gen=None)
    m["test_acc"] = np.where(np.arange(1000) >= 600, 0.95, 0.5)
    assert detect_events(m).generalised_step is None
    ev = detect_events(m, test_threshold=0.9)
    assert ev.generalised_step == 600 and ev.thresholds["test"] == 0.9
    assert classify_phase(100, 150, grok_ratio=1.4, grok_min_lag=50) == "grokking"
    assert classify_phase(100, 150) == "comprehension"
    assert set(PHASES) == {"comprehension", "grokking", "memorisation", "confusion", "unknown"}


def test_events_round_trip_through_json_with_extra():
    ev = detect_events(curves(800, mem=50, gen=400))
    ev.extra.update({"pruned_step": 380, "sensitivity_zero_step": None})
    back = GrokEvents(**json.loads(json.dumps(ev.to_dict())))
    assert back == ev and back.extra["sensitivity_zero_step"] is None


def test_missing_column_is_a_one_line_error():
    with pytest.raises(ValueError, match="missing column 'test_acc'"):
        detect_events({"step": [0, 1], "train_acc": [0.5, 1.0]})


# -- evidence: loss curves where accuracy is missing, "unknown" where there is too little ---------


def imported_like(n: int = 3001, mem: int = 800, gen: int = 2400, test_every: int = 10) -> dict[str, np.ndarray]:
    """Like an imported published run: losses logged all along (test every few steps), accuracy
    only at the single final checkpoint."""
    step = np.arange(n)
    train_loss = np.where(step >= mem, 1e-3, 2.0)
    test_loss = np.where(step >= gen, 2e-3, 6.0)
    test_loss = np.where(step % test_every == 0, test_loss, np.nan)
    acc = np.full(n, np.nan)
    train_acc, test_acc = acc.copy(), acc.copy()
    train_acc[-1] = test_acc[-1] = 1.0
    return {
        "step": step,
        "train_loss": train_loss,
        "test_loss": test_loss,
        "train_acc": train_acc,
        "test_acc": test_acc,
    }


def test_imported_run_events_come_from_the_loss_curves():
    # before: accuracy at one (the last) step only -> "comprehension, memorised and generalised at 3000"
    ev = detect_events(imported_like())
    assert (ev.memorised_step, ev.generalised_step, ev.phase) == (800, 2400, "grokking")
    assert ev.evidence["train"] == "accuracy+loss" and ev.evidence["n_train"] == 3001 and ev.evidence["n_test"] == 301
    assert ev.thresholds["train_loss"] == pytest.approx(0.01 * math.log(2))


def test_loss_threshold_is_tied_to_the_accuracy_threshold():
    assert loss_for_accuracy(0.99) == pytest.approx(0.01 * math.log(2))
    assert loss_for_accuracy(0.9) == pytest.approx(0.1 * math.log(2))
    # a loss just above the bound does not count, just below does
    m = imported_like(n=200, mem=50, gen=120, test_every=1)
    m["train_loss"] = np.where(np.arange(200) >= 50, loss_for_accuracy(0.99) * 1.01, 2.0)
    assert detect_events(m).memorised_step == 199  # only the final accuracy says so
    m["train_loss"] = np.where(np.arange(200) >= 50, loss_for_accuracy(0.99) * 0.99, 2.0)
    assert detect_events(m).memorised_step == 50
    # accuracy wins where both exist
    m["train_acc"] = np.where(np.arange(200) >= 30, 1.0, 0.5)
    assert detect_events(m).memorised_step == 30


def test_a_phase_is_never_claimed_from_one_evaluated_step():
    one = {"step": [5000], "train_acc": [1.0], "test_acc": [1.0]}
    ev = detect_events(one)
    assert ev.phase == "unknown" and ev.memorised_step == 5000 and "not enough evidence" in ev.describe()
    # accuracy at the last step only and no loss curves: still one step of evidence
    m = imported_like()
    del m["train_loss"], m["test_loss"]
    assert detect_events(m).phase == "unknown"
    # no test set (train_fraction = 1): nothing to tell generalisation by
    m = curves(300, mem=50, gen=None)
    m["test_acc"][:] = np.nan
    assert detect_events(m).phase == "unknown"
    assert detect_events(m, min_evaluated=0).phase == "memorisation"


def pair_curves(min_train: float, min_test: float, ratio_peak: float, n: int = 400) -> dict[str, np.ndarray]:
    """Train loss falling to ``min_train`` by step 100; test loss a ratio ``ratio_peak`` above it at
    step 100..199, then falling to ``min_test``."""
    step = np.arange(n)
    train = np.where(step < 100, 1.0, min_train)
    test = np.where(step < 100, 1.0, np.where(step < 200, min_train * ratio_peak, min_test))
    return {"step": step, "train_loss": train, "test_loss": test}


@pytest.mark.parametrize(
    "curves_kw, phase",
    [
        ({"min_train": 1e-3, "min_test": 1e-3, "ratio_peak": 2.0}, "confusion"),  # train loss never <= 1e-5
        ({"min_train": 1e-7, "min_test": 1e-3, "ratio_peak": 1e3}, "memorisation"),  # test loss never <= 1e-5
        ({"min_train": 1e-7, "min_test": 1e-8, "ratio_peak": 1e4}, "comprehension"),  # max ratio 1e4 < 5e4
        ({"min_train": 1e-7, "min_test": 1e-8, "ratio_peak": 1e5}, "grokking"),  # max ratio 1e5 >= 5e4
    ],
)
def test_pair_loss_rule_branches(curves_kw, phase):
    m = pair_curves(**curves_kw)
    ev = detect_events(m, rule="loss")
    assert ev.phase == phase and ev.rule == "loss"
    assert ev.evidence["min_train_loss"] == pytest.approx(curves_kw["min_train"])
    assert ev.evidence["max_loss_ratio"] == pytest.approx(
        max(curves_kw["ratio_peak"], curves_kw["min_test"] / curves_kw["min_train"], 1.0)
    )
    if phase in ("comprehension", "grokking"):
        assert (ev.memorised_step, ev.generalised_step) == (100, 200)


def test_pair_loss_rule_thresholds_and_unknown():
    m = pair_curves(1e-7, 1e-8, 1e4)
    assert detect_events(m, rule="loss", pair_max_ratio=1e3).phase == "grokking"
    assert detect_events(m, rule="loss", pair_min_loss=1e-9).phase == "confusion"
    one = {k: v[-1:] for k, v in m.items()}
    assert detect_events(one, rule="loss").phase == "unknown"
    with pytest.raises(ValueError, match="missing column 'test_loss'"):
        detect_events({"step": [0, 1], "train_loss": [1.0, 0.1], "test_acc": [0.5, 1.0]}, rule="loss")
    with pytest.raises(ValueError, match="rule: must be one of accuracy, loss"):
        detect_events(m, rule="auc")
    assert PHASE_RULES == ("accuracy", "loss")


def test_accuracy_and_loss_rules_agree_on_the_step_curves():
    acc = curves(2000, mem=100, gen=1500)
    step = acc["step"]
    acc["train_loss"] = np.where(step >= 100, 1e-7, 0.7)
    acc["test_loss"] = np.where(step >= 1500, 1e-7, np.where(step >= 100, 20.0, 0.7))
    assert detect_events(acc).phase == detect_events(acc, rule="loss").phase == "grokking"


def test_loss_bound_follows_the_logged_loss_scale():
    from mechgrok import preset
    from mechgrok.probes.events import loss_scale_of

    # PAIR's class-averaged loss (optim.loss_reduction="mean_classes") logs CE / p
    cfg = preset("modadd-mlp24").with_overrides({"optim.loss_reduction": "mean_classes"})
    assert loss_scale_of(cfg) == pytest.approx(1 / cfg.task.p)
    assert loss_scale_of(cfg.with_overrides({"optim.loss_reduction": "mean"})) == 1.0
    m = imported_like(n=200, mem=50, gen=120, test_every=1)
    m["train_loss"] = np.where(np.arange(200) >= 50, 0.5 * loss_for_accuracy(0.99), 2.0)  # CE/67 of a CE 33x the bound
    assert detect_events(m).memorised_step == 50
    assert detect_events(m, loss_scale=1 / 67).memorised_step == 199

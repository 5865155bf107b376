"""A sweep member's events equal those of the same config trained alone, loss scale included."""

import pytest

import mechgrok as mg
from mechgrok.sweep import train_batch


@pytest.mark.parametrize("in_memory", [True, False])
def test_member_events_equal_single_trainer_with_pair_loss(tiny_modadd, tmp_path, in_memory):
    # PAIR's loss divides by the number of classes; the events' loss bound must follow it in the
    # engine exactly as in the trainer (the engine once used the per-example bound).
    cfg = tiny_modadd.with_overrides({"optim.loss_reduction": "mean_classes", "train.eval_every": 3})
    single = mg.train(cfg, None if in_memory else tmp_path / "single", progress=False)
    [member] = train_batch([cfg], None if in_memory else [tmp_path / "member"], progress=False)
    ev_single, ev_member = single.summary["events"], member.summary["events"]
    assert ev_member["thresholds"] == ev_single["thresholds"]
    assert ev_member["thresholds"]["test_loss"] == pytest.approx(mg.probes.events.loss_for_accuracy(0.99) / 7)
    for key in ("memorised_step", "generalised_step", "phase"):
        assert ev_member[key] == ev_single[key]

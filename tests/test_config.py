import json

import pytest

from mechgrok import ConfigError, OptimConfig, RunConfig, TaskConfig, TrainConfig, preset, preset_names
from mechgrok.config import parse_schedule, schedule_value


@pytest.mark.parametrize("name", preset_names())
def test_presets_round_trip_through_json(name):
    cfg = preset(name)
    again = RunConfig.from_json(cfg.to_json())
    assert again == cfg
    assert json.loads(again.to_json()) == json.loads(cfg.to_json())


@pytest.mark.parametrize(
    "section, kwargs, needle",
    [
        (TaskConfig, dict(p=1), "task.p"),
        (TaskConfig, dict(kind="parity", n_bits=5, relevant_bits=(0, 5)), "task.relevant_bits"),
        (TaskConfig, dict(kind="parity", n_bits=4, n_train=10, n_test=10), "task.n_train"),
        (TaskConfig, dict(train_fraction=0.0), "task.train_fraction"),
        (TaskConfig, dict(train_fraction=1.5), "task.train_fraction"),
        (TaskConfig, dict(op="pow"), "task.op"),
        (TaskConfig, dict(p=12, op="div"), "task.p"),
        (TaskConfig, dict(p="7"), "task.p"),
        (OptimConfig, dict(weight_decay=-1.0), "optim.weight_decay"),
        (OptimConfig, dict(lr=-1e-3), "optim.lr"),
        (OptimConfig, dict(lr=0.0), "optim.lr"),
        (OptimConfig, dict(wd_schedule=((100, 0.1), (50, 0.0))), "optim.wd_schedule"),
        (OptimConfig, dict(betas=(0.9, 1.0)), "optim.betas"),
        (TrainConfig, dict(steps=0), "train.steps"),
        (TrainConfig, dict(eval_every=0), "train.eval_every"),
    ],
)
def test_invalid_values_name_the_field(section, kwargs, needle):
    with pytest.raises(ConfigError) as err:
        section(**kwargs)
    msg = str(err.value)
    assert msg.startswith(needle) and "\n" not in msg


def test_overrides_copy_and_coerce():
    cfg = preset("parity")
    new = cfg.with_overrides(
        {"optim.lr": "3e-3", "weight_decay": "0.5", "task.relevant_bits": "0,4,9", "train.steps": "1e3"}
    )
    assert new.optim.lr == 3e-3 and new.optim.weight_decay == 0.5
    assert new.task.relevant_bits == (0, 4, 9) and new.train.steps == 1000
    assert cfg.optim.lr == 1e-2  # the caller's config is untouched
    with pytest.raises(ConfigError, match="ambiguous"):
        cfg.with_overrides({"seed": "1"})
    with pytest.raises(ConfigError, match="unknown"):
        cfg.with_overrides({"optim.lrr": "1"})
    with pytest.raises(ConfigError, match="optim.lr"):
        cfg.with_overrides({"optim.lr": "fast"})
    with pytest.raises(ConfigError, match="preset"):
        preset("nope")


def test_model_and_format_must_match():
    with pytest.raises(ConfigError, match="task.format"):
        preset("modadd-mlp24").with_overrides({"model.kind": "rnn"})  # the transformer reads pairs (Zhong et al.)
    with pytest.raises(ConfigError, match="model.kind"):
        preset("parity").with_overrides({"model.kind": "mlp"})


def test_schedules():
    assert parse_schedule("constant", 1.0) == ()
    assert parse_schedule("off", 1.0) == ((0, 0.0),)
    on = parse_schedule("on@500", 0.02)
    assert [schedule_value(on, 0.02, s) for s in (0, 499, 500, 10_000)] == [0.0, 0.0, 0.02, 0.02]
    off = parse_schedule("off@100", 1.0)
    assert [schedule_value(off, 1.0, s) for s in (0, 99, 100)] == [1.0, 1.0, 0.0]
    pw = parse_schedule("10:0.5,20:0.1", 1.0)
    assert [schedule_value(pw, 1.0, s) for s in (0, 10, 15, 20, 99)] == [1.0, 0.5, 0.5, 0.1, 0.1]
    with pytest.raises(ConfigError):
        parse_schedule("sometimes", 1.0)
    cfg = preset("parity").with_overrides({"optim.wd_schedule": "on@300"})
    assert cfg.optim.weight_decay_at(299) == 0.0 and cfg.optim.weight_decay_at(300) == 0.1


def test_checkpoint_schedule_is_log_early_plus_every_n():
    steps = TrainConfig(steps=1000, checkpoint_every=100, log_checkpoints=10).checkpoint_steps()
    assert steps[0] == 0 and steps[-1] == 1000
    assert set(range(0, 1001, 100)) <= set(steps)
    early = [s for s in steps if 0 < s < 100]
    assert len(early) >= 5  # dense early on
    assert steps == sorted(set(steps))

"""The public surface: what `import mechgrok as mg` offers, preset overrides, resume, the shared
helpers, and the CLI's error boundary and option defaults."""

import dataclasses
import importlib
import json

import numpy as np
import pytest
import torch

import mechgrok as mg
import mechgrok.report
from mechgrok import cli
from mechgrok._util import first_step, format_step
from mechgrok.config import ConfigError
from mechgrok.report._common import DEFAULT_MAX_FRAMES
from mechgrok.sweep import EngineConfig
from mechgrok.sweep.spec import MAX_MEMBERS

INTERNALS = {
    "mechgrok.train": ["grokfast_update", "weight_norm"],
    "mechgrok.config": ["schedule_value", "parse_schedule"],
    "mechgrok.models": ["HookedConfig", "cossin_embedding", "ParityMLP", "OneLayerTransformer"],
    "mechgrok.demo": ["run_demo"],
    "mechgrok.tasks": ["ModularVocab", "encode_pairs", "modular_table"],
}


def test_top_level_is_the_users_api():
    for name in mg.__all__:
        assert hasattr(mg, name), name
    for module, names in INTERNALS.items():
        mod = __import__(module, fromlist=names)
        for name in names:
            assert name not in mg.__all__ and not hasattr(mg, name), name
            assert callable(getattr(mod, name)), (module, name)  # still importable where it lives
    for name in (
        "train",
        "resume",
        "preset",
        "Run",
        "analyze",
        "detect_events",
        "parity_events",
        "modular_events",
        "ParityEvents",
        "ModularEvents",
        "bit_dependence",
        "neuron_circles",
        "run_sweep",
        "report",
    ):
        assert name in mg.__all__, name


def test_figure_builders_are_named_figure_and_never_shadow_a_probe():
    import plotly.graph_objects as go

    builders = [n for n in mechgrok.report.__all__ if n.endswith("_figure")]
    assert (
        len(builders) == 17
    )  # + irrep_spectrum_figure (groups), llc_figure, llc_traces_figure, llc_calibration_figure, stability_figure
    for probe in ("bit_dependence", "prune_now_accuracy", "progress_measures", "neuron_circles"):
        assert not hasattr(mechgrok.report, probe), probe  # mg.report.X used to be a figure, mg.X a tensor
        assert f"{probe}_figure" in builders
    assert isinstance(
        mechgrok.report.training_curves_figure(
            {
                "step": [0, 1],
                "train_loss": [1.0, 0.5],
                "train_acc": [0.5, 1.0],
                "test_loss": [1.0, 0.9],
                "test_acc": [0.5, 0.6],
            }
        ),
        go.Figure,
    )


def test_preset_takes_an_overrides_mapping():
    cfg = mg.preset("parity", {"optim.weight_decay": 0.3, "train.steps": "100"})
    assert cfg.optim.weight_decay == 0.3 and cfg.train.steps == 100
    assert mg.preset("parity") == mg.preset("parity", {}) == mg.preset("parity", None)
    assert mg.preset("parity").optim.weight_decay != 0.3  # a new config; the preset is untouched
    with pytest.raises(ConfigError, match="overrides must be a mapping"):
        mg.preset("parity", ["optim.weight_decay=0.3"])
    with pytest.raises(TypeError):
        mg.preset("parity", **{"optim.weight_decay": 0.3})  # the old keyword form is gone
    with pytest.raises(ConfigError, match="unknown preset"):
        mg.preset("nope")


def test_resume_finishes_a_killed_run_with_the_uninterrupted_weights(tiny_parity, tmp_path, monkeypatch):
    ref = mg.train(tiny_parity, tmp_path / "ref", progress=False)

    train_mod = importlib.import_module("mechgrok.train")  # `mechgrok.train` the attribute is the function

    real = train_mod._progress

    def killed_at(step):
        def progress(*args, **kwargs):
            bar = real(*args, **kwargs)
            update, done = bar.update, [0]  # a disabled bar does not count: count here

            def counting(n=1):
                update(n)
                done[0] += n
                if done[0] >= step:
                    raise KeyboardInterrupt

            bar.update = counting
            return bar

        return progress

    monkeypatch.setattr(train_mod, "_progress", killed_at(tiny_parity.train.steps // 2 + 3))
    with pytest.raises(KeyboardInterrupt):
        mg.train(tiny_parity, tmp_path / "killed", progress=False)
    monkeypatch.setattr(train_mod, "_progress", real)
    assert mg.Run.open(tmp_path / "killed").summary() is None  # not finished
    result = mg.resume(tmp_path / "killed", progress=False)
    assert result.summary["resumed_from"] and result.summary["steps"] == tiny_parity.train.steps
    last = ref.run.steps[-1]
    a, b = ref.run.checkpoint(last), mg.Run.open(tmp_path / "killed").checkpoint(last)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_event_records_are_dataclasses(tmp_path, tiny_parity):
    run = mg.train(tiny_parity, tmp_path / "r", progress=False).run
    traj, data = run.trajectory(), mg.make_dataset(tiny_parity.task)
    ev = mg.parity_events(mg.bit_dependence(traj, data), traj.steps, generalised_step=40)
    assert isinstance(ev, mg.ParityEvents) and dataclasses.is_dataclass(ev)
    assert ev.prune_lag == (None if ev.pruned_step is None else 40 - ev.pruned_step)
    assert json.loads(json.dumps(ev.to_dict())) == dataclasses.asdict(ev)
    steps = torch.tensor([0, 10, 20])
    mod = mg.modular_events(
        steps,
        {
            "restricted_loss": torch.tensor([4.0, 1.0, 0.1], dtype=torch.float64),
            "excluded_loss": torch.tensor([4.0, 2.0, 3.0], dtype=torch.float64),
            "train_loss": torch.tensor([4.0, 0.1, 0.01], dtype=torch.float64),
        },
        None,
        [3],
    )
    assert isinstance(mod, mg.ModularEvents) and mod.key_frequencies == [3]
    assert mod.excluded_rise_step == 10 and mod.restricted_drop_step == 20  # 2.0 >= 10 x 0.1; 0.1 <= sqrt(0.4)
    assert isinstance(mg.detect_events(run.metrics()), mg.GrokEvents)


def test_first_step_and_format_step():
    steps = np.array([0, 5, 10, 20])
    assert first_step(steps, np.array([np.nan, 0.5, 1.0, 1.0]) >= 1.0) == 10  # NaN = not evaluated: skipped
    assert first_step(torch.tensor(steps), torch.tensor([False] * 4)) is None
    assert first_step([], []) is None
    assert format_step(None) == "never" and format_step(12345) == "12,345" and format_step(7, 5) == "    7"
    assert format_step(torch.tensor(3)) == "3"


def test_cli_turns_only_bad_input_into_one_line(monkeypatch, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["analyze", "/nonexistent/run", "--quiet"])
    assert e.value.code == 2 and capsys.readouterr().err.startswith("error: ")

    # a genuine bug (here a ValueError from inside a command) keeps its traceback
    def broken(*args, **kwargs):
        raise ValueError("a programming error")

    monkeypatch.setattr("mechgrok.presets.preset", broken)
    with pytest.raises(ValueError, match="a programming error"):
        cli.main(["train", "parity", "--quiet"])


def test_cli_defaults_come_from_the_config_classes():
    import click
    import typer.main

    command = typer.main.get_command(cli.app)
    ctx = click.Context(command)
    params = {p.name: p.default for p in command.get_command(ctx, "sweep").params}
    engine = EngineConfig()
    assert params["max_batch"] == engine.max_batch and params["patience"] == engine.patience
    assert params["log_every"] == engine.log_every and params["engine"] == engine.engine
    assert params["max_members"] == MAX_MEMBERS and params["phase_rule"] == mg.PHASE_RULES[0]
    report = {p.name: p.default for p in command.get_command(ctx, "report").params}
    assert report["max_frames"] == DEFAULT_MAX_FRAMES


def test_scripts_helper_opens_or_trains(tmp_path, capsys):
    from mechgrok.scripts import parse_sets, script_run

    argv = [
        str(tmp_path / "r"),
        "--set",
        "task.n_bits=6",
        "--set",
        "task.n_train=20",
        "--set",
        "task.n_test=20",
        "--set",
        "train.steps=20",
        "--set",
        "model.d_mlp=8",
    ]
    run, args = script_run("test", run_dir="unused", preset="parity", argv=argv)
    assert run.config.train.steps == 20 and args.max_checkpoints == 200 and "training" in capsys.readouterr().out
    again, _ = script_run("test", run_dir="unused", preset="parity", argv=[str(tmp_path / "r")])
    assert again.path == run.path and "training" not in capsys.readouterr().out
    with pytest.raises(SystemExit, match="^error: .*n_bits"):
        script_run("test", run_dir="unused", preset="parity", argv=[str(tmp_path / "s"), "--set", "task.n_bits=0"])
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_sets(["train.steps"])

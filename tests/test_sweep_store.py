"""Grid specs, sweep folders, the results table, resume after kill -9 and the `sweep` command."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from mechgrok import ConfigError, Run, StoreError, preset, train
from mechgrok.sweep import EngineConfig, Sweep, SweepSpec, log_range, parse_axis, run_sweep
from mechgrok.sweep.store import SWEEP_FILES

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _cli(*args, check=True, timeout=300):
    proc = subprocess.run(
        [sys.executable, "-m", "mechgrok.cli", *args], capture_output=True, text=True, env=ENV, timeout=timeout
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture
def parity_base(tiny_parity):
    return tiny_parity.with_overrides({"train.steps": 150, "train.eval_every": 5, "train.checkpoint_every": 50})


# ----------------------------------------------------------------------------------------------
# grid specs


def test_parse_axis_forms():
    assert parse_axis("weight_decay=log:0.01:1:3") == ("optim.weight_decay", (0.01, 0.1, 1.0))
    assert parse_axis("optim.lr=lin:0.1:0.3:3") == ("optim.lr", (0.1, 0.2, 0.3))
    assert parse_axis("d_mlp=log:8:64:4") == ("model.d_mlp", (8, 16, 32, 64))  # integers, rounded
    assert parse_axis("d_mlp=log:1:2:5") == ("model.d_mlp", (1, 2))  # de-duplicated after rounding
    assert parse_axis("train_fraction=0.3,0.5") == ("task.train_fraction", (0.3, 0.5))
    assert parse_axis("wd_schedule=constant|on@100") == (
        "optim.wd_schedule",
        ([], [[0, 0.0], [100, 1.0]]),
    )  # JSON-plain
    assert log_range(1e-3, 1, 4) == [0.001, 0.01, 0.1, 1.0]


@pytest.mark.parametrize(
    "text, message",
    [
        ("weight_decay", "expected key=values"),
        ("bogus=1,2", "bogus: unknown config key"),
        ("seed=1,2", "ambiguous"),
        ("weight_decay=log:0:1:3", "positive bounds"),
        ("weight_decay=log:1:2", "log:LOW:HIGH:COUNT"),
        ("weight_decay=-1,1", "optim.weight_decay: must be finite and >= 0"),
        ("model.kind=log:1:2:3", "not numeric"),
        ("lr=0.1,0.1", "repeated values"),
    ],
)
def test_parse_axis_errors_name_the_problem(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_axis(text)


def test_spec_members_product_order_and_round_trip(parity_base):
    spec = SweepSpec.from_cli(parity_base, ["weight_decay=0.1,1", "d_mlp=8,16,32"], seeds=2)
    assert spec.size == 12
    points = spec.points()
    assert points[0] == {"optim.weight_decay": 0.1, "model.d_mlp": 8, "train.seed": 0}
    assert points[1]["train.seed"] == 1 and points[2]["model.d_mlp"] == 16
    assert points[-1] == {"optim.weight_decay": 1.0, "model.d_mlp": 32, "train.seed": 1}
    assert spec.config(5).model.d_mlp == 32 and spec.config(5).train.seed == 1
    assert SweepSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(ConfigError, match="given twice"):
        SweepSpec(parity_base, (("weight_decay", (0.1,)), ("optim.weight_decay", (1.0,))))
    with pytest.raises(ConfigError, match="sweep.seeds"):
        SweepSpec(parity_base, seeds=0)


# ----------------------------------------------------------------------------------------------
# sweep folders


def test_sweep_folder_results_and_members(parity_base, tmp_path):
    spec = SweepSpec.from_cli(parity_base, ["weight_decay=0.01,1", "d_mlp=8,16"], seeds=2)
    sweep = run_sweep(spec, tmp_path / "sw", engine=EngineConfig(log_every=5), progress=False)
    assert sorted(sweep.finished()) == list(range(8))
    assert not list((tmp_path / "sw" / SWEEP_FILES["state"]).glob("*"))  # batch state removed when done
    df = sweep.results()
    assert len(df) == 8 and list(df["member"]) == list(range(8))
    for col in (
        "weight_decay",
        "d_mlp",
        "seed",
        "lr",
        "phase",
        "memorised_step",
        "generalised_step",
        "final_test_acc",
        "run_dir",
    ):
        assert col in df.columns, col
    assert set(df["phase"]) <= {"comprehension", "grokking", "memorisation", "confusion"}
    assert list(df["d_mlp"][:4]) == [8, 8, 16, 16]
    # the phase map and the sweep report read the table
    from mechgrok.report import phase_map_figure, write_sweep_report

    assert write_sweep_report(tmp_path / "sw").exists()
    fig = phase_map_figure(df, "weight_decay", "d_mlp")
    assert sum(len(t.x) for t in fig.data) == 8
    # every member is an ordinary run folder, equal to the single trainer's run of its config
    member = sweep.member(3)
    run = sweep.run(3)
    assert run.config == member.config and run.steps[-1] == 150
    single = train(member.config, progress=False)
    for k, v in single.model.state_dict().items():
        torch.testing.assert_close(run.checkpoint(150)[k], v, rtol=1e-4, atol=1e-5)
    events = run.summary()["events"]
    assert df.loc[3, "phase"] == events["phase"]
    # re-running the finished sweep does nothing; a different spec in the same folder is refused
    again = run_sweep(spec, tmp_path / "sw", progress=False)
    assert len(again.results()) == 8
    other = SweepSpec.from_cli(parity_base, ["weight_decay=0.5"])
    with pytest.raises(StoreError, match="holds a different sweep"):
        run_sweep(other, tmp_path / "sw", progress=False)


def test_sweep_groups_architectures_and_data_and_early_stop(parity_base, tmp_path):
    """Widths become separate batches; training-set sizes share one batch (masked); early stop."""
    base = parity_base.with_overrides({"train.steps": 400, "optim.weight_decay": 1.0})
    spec = SweepSpec.from_cli(base, ["d_mlp=8,16", "n_train=40,60"], seeds=1)
    sweep = run_sweep(
        spec, tmp_path / "sw", engine=EngineConfig(early_stop=True, patience=30, max_batch=3), progress=False
    )
    df = sweep.results()
    assert len(df) == 4 and sorted(df["n_train"].unique()) == [40, 60]
    stopped = df[df["stopped_early"] == "generalised"]
    assert len(stopped) >= 1 and (stopped["total_steps"] < 400).all()
    for i in range(4):
        cfg = sweep.member(i).config
        ref = train(cfg.with_overrides({"train.steps": int(df.loc[i, "total_steps"])}), progress=False)
        got = sweep.run(i).model().state_dict()
        for k, v in ref.model.state_dict().items():
            torch.testing.assert_close(got[k], v, rtol=1e-4, atol=1e-5)


SETS = {
    "task.n_bits": "8",
    "task.n_train": "60",
    "task.n_test": "100",
    "model.d_mlp": "16",
    "train.steps": "1500",
    "train.eval_every": "10",
    "train.resume_every": "100",
    "train.checkpoint_every": "500",
}
GRID = ["weight_decay=0.1,1", "lr=0.003,0.01"]


@pytest.mark.integration
def test_sweep_resume_after_kill(tmp_path):
    """kill -9 in the middle of a sweep, resume it: the same members, metrics and weights as a
    sweep that was never interrupted."""
    args = [
        "sweep",
        "parity",
        *[a for g in GRID for a in ("--grid", g)],
        "--seeds",
        "2",
        *[a for k, v in SETS.items() for a in ("--set", f"{k}={v}")],
        "--max-batch",
        "5",
        "--quiet",
    ]
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mechgrok.cli", *args, "--out", str(killed)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 240
    state = killed / SWEEP_FILES["state"]
    while time.time() < deadline and proc.poll() is None:
        metas = list(state.glob("*.json")) if state.exists() else []
        if metas and min(json.loads(metas[0].read_text())["steps"]) >= 200:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"the sweep finished or failed before it was killed: {proc.stderr.read()}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    sweep = Sweep.open(killed)
    assert len(sweep.finished()) < len(sweep)
    out = _cli("sweep", "--resume", str(killed), "--quiet")
    assert "8 of 8 models finished" in out.stdout
    spec = SweepSpec.from_cli(preset("parity").with_overrides(SETS), GRID, seeds=2)
    a = run_sweep(spec, tmp_path / "full", engine=EngineConfig(max_batch=5), progress=False)
    b = Sweep.open(killed)
    assert b.spec == a.spec
    for i in range(len(a)):
        ra, rb = a.run(i), b.run(i)
        assert ra.steps == rb.steps
        ma, mb = ra.metrics(), rb.metrics()
        assert list(ma["step"]) == list(mb["step"])  # no gap or repeat at the resume point
        np.testing.assert_allclose(ma["train_loss"], mb["train_loss"], rtol=1e-4, atol=1e-6)
        for k, v in ra.checkpoint(1500).items():
            torch.testing.assert_close(rb.checkpoint(1500)[k], v, rtol=1e-4, atol=1e-5)
    assert list(a.results()["phase"]) == list(b.results()["phase"])


def test_sweep_cli(tmp_path):
    args = [
        "sweep",
        "parity",
        "--grid",
        "weight_decay=log:0.1:1:2",
        "--seeds",
        "2",
        "--set",
        "task.n_bits=8",
        "--set",
        "task.n_train=60",
        "--set",
        "task.n_test=60",
        "--set",
        "model.d_mlp=8",
        "--set",
        "train.steps=30",
        "--log-every",
        "10",
        "--out",
        str(tmp_path / "s"),
        "--quiet",
    ]
    out = _cli(*args)
    assert "4 of 4 models finished" in out.stdout and "phases:" in out.stdout
    assert (tmp_path / "s" / SWEEP_FILES["results"]).exists()
    assert Run.open(tmp_path / "s" / "members" / "m00003").config.train.seed == 1


def test_sweep_cli_errors_are_one_line(tmp_path, capsys):
    from mechgrok.cli import main

    spec = SweepSpec.from_cli(
        preset("parity").with_overrides({"task.n_bits": 8, "task.n_train": 20, "task.n_test": 20, "train.steps": 2}),
        ["weight_decay=0.1"],
    )
    run_sweep(spec, tmp_path / "s", progress=False)
    for bad, message in [
        (["sweep", "parity", "--grid", "bogus=1"], "bogus"),
        (["sweep", "parity", "--grid", "weight_decay=log:0:1:3"], "positive bounds"),
        (["sweep", "--resume", str(tmp_path / "missing")], "no sweep to resume"),
        (["sweep", "--resume", str(tmp_path / "s"), "--grid", "lr=1"], "--resume: takes no preset"),
        (["sweep", "parity", "--engine", "warp"], "engine"),
        (["sweep", "parity", "--max-batch", "0"], "engine.max_batch"),
        (["sweep", "parity", "--set", "model.d_mlp=4", "--out", str(tmp_path / "s")], "holds a different sweep"),
        (["sweep", "parity", "--backend", "spark"], "backend"),
    ]:
        with pytest.raises(SystemExit) as exc:
            main(bad)
        assert exc.value.code == 2, bad
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], (bad, lines)


def test_ray_backend_does_not_import_the_sweep_store():
    # the sweep store drives the Ray backend; the task body comes in as an argument, so the
    # backend reaches back into the store nowhere (not even lazily inside a function)
    import ast
    from pathlib import Path

    import mechgrok.sweep.ray_backend as ray_backend
    from mechgrok.sweep.store import train_chunk_task

    tree = ast.parse(Path(ray_backend.__file__).read_text())
    # (level, module): "from .store import" is (1, "store"); mechgrok.store is (2, "store")
    imported = {(node.level, node.module) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert (1, "store") not in imported and (0, "mechgrok.sweep.store") not in imported, imported
    assert train_chunk_task.__module__ == "mechgrok.sweep.store"  # module level: Ray ships it by reference

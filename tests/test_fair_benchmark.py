"""benchmarks/fair_time_to_grok.py on a tiny grid: every member trained, best per seed, the JSON record."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "fair_time_to_grok.py"
TINY = [
    "--set", "task.p=7", "--set", "model.d_model=16", "--set", "model.d_mlp=16", "--set", "task.train_fraction=0.6",
    "--seeds", "0", "1", "--max-steps", "300", "--lrs", "3e-2", "--wds", "0", "1", "--warmups", "0",
]  # fmt: skip


@pytest.mark.integration
def test_tiny_grid_records_every_member_and_the_given_preset(tmp_path):
    out = tmp_path / "fair.json"
    cmd = [sys.executable, str(SCRIPT), "modadd-mlp24", *TINY, "--methods", "plain", "orthograd"]
    res = subprocess.run(
        [*cmd, "--preset-steps", "250", "?", "--json", str(out)], capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stderr
    record = json.loads(out.read_text())
    assert record["preset"] == {"0": 250, "1": None}
    for method in ("plain", "orthograd"):
        members = record["methods"][method]
        assert len(members) == 2 * 2  # seeds x grid points
        assert {(m["seed"], m["wd"]) for m in members} == {(s, w) for s in (0, 1) for w in (0.0, 1.0)}
        for m in members:
            assert m["steps"] is None or 0 < m["steps"] <= 300
    assert "preset plain (given): [250, None]" in res.stdout
    assert "vs tuned" in res.stdout


def test_preset_steps_need_one_value_per_seed():
    res = subprocess.run(
        [sys.executable, str(SCRIPT), "modadd-mlp24", *TINY, "--preset-steps", "100"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode != 0
    assert res.stderr.strip().splitlines()[-1] == "error: --preset-steps needs one value per seed (2), got 1"


def test_held_step_ignores_a_transient_crossing():
    import importlib.util

    spec = importlib.util.spec_from_file_location("fair", SCRIPT)
    fair = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fair)
    nan = float("nan")
    metrics = {
        "step": [0, 5, 10, 20, 30, 40, 50, 60, 70],
        "train_acc": [0.1, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
        "test_acc": [0.0, nan, 0.995, 0.5, 0.99, 0.999, 1.0, 0.998, 1.0],
    }
    assert fair.held_step(metrics, hold=0) == 10  # the first crossing
    assert fair.held_step(metrics, hold=20) == 30  # 10 falls back at 20; 30..50 holds
    assert fair.held_step(metrics, hold=40) == 30
    assert fair.held_step(metrics, hold=41) is None  # the run ends before 30 + 41
    metrics["train_acc"][6] = 0.98  # train accuracy must hold too
    assert fair.held_step(metrics, hold=20) is None
    assert fair.held_step(metrics, hold=10) == 30  # 30..40 held before 50 fell back

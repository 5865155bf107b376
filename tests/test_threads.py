"""Intra-op thread count: chosen from the work size, overridable, applied while
training / analysing / sweeping, and the caller's count restored afterwards."""

import dataclasses
import importlib

import pytest
import torch

from mechgrok import ModelConfig, OptimConfig, RunConfig, TaskConfig, TrainConfig, train
from mechgrok._threads import (
    ENV_VAR,
    MACS_PER_EXTRA_THREAD,
    auto_threads,
    intra_op_threads,
    threads_for,
    with_threads,
    work_per_step,
)
from mechgrok.cli import main
from mechgrok.config import ConfigError
from mechgrok.presets import PRESETS, preset

train_mod = importlib.import_module("mechgrok.train")  # the package's `train` name is the function


@pytest.fixture(autouse=True)
def _keep_thread_count(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _cfg(threads: int = 0) -> RunConfig:
    return RunConfig(
        name="threads",
        task=TaskConfig(kind="parity", n_bits=6, relevant_bits=(0, 3), n_train=30, n_test=20, seed=1),
        model=ModelConfig(kind="parity_mlp", d_mlp=8, bias=True, n_out=2),
        optim=OptimConfig(lr=1e-2, weight_decay=0.1),
        train=TrainConfig(steps=6, checkpoint_every=3, log_checkpoints=0, resume_every=3, threads=threads),
    )


def test_context_manager_sets_and_restores_the_callers_count():
    torch.set_num_threads(2)
    with intra_op_threads(1) as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError), intra_op_threads(1):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == 2  # restored on errors too
    with intra_op_threads(0) as n:  # 0: leave it alone
        assert n == 2 and torch.get_num_threads() == 2


def test_automatic_count_follows_the_work_size():
    assert auto_threads(1e6, cores=8) == 1
    assert auto_threads(MACS_PER_EXTRA_THREAD * 3.5, cores=8) == 3
    assert auto_threads(1e15, cores=8) == 8  # never more than the cores
    assert auto_threads(1e15, cores=1) == 1
    # bigger models have more work per step
    assert (
        work_per_step(preset("modadd-cossin5"))
        < work_per_step(preset("parity"))
        < work_per_step(preset("modadd-transformer"))
    )


def test_every_preset_gets_one_thread():
    """benchmarks/bench_threads.py: one thread beat torch's default on every preset (README)."""
    for name in PRESETS:
        assert threads_for(preset(name)) == 1, name


def test_override_order_and_validation(monkeypatch):
    cfg = _cfg()
    assert threads_for(cfg) == 1
    assert threads_for(_cfg(threads=3)) == 3  # train.threads
    monkeypatch.setenv(ENV_VAR, "4")
    assert threads_for(_cfg(threads=3)) == 4  # $MECHGROK_THREADS beats the config
    assert threads_for(_cfg(threads=3), 5) == 5  # an explicit argument beats both
    monkeypatch.setenv(ENV_VAR, "lots")
    with pytest.raises(ConfigError, match=ENV_VAR):
        threads_for(cfg)
    monkeypatch.delenv(ENV_VAR)
    with pytest.raises(ConfigError, match="threads"):
        threads_for(cfg, -1)
    cuda = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, device="cuda"))
    assert threads_for(cuda) == 1


@pytest.mark.parametrize("bad", [-1, 100_000])
def test_train_threads_is_validated_and_round_trips(bad):
    with pytest.raises(ConfigError, match=r"train\.threads"):
        TrainConfig(threads=bad)
    cfg = _cfg(threads=2)
    assert RunConfig.from_dict(cfg.to_dict()).train.threads == 2
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


def _record_threads_in_train(monkeypatch) -> list[int]:
    seen = []
    inner = train_mod._train

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return inner(*args, **kwargs)

    monkeypatch.setattr(train_mod, "_train", spy)
    return seen


def test_train_uses_the_chosen_count_and_restores_the_callers(monkeypatch, tmp_path):
    seen = _record_threads_in_train(monkeypatch)
    torch.set_num_threads(2)
    train(_cfg(), progress=False)  # automatic: tiny model, one thread
    assert seen == [1] and torch.get_num_threads() == 2
    torch.set_num_threads(1)
    train(_cfg(threads=2), tmp_path / "a", progress=False)  # train.threads
    assert seen[-1] == 2 and torch.get_num_threads() == 1
    train(_cfg(threads=2), progress=False, threads=3)  # the argument wins
    assert seen[-1] == 3 and torch.get_num_threads() == 1
    # the same weights whatever the thread count (only speed may differ)
    a = train(_cfg(), progress=False, threads=1).model.state_dict()
    b = train(_cfg(), progress=False, threads=2).model.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)


def test_bad_threads_argument_creates_nothing(tmp_path):
    with pytest.raises(ConfigError, match="threads"):
        train(_cfg(), tmp_path / "r", progress=False, threads=-2)
    assert not (tmp_path / "r").exists()


def test_analysis_runs_under_the_runs_count(monkeypatch, tmp_path):
    import mechgrok.analysis as analysis_mod
    from mechgrok.analysis import analyze

    run_dir = tmp_path / "r"
    train(_cfg(), run_dir, progress=False)
    seen = []
    inner = analysis_mod.bit_dependence
    monkeypatch.setattr(
        analysis_mod, "bit_dependence", lambda *a, **k: seen.append(torch.get_num_threads()) or inner(*a, **k)
    )
    torch.set_num_threads(2)
    analyze(run_dir, save=False)
    assert seen == [1] and torch.get_num_threads() == 2
    analyze(run_dir, save=False, threads=2)
    assert seen[-1] == 2 and torch.get_num_threads() == 2


def test_with_threads_without_a_config_uses_one_thread(tmp_path):
    @with_threads
    def f(path):
        return torch.get_num_threads()

    torch.set_num_threads(2)
    assert f(tmp_path / "not-a-run") == 1 and f(tmp_path, threads=2) == 2
    assert torch.get_num_threads() == 2


def test_cli_threads(monkeypatch, tmp_path, capsys):
    seen = _record_threads_in_train(monkeypatch)
    args = [
        "train",
        "parity",
        "--set",
        "train.steps=3",
        "--set",
        "task.n_train=20",
        "--set",
        "task.n_test=10",
        "--set",
        "train.checkpoint_every=3",
        "--set",
        "train.log_checkpoints=0",
        "--quiet",
    ]
    main([*args, "--out", str(tmp_path / "a"), "--threads", "2"])
    assert seen == [2]
    with pytest.raises(SystemExit) as e:
        main([*args, "--out", str(tmp_path / "b"), "--threads", "-1"])
    assert e.value.code == 2 and "threads" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_cli_sweep_threads_are_its_workers(monkeypatch, tmp_path):
    """`sweep --threads T`: T chunk workers (the engine gives each one intra-op thread)."""
    import mechgrok.sweep as sweep_pkg

    got = {}

    def fake_run_sweep(spec, folder, *, engine, **kw):
        got.update(workers=engine.workers, threads=torch.get_num_threads())
        raise SystemExit(0)

    monkeypatch.setattr(sweep_pkg, "run_sweep", fake_run_sweep)
    torch.set_num_threads(2)
    for extra, workers, threads in (
        [["--threads", "3"], 3, 3],
        [["--threads", "2", "--workers", "1"], 1, 2],
        [[], 0, 1],
    ):
        with pytest.raises(SystemExit):
            main(
                [
                    "sweep",
                    "parity",
                    "--grid",
                    "optim.weight_decay=0.1,1",
                    "--out",
                    str(tmp_path / "s"),
                    "--quiet",
                    *extra,
                ]
            )
        assert got == {"workers": workers, "threads": threads}, extra
        assert torch.get_num_threads() == 2


@pytest.mark.integration
def test_tiny_training_beside_a_busy_process_is_not_slowed_by_extra_threads():
    """The issue's case: the parity preset beside a process keeping every core busy. With torch's
    one thread per core it ran ~90x slower; the automatic count (1) must beat it."""
    import subprocess
    import sys
    import time

    from mechgrok._threads import available_cores

    cores = available_cores()
    if cores < 2:
        pytest.skip("one usable core: the automatic and the default count are the same")
    busy = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import torch\ntorch.set_num_threads({cores})\na = torch.randn(384, 384)\n"
            "while True:\n    a = (a @ a).tanh()\n",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        cfg = preset("parity").with_overrides(
            {
                "train.steps": "30",
                "train.log_checkpoints": "0",
                "train.checkpoint_every": "30",
                "train.eval_every": "30",
            }
        )
        seconds = {}
        for name, threads in (("auto", None), ("all cores", cores)):
            t = time.perf_counter()
            train(cfg, progress=False, threads=threads)
            seconds[name] = time.perf_counter() - t
    finally:
        busy.kill()
        busy.wait()
    assert seconds["auto"] < seconds["all cores"], seconds


def test_cli_analyze_report_and_demo_pass_threads_on(monkeypatch, tmp_path):
    import os

    import mechgrok.demo as demo_mod
    import mechgrok.report as report_mod

    analysis_mod = importlib.import_module("mechgrok.analysis")
    run_dir = tmp_path / "r"
    train(_cfg(), run_dir, progress=False)
    seen = {}
    inner = analysis_mod.bit_dependence

    def spy(*a, **k):
        seen["analyze"] = torch.get_num_threads()
        return inner(*a, **k)

    monkeypatch.setattr(analysis_mod, "bit_dependence", spy)
    torch.set_num_threads(1)
    main(["analyze", str(run_dir), "--threads", "2", "--quiet"])
    assert seen["analyze"] == 2 and torch.get_num_threads() == 1

    def fake_report(path, out=None, **kw):
        seen["report"] = kw.get("threads")
        raise SystemExit(0)

    monkeypatch.setattr(report_mod, "write_run_report", fake_report)
    with pytest.raises(SystemExit):
        main(["report", str(run_dir), "--threads", "3"])
    assert seen["report"] == 3

    def fake_demo(*a, **kw):
        seen["demo"] = os.environ.get(ENV_VAR)
        return []

    monkeypatch.setattr(demo_mod, "run_demo", fake_demo)
    main(["demo", "--out", str(tmp_path / "d"), "--threads", "2", "--quiet"])
    assert seen["demo"] == "2" and ENV_VAR not in os.environ  # the spawned trainer sees it; restored after

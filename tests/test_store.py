import json
import os
import signal
import subprocess
import sys
import time
import warnings

import pytest
import torch
from safetensors.torch import load_file

from mechgrok import CheckpointError, Run, StoreError, train
from mechgrok.store import FILES, RunLock

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _cli(*args, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "mechgrok.cli", *args], capture_output=True, text=True, env=ENV, timeout=300
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_run_folder_contents(tiny_modadd, tmp_path):
    res = train(tiny_modadd, tmp_path / "r", progress=False)
    run = Run.open(tmp_path / "r")
    record = json.loads((run.path / FILES["config"]).read_text())
    assert record["seed"] == tiny_modadd.train.seed and "torch" in record["versions"]
    assert run.config == tiny_modadd
    assert run.steps == tiny_modadd.train.checkpoint_steps()
    m = run.metrics()
    assert list(m["step"]) == list(range(61))
    assert set(m) >= {"train_loss", "train_acc", "test_loss", "test_acc", "weight_norm", "lr", "weight_decay"}
    final = run.checkpoint(60)
    for k, v in res.model.state_dict().items():
        assert torch.equal(final[k], v)
    traj = run.trajectory()
    assert traj.params["embed.W_E"].shape == (len(run.steps), 7, 16)
    assert torch.equal(traj.steps, torch.tensor(run.steps))
    rng = torch.get_rng_state()
    live = run.model(20)
    traj.model(0)
    assert torch.equal(torch.get_rng_state(), rng)  # loading leaves the caller's RNG alone
    assert torch.equal(live.embed.W_E, run.checkpoint(20)["embed.W_E"])
    assert torch.equal(traj.model(traj.index_of(20)).embed.W_E, live.embed.W_E)
    assert run.summary()["steps"] == 60
    # nothing is pickled anywhere
    for path in run.path.rglob("*"):
        if path.is_file():
            assert not path.read_bytes().startswith(b"\x80"), path


def test_refuses_to_overwrite_and_second_writer(tiny_modadd, tmp_path):
    train(tiny_modadd, tmp_path / "r", progress=False)
    with pytest.raises(StoreError, match="already holds a run"):
        train(tiny_modadd, tmp_path / "r", progress=False)
    with RunLock(tmp_path / "r"), pytest.raises(StoreError, match="in use by another process"):
        train(None, tmp_path / "r", resume=True, progress=False)
    # the lock is free again once released
    train(None, tmp_path / "r", resume=True, progress=False)


def test_corrupted_checkpoint_names_the_file(tiny_modadd, tmp_path):
    train(tiny_modadd, tmp_path / "r", progress=False)
    run = Run.open(tmp_path / "r")
    bad = run.checkpoint_path(20)
    bad.write_bytes(bad.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="step_00000020.safetensors"):
        run.checkpoint(20)
    assert run.checkpoint(40)["embed.W_E"].shape == (7, 16)  # the others still load
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        traj = run.trajectory()
    assert 20 not in traj.steps.tolist() and len(traj) == len(run.steps) - 1
    assert any("step_00000020" in str(w.message) for w in caught)
    with pytest.raises(CheckpointError):
        run.trajectory(errors="raise")
    with pytest.raises(StoreError, match="not a mechgrok run folder"):
        Run.open(tmp_path)


@pytest.mark.integration
def test_resume_after_kill_gives_identical_final_weights(tiny_modadd, tmp_path):
    cfg = tiny_modadd.with_overrides(
        {
            "train.steps": 1000,
            "train.resume_every": 50,
            "optim.batch_size": 8,
            "optim.grokfast_lambda": 1.0,
            "train.eval_every": 10,
        }
    )
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(cfg.to_json())
    _cli("train", "--config", str(cfg_file), "--out", str(tmp_path / "full"), "--quiet")

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mechgrok.cli", "train", "--config", str(cfg_file), "--out", str(killed), "--quiet"],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    resume_state = killed / FILES["resume"]
    while time.time() < deadline:
        if resume_state.exists() and Run(killed, cfg).resume_step() >= 200:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / FILES["summary"]).exists(), "the run finished before it was killed"
    # a second trainer on the folder is fine now: the kernel released the dead process's lock
    out = _cli("train", "--resume", str(killed), "--quiet")
    assert "resumed from step" in out.stdout

    a, b = Run.open(tmp_path / "full"), Run.open(killed)
    wa, wb = load_file(a.checkpoint_path(1000)), load_file(b.checkpoint_path(1000))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    ma, mb = a.metrics(), b.metrics()
    assert list(ma["step"]) == list(mb["step"])
    assert (ma["train_loss"] == mb["train_loss"]).all()
    assert a.steps == b.steps


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    from mechgrok.cli import main

    out = ["--out", str(tmp_path / "x")]
    cases = [
        (["train", "no-such-preset", *out], "unknown preset"),
        (["train", "parity", "--set", "optim.lr=-1", *out], "optim.lr"),
        (["train", "parity", "--set", "task.relevant_bits=0,30", *out], "task.relevant_bits"),
        (["train", "parity", "--set", "optim.wd_schedule=100:0.1,50:0", *out], "optim.wd_schedule"),
        (["train", "parity", "--set", "bogus=1", *out], "bogus"),
        (["train", "parity", "--sett", "x"], "--sett"),
        (["train", "--resume", str(tmp_path / "missing")], "no such run folder"),
    ]
    for args, needle in cases:
        with pytest.raises(SystemExit) as exit_:
            main(args)
        assert exit_.value.code == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and needle in err[0], (args, err)
    assert not (tmp_path / "x").exists()  # nothing was started
    # and as a real process: exit status 2, one line, no traceback
    proc = _cli("train", "modadd-mlp24", "--set", "task.p=1", *out, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "task.p" in proc.stderr, proc.stderr
    assert not (tmp_path / "x").exists()

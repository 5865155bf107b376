"""Faults of run and sweep folders: a crash at every write boundary, kills, races, damaged and
crafted files. Each test names the fault it keeps fixed."""

import contextlib
import json
import os
import struct
import subprocess
import sys
import textwrap
import threading
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from mechgrok import CheckpointError, ConfigError, Run, StoreError, store, train
from mechgrok.store import FILES, metrics_line

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# ----------------------------------------------------------------------------------------------
# crash injection at every write boundary


class _Crash(BaseException):
    """Stands in for a kill: not an Exception, so nothing on the way up may swallow it."""


class _Injector:
    """Counts the store's write boundaries (every atomic write and every metrics append) and
    crashes at the ``n``-th: ``early`` before the write lands (an atomic write leaves its
    temporary file, an append writes nothing), ``late`` just after it, ``torn`` after half of
    the text of an append (counting appends only: for an atomic write it would be ``early``)."""

    def __init__(self, monkeypatch, n: int, mode: str):
        self.n, self.mode, self.count = n, mode, 0
        atomic, append = store.atomic_write_bytes, store.append_text

        def atomic_write_bytes(path, data):
            if self.mode != "torn" and self._hit():
                if self.mode == "late":
                    atomic(path, data)
                else:  # the temporary file is written, the rename never happens
                    path = store.Path(path)
                    (path.parent / f".{path.name}.crash.tmp").write_bytes(data)
                raise _Crash(f"atomic write #{self.n} {path}")
            atomic(path, data)

        def append_text(path, text):
            if self._hit():
                if self.mode == "late":
                    append(path, text)
                elif self.mode == "torn":
                    append(path, text[: len(text) // 2])
                raise _Crash(f"append #{self.n} {path}")
            append(path, text)

        monkeypatch.setattr(store, "atomic_write_bytes", atomic_write_bytes)
        monkeypatch.setattr(store, "append_text", append_text)

    def _hit(self) -> bool:
        self.count += 1
        return self.count == self.n


@pytest.fixture
def no_fsync(monkeypatch):
    """fsync only matters for power loss, not for a crash of the process: these loops do
    hundreds of runs, and on a shared disk the fsyncs would dominate their time."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)


@pytest.fixture
def crash_cfg(tiny_modadd):
    # minibatches + Grokfast: the resume state must carry the generator and the EMA exactly
    return tiny_modadd.with_overrides(
        {
            "train.steps": 40,
            "train.checkpoint_every": 10,
            "train.log_checkpoints": 2,
            "train.resume_every": 15,
            "train.eval_every": 5,
            "optim.batch_size": 8,
            "optim.grokfast_lambda": 1.0,
        }
    )


def _final_state(path):
    """Everything a finished run folder commits to, in comparable form."""
    run = Run.open(path)
    ckpts = {s: load_file(run.checkpoint_path(s)) for s in run.steps}
    step, resume, meta = run.read_resume()
    summary = {k: v for k, v in run.summary().items() if k not in ("seconds", "steps_per_second", "resumed_from")}
    lines = [metrics_line(r) for r in run.metrics_rows()]
    leftovers = sorted(p.name for p in [*path.glob(".*.tmp"), *(path / FILES["checkpoints"]).glob(".*.tmp")])
    return {
        "steps": run.steps,
        "ckpts": ckpts,
        "resume": (step, resume),
        "meta": meta,
        "summary": summary,
        "metrics": lines,
        "tmp": leftovers,
        "legacy_meta": (path / FILES["resume_meta"]).exists(),
    }


def _assert_same(a, b, where):
    assert a["steps"] == b["steps"], where
    for s in a["steps"]:
        assert a["ckpts"][s].keys() == b["ckpts"][s].keys(), where
        for k in a["ckpts"][s]:
            assert torch.equal(a["ckpts"][s][k], b["ckpts"][s][k]), (where, s, k)
    assert a["resume"][0] == b["resume"][0], where
    assert a["resume"][1].keys() == b["resume"][1].keys(), where
    for k in a["resume"][1]:
        assert torch.equal(a["resume"][1][k], b["resume"][1][k]), (where, k)
    assert a["meta"] == b["meta"], where
    assert a["metrics"] == b["metrics"], where
    assert a["summary"] == b["summary"], where
    assert b["tmp"] == [] and not b["legacy_meta"], where


def _continue(cfg, out):
    """What a user does after a crash: resume if the folder holds a run, else start it again."""
    if (out / FILES["config"]).exists():
        return train(None, out, resume=True, progress=False)
    return train(cfg, out, progress=False)


def test_crash_at_every_write_boundary_resumes_bitwise(crash_cfg, tmp_path, monkeypatch, no_fsync):
    train(crash_cfg, tmp_path / "ref", progress=False)
    ref = _final_state(tmp_path / "ref")
    crashes = 0
    for mode in ("early", "late", "torn"):
        n = 0
        while True:
            n += 1
            out = tmp_path / f"{mode}{n}"
            with monkeypatch.context() as mp:
                _Injector(mp, n, mode)
                try:
                    train(crash_cfg, out, progress=False)
                except _Crash:
                    crashes += 1
                else:
                    break  # n is past the last write boundary
            # the resume itself crashes at its n-th write too, then a clean resume finishes
            with monkeypatch.context() as mp:
                _Injector(mp, n, mode)
                try:
                    _continue(crash_cfg, out)
                except _Crash:
                    crashes += 1
            _continue(crash_cfg, out)
            _assert_same(ref, _final_state(out), (mode, n))
        assert n > (5 if mode == "torn" else 20), f"only {n - 1} write boundaries seen"
    assert crashes > 50


def test_old_two_file_resume_state_still_resumes(tiny_modadd, tmp_path):
    cfg = tiny_modadd.with_overrides({"optim.batch_size": 8})
    train(cfg, tmp_path / "ref", progress=False)
    out = tmp_path / "old"
    train(cfg.with_overrides({"train.steps": 25}), out, progress=False)  # resume state at step 25
    run = Run.open(tmp_path / "ref")
    # rewrite the folder as the previous format: plain tensors + resume.json, full config
    step, tensors, meta = Run.open(out).read_resume()
    save_file(tensors, str(out / FILES["resume"]))
    (out / FILES["resume_meta"]).write_text(json.dumps(meta))
    record = json.loads((out / FILES["config"]).read_text())
    record["config"] = cfg.to_dict()
    (out / FILES["config"]).write_text(json.dumps(record))
    (out / FILES["summary"]).unlink()
    train(None, out, resume=True, progress=False)
    a, b = load_file(run.checkpoint_path(60)), load_file(Run.open(out).checkpoint_path(60))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (out / FILES["resume_meta"]).exists()  # replaced by the one-file format


def test_resume_state_is_one_file_with_its_step(tiny_modadd, tmp_path):
    train(tiny_modadd, tmp_path / "r", progress=False)
    run = Run.open(tmp_path / "r")
    assert not (run.path / FILES["resume_meta"]).exists()
    assert run.resume_step() == 60
    # a stale resume.json beside a new-format file is ignored: the file's own metadata wins
    (run.path / FILES["resume_meta"]).write_text(json.dumps({"step": 25, "param_groups": []}))
    assert run.read_resume()[0] == 60


# ----------------------------------------------------------------------------------------------
# kill -9 at random times


@pytest.mark.integration
def test_random_kills_then_resume_bitwise(tiny_modadd, tmp_path):
    """>= 20 kill -9 of a real `mechgrok train` (forked from one warm process so that each start
    costs no import time), each followed by a resume, then bitwise-equal final weights."""
    cfg = tiny_modadd.with_overrides(
        {
            "train.steps": 80,
            "train.checkpoint_every": 9,
            "train.resume_every": 4,
            "optim.batch_size": 8,
            "optim.grokfast_lambda": 1.0,
            "train.eval_every": 4,
        }
    )
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(cfg.to_json())
    script = textwrap.dedent(f"""
        import os, random, signal, sys, time
        import torch
        torch.set_num_threads(1)
        from mechgrok.cli import main
        from mechgrok.store import FILES
        out, cfg = {str(tmp_path / "killed")!r}, {str(cfg_file)!r}
        args = lambda: (["train", "--resume", out] if os.path.exists(os.path.join(out, FILES["config"]))
                        else ["train", "--config", cfg, "--out", out]) + ["--quiet"]

        def start():
            pid = os.fork()
            if pid == 0:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 1); os.dup2(devnull, 2)
                try:
                    main(args())
                except SystemExit as e:
                    os._exit(e.code or 0)
                os._exit(0)
            return pid

        t0 = time.perf_counter()
        pid = start(); os.waitpid(pid, 0)  # time one whole run in a fresh folder ...
        full = time.perf_counter() - t0
        import shutil; shutil.rmtree(out)
        rng = random.Random(0)
        kills = 0
        while kills < 21:  # ... then kill runs at random points of that span
            pid = start()
            time.sleep(rng.uniform(0, full * 0.5))
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            kills += os.WIFSIGNALED(status)
        pid = start(); _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
        print(kills, full, time.perf_counter() - t0)
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    kills = int(proc.stdout.split()[0])
    assert kills >= 20, proc.stdout
    print("kills, seconds of one run, seconds in all:", proc.stdout)
    train(cfg, tmp_path / "ref", progress=False)
    ref, got = _final_state(tmp_path / "ref"), _final_state(tmp_path / "killed")
    _assert_same(ref, got, "random kills")


# ----------------------------------------------------------------------------------------------
# races and dead folders


def test_two_creators_at_once_leave_one_consistent_config(tiny_modadd, tmp_path, monkeypatch):
    """Both creators pass the 'no config yet' point together (a barrier holds the first inside
    the write); only one may write its config, the other gets a one-line StoreError."""
    barrier = threading.Barrier(2, timeout=2)
    versions = store.library_versions

    def slow_versions():
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait()
        return versions()

    monkeypatch.setattr(store, "library_versions", slow_versions)
    out = tmp_path / "r"
    results: dict[int, object] = {}

    def create(seed):
        try:
            results[seed] = Run.create(out, tiny_modadd.with_overrides({"train.seed": seed}))
        except StoreError as e:
            results[seed] = e

    threads = [threading.Thread(target=create, args=(s,)) for s in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [s for s, r in results.items() if isinstance(r, Run)]
    assert len(winners) == 1, results
    loser = ({1, 2} - set(winners)).pop()
    assert "in use by another process" in str(results[loser]) or "already holds a run" in str(results[loser])
    assert json.loads((out / FILES["config"]).read_text())["seed"] == winners[0]


@pytest.mark.integration
def test_two_trainers_started_at_once_on_a_new_folder(tiny_modadd, tmp_path):
    """Two real `mechgrok train` processes, other seeds, same new --out: one trains, the other
    ends with one line; the stored config's seed is the one the weights were trained with."""
    out = tmp_path / "r"
    files = []
    for seed in (1, 2):
        f = tmp_path / f"cfg{seed}.json"
        f.write_text(tiny_modadd.with_overrides({"train.seed": seed, "train.steps": 200}).to_json())
        files.append(f)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "mechgrok.cli", "train", "--config", str(f), "--out", str(out), "--quiet"],
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for f in files
    ]
    results = [(p.wait(timeout=240), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    err = next(e for code, e in results if code == 2).strip().splitlines()
    assert len(err) == 1 and ("in use by another process" in err[0] or "already holds a run" in err[0]), err
    run = Run.open(out)
    ref = train(run.config, None, progress=False)
    assert run.config.train.seed in (1, 2)
    final = run.checkpoint(200)
    assert all(torch.equal(final[k], v) for k, v in ref.model.state_dict().items())


def test_two_sweeps_created_at_once(tmp_path, tiny_parity, monkeypatch):
    from mechgrok.sweep import EngineConfig, SweepSpec
    from mechgrok.sweep import store as sweep_store
    from mechgrok.sweep.store import Sweep

    barrier = threading.Barrier(2, timeout=2)
    versions = sweep_store.library_versions

    def slow_versions():
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait()
        return versions()

    monkeypatch.setattr(sweep_store, "library_versions", slow_versions)
    out = tmp_path / "s"
    results = {}

    def create(seed):
        spec = SweepSpec(tiny_parity.with_overrides({"train.seed": seed}), grid=(("optim.lr", (1e-2,)),))
        try:
            results[seed] = Sweep.create(out, spec, EngineConfig())
        except StoreError as e:
            results[seed] = e

    threads = [threading.Thread(target=create, args=(s,)) for s in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [s for s, r in results.items() if isinstance(r, Sweep)]
    assert len(winners) == 1, results
    assert Sweep.open(out).spec.base.train.seed == winners[0]


def test_bad_device_creates_nothing(tiny_modadd, tmp_path):
    for device in ("tpu", "cuda:banana") + (() if torch.cuda.is_available() else ("cuda",)):
        with pytest.raises(ConfigError, match="train.device"):
            train(tiny_modadd.with_overrides({"train.device": device}), tmp_path / "r", progress=False)
        assert not (tmp_path / "r").exists(), device


def test_model_that_cannot_be_built_creates_nothing(tiny_modadd, tmp_path, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("not enough memory")

    monkeypatch.setattr(sys.modules["mechgrok.train"], "build_model", broken)
    with pytest.raises(RuntimeError):
        train(tiny_modadd, tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()


def test_resume_without_resume_state_restarts_from_zero(tiny_modadd, tmp_path, monkeypatch):
    ref = train(tiny_modadd, tmp_path / "ref", progress=False)
    out = tmp_path / "r"
    # killed after the config, a few checkpoints and metrics rows, before the first resume state
    with monkeypatch.context() as mp:

        def crash(*a, **k):
            raise _Crash

        mp.setattr(Run, "write_resume", crash)
        with pytest.raises(_Crash):
            train(tiny_modadd, out, progress=False)
    assert not Run.open(out).has_resume() and Run.open(out).steps
    res = train(None, out, resume=True, progress=False)
    assert res.summary["resumed_from"] is None
    _assert_same(_final_state(tmp_path / "ref"), _final_state(out), "restart")
    assert ref.summary["final_test_acc"] == res.summary["final_test_acc"]


# ----------------------------------------------------------------------------------------------
# metrics.jsonl


def _write_lines(path, lines, end="\n"):
    path.write_text("\n".join(lines) + end)


def test_damaged_metrics_line_is_reported_and_the_rest_kept(tiny_modadd, tmp_path):
    train(tiny_modadd, tmp_path / "r", progress=False)
    run = Run.open(tmp_path / "r")
    path = run.path / FILES["metrics"]
    lines = path.read_text().splitlines()
    lines[10] = lines[10][:17] + "#garbage"
    lines[20] = "[1, 2]"
    _write_lines(path, lines)
    with pytest.warns(UserWarning) as caught:
        rows = run.metrics_rows()
    messages = [str(w.message) for w in caught]
    assert any(f"{path}:11:" in m for m in messages) and any(f"{path}:21:" in m for m in messages), messages
    assert [r["step"] for r in rows] == [s for s in range(61) if s not in (10, 20)]
    # a torn last line (a kill during an append) is silent
    _write_lines(path, lines[:10] + lines[11:20] + lines[21:] + ['{"step": 61, "train_lo'], end="")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [r["step"] for r in run.metrics_rows()][-1] == 60
        # a whole last row that only lacks its newline is kept
        _write_lines(path, lines[:10] + lines[11:20] + lines[21:], end="")
        assert [r["step"] for r in run.metrics_rows()][-1] == 60


def test_resume_keeps_rows_after_a_damaged_line(tiny_modadd, tmp_path):
    cfg = tiny_modadd.with_overrides({"train.steps": 30, "train.resume_every": 25})
    train(cfg, tmp_path / "r", progress=False)
    run = Run.open(tmp_path / "r")
    path = run.path / FILES["metrics"]
    lines = path.read_text().splitlines()
    lines[3] = "not json"
    _write_lines(path, lines)
    (run.path / FILES["summary"]).unlink()
    with pytest.warns(UserWarning, match=r"metrics.jsonl:4:"):
        train(None, run.path, resume=True, progress=False)
    steps = [r["step"] for r in run.metrics_rows()]
    assert steps == [s for s in range(31) if s != 3]


def test_no_test_set_and_divergence_write_strict_json_and_summaries(tiny_modadd, tmp_path, capsys):
    from mechgrok.cli import main

    cfg = tiny_modadd.with_overrides({"task.train_fraction": 1.0, "train.steps": 10})
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(cfg.to_json())
    main(["train", "--config", str(cfg_file), "--out", str(tmp_path / "r"), "--quiet"])  # no traceback
    assert "test acc n/a" in capsys.readouterr().out
    run = Run.open(tmp_path / "r")
    for line in (run.path / FILES["metrics"]).read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} in metrics.jsonl"))
    assert run.summary()["final_test_acc"] is None and run.summary()["final_train_acc"] is not None
    # a diverged run: every value after the blow-up is non-finite
    bad = tiny_modadd.with_overrides({"train.steps": 10, "model.init_scale": 1e30})
    res = train(bad, tmp_path / "d", progress=False)
    text = (tmp_path / "d" / FILES["metrics"]).read_text() + (tmp_path / "d" / FILES["summary"]).read_text()
    assert "NaN" not in text and "Infinity" not in text
    json.loads((tmp_path / "d" / FILES["summary"]).read_text(), parse_constant=lambda c: pytest.fail(c))
    assert res.summary["final_train_loss"] is None or res.summary["final_train_loss"] == res.summary["final_train_loss"]
    m = Run.open(tmp_path / "d").metrics()
    assert torch.isnan(torch.tensor(m["train_loss"])).any()  # null reads back as NaN


# ----------------------------------------------------------------------------------------------
# checkpoints: checksums, lost index, temporary files, crafted files


def _flip_tensor_byte(path):
    data = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", bytes(data[:8]))
    data[8 + n + 5] ^= 0x40  # inside the first tensor's data: the header still parses
    path.write_bytes(bytes(data))


def test_flipped_bytes_raise_naming_the_file(tiny_modadd, tmp_path):
    train(tiny_modadd, tmp_path / "r", progress=False)
    run = Run.open(tmp_path / "r")
    path = run.checkpoint_path(20)
    _flip_tensor_byte(path)
    with pytest.raises(CheckpointError, match="step_00000020.safetensors.*sha256"):
        run.checkpoint(20)
    with pytest.warns(UserWarning, match="step_00000020"):
        traj = run.trajectory()
    assert 20 not in traj.steps.tolist()
    # an index written before checksums still loads (nothing to verify against)
    index = run.path / FILES["index"]
    index.write_text(json.dumps({"steps": json.loads(index.read_text())["steps"]}))
    assert run.checkpoint(40)["embed.W_E"].shape == (7, 16)


def test_lost_index_is_rebuilt_from_readable_files(tiny_modadd, tmp_path):
    cfg = tiny_modadd.with_overrides({"train.steps": 60, "train.resume_every": 25})
    train(cfg, tmp_path / "r", progress=False)
    run = Run.open(tmp_path / "r")
    steps = run.steps
    (run.path / FILES["index"]).unlink()
    run.checkpoint_path(40).write_bytes(b"\x00" * 10)  # damaged: must not be listed
    with pytest.warns(UserWarning, match="rebuilt"):
        assert Run.open(run.path).steps == [s for s in steps if s != 40]
    (run.path / FILES["summary"]).unlink()
    train(None, run.path, resume=True, progress=False)  # writes the rebuilt index back
    index = json.loads((run.path / FILES["index"]).read_text())
    assert index["steps"] == [s for s in steps if s != 40] and set(index["sha256"]) == {str(s) for s in index["steps"]}
    assert Run.open(run.path).checkpoint(20)["embed.W_E"].shape == (7, 16)


def test_temporary_files_are_removed_when_resumed(tiny_modadd, tmp_path):
    train(tiny_modadd.with_overrides({"train.steps": 30}), tmp_path / "r", progress=False)
    run = Run.open(tmp_path / "r")
    leftovers = [
        run.path / ".metrics.jsonl.abc123.tmp",
        run.path / FILES["checkpoints"] / ".step_00000030.safetensors.x.tmp",
    ]
    for p in leftovers:
        p.write_bytes(b"partial")
    train(None, run.path, resume=True, progress=False)
    assert not any(p.exists() for p in leftovers)


@pytest.mark.parametrize(
    "index",
    [
        "[1, 2]",
        '{"steps": "abc"}',
        '{"steps": [1.5]}',
        '{"steps": [-3]}',
        '{"steps": [0], "sha256": [1]}',
        '{"steps": [',
    ],
)
def test_crafted_index_is_one_line_error(tiny_modadd, tmp_path, capsys, index):
    from mechgrok.cli import main

    train(tiny_modadd.with_overrides({"train.steps": 30}), tmp_path / "r", progress=False)
    (tmp_path / "r" / FILES["index"]).write_text(index)
    with pytest.raises(StoreError, match="checkpoints.json"):
        _ = Run.open(tmp_path / "r").steps
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--resume", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and "checkpoints.json" in err[0], err


def test_crafted_resume_state_and_config_are_one_line_errors(tiny_modadd, tmp_path, capsys):
    from mechgrok.cli import main

    out = tmp_path / "r"
    train(tiny_modadd.with_overrides({"train.steps": 30}), out, progress=False)
    run = Run.open(out)
    step, tensors, meta = run.read_resume()
    good = (out / FILES["resume"]).read_bytes()
    # resume metadata without a step: in resume.safetensors, and in a legacy resume.json
    for i, (name, needle) in enumerate([("resume.safetensors", "step"), ("resume.json", "step")]):
        if i == 0:
            save_file(
                tensors, str(out / FILES["resume"]), metadata={"mechgrok_resume": json.dumps({"param_groups": []})}
            )
            (out / FILES["resume_meta"]).unlink(missing_ok=True)
        else:
            save_file(tensors, str(out / FILES["resume"]))
            (out / FILES["resume_meta"]).write_text(json.dumps({"param_groups": meta["param_groups"]}))
        with pytest.raises(SystemExit) as exit_:
            main(["train", "--resume", str(out), "--quiet"])
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_.value.code == 2 and len(err) == 1 and name in err[0] and needle in err[0], err
    (out / FILES["resume_meta"]).unlink()
    (out / FILES["resume"]).write_bytes(good)
    # a config whose d_mlp does not match the checkpoints
    record = json.loads((out / FILES["config"]).read_text())
    record["config"]["model"]["d_mlp"] = 9
    (out / FILES["config"]).write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match=r"step_00000020.safetensors.*shape"):
        Run.open(out).model(20)
    with pytest.raises(CheckpointError, match=r"step_00000000.safetensors.*shape"):
        Run.open(out).trajectory(errors="skip")  # an edited config is not a damaged file to skip
    with pytest.raises(SystemExit) as exit_:
        main(["analyze", str(out), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and str(out) in err[0], err  # one line, no traceback
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--resume", str(out), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and "resume.safetensors" in err[0] and "shape" in err[0], err
    assert (out / FILES["summary"]).exists()  # nothing already written was lost


def test_metrics_flush_size_is_named():
    import inspect

    metrics_module = sys.modules["mechgrok.metrics"]
    assert store.METRICS_FLUSH_ROWS >= 1
    assert "500" not in inspect.getsource(metrics_module.MetricsBuffer)


def _sweep_state(path):
    from mechgrok.sweep.store import SWEEP_FILES, Sweep

    sweep = Sweep.open(path)
    members = [_final_state(sweep.member_path(i)) for i in range(len(sweep))]
    for m in members:
        for key in ("engine", "batched"):
            m["summary"].pop(key, None)
    text = (path / SWEEP_FILES["results"]).read_text().splitlines()
    seconds = text[0].split(",").index("seconds")
    results = [",".join(c for j, c in enumerate(line.split(",")) if j != seconds) for line in text]
    state = (
        sorted(p.name for p in (path / SWEEP_FILES["state"]).glob("*"))
        if (path / SWEEP_FILES["state"]).exists()
        else []
    )
    return members, results, state, sorted(p.name for p in path.glob(".*.tmp"))


def test_sweep_crash_at_every_write_boundary_resumes_bitwise(tiny_parity, tmp_path, monkeypatch, no_fsync):
    """The same for a sweep: member folders, batch resume state (members wait for a row, so
    states are taken over) and the results table."""
    from mechgrok.sweep import EngineConfig, SweepSpec, run_sweep

    base = tiny_parity.with_overrides(
        {
            "train.steps": 16,
            "train.checkpoint_every": 8,
            "train.log_checkpoints": 0,
            "train.resume_every": 5,
            "optim.batch_size": 16,
        }
    )
    spec = SweepSpec(base, grid=(("optim.lr", (1e-2, 3e-2)),))
    engine = EngineConfig(max_batch=1, writers=1, workers=1, log_every=3)
    run_sweep(spec, tmp_path / "ref", engine=engine, progress=False)
    ref = _sweep_state(tmp_path / "ref")
    assert ref[2] == [] and len(ref[0]) == 2
    for mode in ("early", "late", "torn"):
        n = 0
        while True:
            n += 1
            out = tmp_path / f"{mode}{n}"
            with monkeypatch.context() as mp:
                _Injector(mp, n, mode)
                try:
                    run_sweep(spec, out, engine=engine, progress=False)
                except _Crash:
                    pass
                except StoreError as e:  # a crash on a writer thread is reported wrapped
                    assert isinstance(e.__cause__, _Crash), e
                else:
                    break
            run_sweep(spec, out, engine=engine, progress=False)
            got = _sweep_state(out)
            for i, (a, b) in enumerate(zip(ref[0], got[0])):
                _assert_same(a, b, (mode, n, i))
            assert got[1:] == ref[1:], (mode, n)
        assert n > (3 if mode == "torn" else 20), f"only {n - 1} write boundaries seen"

"""Faults in analysis and reporting that once gave wrong results without an error:
stale stored analyses, the analysis's commit point, streamed (chunked) analysis, imported runs with
loss curves only, every parity bit relevant, diverged runs, hostile run names."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

import mechgrok.analysis as analysis_mod
from mechgrok import ModelConfig, OptimConfig, Run, RunConfig, StoreError, TaskConfig, TrainConfig, train
from mechgrok.analysis import analysis_is_current, analyze, load_analysis
from mechgrok.report import write_run_report
from mechgrok.store import Run as StoreRun


class Killed(BaseException):
    """A simulated kill: nothing in the library catches a BaseException that is not an Exception."""


def _parity(steps: int, **task) -> RunConfig:
    return RunConfig(
        name="faults-parity",
        task=TaskConfig(kind="parity", n_bits=8, relevant_bits=(1, 5), n_train=60, n_test=100, seed=3, **task),
        model=ModelConfig(kind="parity_mlp", d_mlp=16, bias=True, n_out=2),
        optim=OptimConfig(lr=1e-2, weight_decay=0.1),
        train=TrainConfig(steps=steps, checkpoint_every=20, log_checkpoints=5, resume_every=30, eval_every=1),
    )


def _report_phase(path) -> str:
    text = path.read_text()
    start = text.index('class="phase"')
    return text[text.index(">", start) + 1 : text.index("<", start)]


# -- stale analyses ---------------------------------------------------------------------------------


def test_report_recomputes_an_analysis_made_mid_training(tmp_path, monkeypatch):
    """Analysed mid-run (memorised at 60, not generalised yet), resumed, reported: the report must
    show the finished run's phase, not the stored 'memorisation, never generalised'."""
    out = tmp_path / "run"
    real = StoreRun.write_checkpoint

    def killing(self, step, state):
        if step > 80:
            raise Killed
        return real(self, step, state)

    monkeypatch.setattr(StoreRun, "write_checkpoint", killing)
    with pytest.raises(Killed):
        train(_parity(200), out, progress=False)
    monkeypatch.setattr(StoreRun, "write_checkpoint", real)
    mid = analyze(out)
    assert mid.events.phase == "memorisation" and mid.events.generalised_step is None
    assert analysis_is_current(load_analysis(out), out) == (True, "")

    train(None, out, resume=True, progress=False)
    done = train(_parity(200), None, progress=False)  # the same run uninterrupted, in memory
    from mechgrok.probes import detect_events

    truth = detect_events(done.metrics)
    assert truth.phase != "memorisation" and truth.generalised_step is not None
    current, why = analysis_is_current(load_analysis(out), out)
    assert not current and "checkpoints changed" in why
    report = write_run_report(out)
    assert _report_phase(report) == truth.phase
    fresh = load_analysis(out)
    assert fresh.events.phase == truth.phase and fresh.events.generalised_step == truth.generalised_step
    assert analysis_is_current(fresh, out)[0]
    # with --no-analyze a stale analysis is not drawn either
    (out / "metrics.jsonl").touch()
    import os

    st = (out / "metrics.jsonl").stat()
    os.utime(out / "metrics.jsonl", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert not analysis_is_current(load_analysis(out), out)[0]
    with pytest.warns(UserWarning, match="out of date"):
        write_run_report(out, tmp_path / "r2.html", compute=False)


def test_report_keeps_a_current_analysis_and_its_options(tiny_modadd, tmp_path, monkeypatch):
    out = tmp_path / "m"
    train(tiny_modadd, out, progress=False)
    a = analyze(out, max_checkpoints=3)
    calls = []
    monkeypatch.setattr(analysis_mod, "analyze", lambda *a, **k: calls.append(k))
    write_run_report(out)  # current: reused, not recomputed
    assert calls == []
    assert load_analysis(out).records["generation"] == a.records["generation"]
    # another phase rule asked for: recomputed with the stored options plus the rule
    current, why = analysis_is_current(load_analysis(out), out, options={"phase_rule": "loss"})
    assert not current and "phase_rule" in why


# -- the analysis's commit point ----------------------------------------------------------------------


@pytest.mark.parametrize("boundary", ["before_tensors", "after_tensors", "before_records", "after_records"])
def test_analysis_survives_a_crash_at_every_write_boundary(tiny_modadd, tmp_path, monkeypatch, boundary):
    out = tmp_path / "m"
    train(tiny_modadd, out, progress=False)
    old = analyze(out, max_checkpoints=3)
    new = analyze(out, save=False)
    assert len(new.steps) > len(old.steps)
    save_tensors, write_json = analysis_mod.atomic_save_tensors, analysis_mod.atomic_write_json

    def tensors_hook(path, *a, **k):
        if boundary == "before_tensors":
            raise Killed
        save_tensors(path, *a, **k)
        if boundary == "after_tensors":
            raise Killed

    def json_hook(path, *a, **k):
        if boundary == "before_records":
            raise Killed
        write_json(path, *a, **k)
        if boundary == "after_records":
            raise Killed

    monkeypatch.setattr(analysis_mod, "atomic_save_tensors", tensors_hook)
    monkeypatch.setattr(analysis_mod, "atomic_write_json", json_hook)
    with pytest.raises(Killed):
        new.save(out)
    monkeypatch.undo()
    loaded = load_analysis(out)
    # whole old or whole new, never new records over old tensors (or the reverse)
    expect = new if boundary == "after_records" else old
    assert loaded.records["run"]["n_checkpoints"] == len(loaded.steps) == len(expect.steps)
    assert torch.equal(loaded.steps, expect.steps)
    for key, value in expect.tensors.items():
        assert torch.equal(loaded[key], value), key
    # the next save commits and clears whatever the kill left behind
    analyze(out)
    files = sorted(f.name for f in (out / "analysis").iterdir())
    assert files == sorted(["analysis.json", load_analysis(out).records["tensors_file"]])


def test_analysis_records_naming_a_foreign_file_are_refused(tiny_modadd, tmp_path):
    out = tmp_path / "m"
    train(tiny_modadd, out, progress=False)
    analyze(out, max_checkpoints=2)
    rec_path = out / "analysis" / "analysis.json"
    rec = json.loads(rec_path.read_text())
    for bad in ("../config.json", "/etc/passwd", 3):
        rec_path.write_text(json.dumps({**rec, "tensors_file": bad}))
        with pytest.raises(StoreError, match="not an analysis tensor file name"):
            load_analysis(out)
    rec_path.write_text(json.dumps({**rec, "generation": "0123456789abcdef"}))
    with pytest.raises(StoreError, match="does not match"):
        load_analysis(out)


# -- streaming --------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["parity", "modular"])
def test_chunked_analysis_equals_unchunked_and_holds_one_chunk(which, tiny_modadd, tmp_path, monkeypatch):
    cfg = _parity(120) if which == "parity" else tiny_modadd.with_overrides({"train.steps": 100})
    out = tmp_path / which
    train(cfg, out, progress=False)
    whole = analyze(out, save=False, chunk_size=10**6)
    loaded: list[int] = []
    real = StoreRun.trajectory

    def counting(self, steps=None, errors="warn"):
        loaded.append(len(steps if steps is not None else self.steps))
        return real(self, steps, errors)

    monkeypatch.setattr(StoreRun, "trajectory", counting)
    parts = analyze(out, save=False, chunk_size=3)
    n = len(Run.open(out).steps)
    assert n > 6 and max(loaded) <= 3 and sum(loaded) >= n  # every checkpoint, never more than 3 at once
    assert torch.equal(parts.steps, whole.steps) and set(parts.tensors) == set(whole.tensors)
    for key, value in whole.tensors.items():
        # the grid forward runs in float32: a matmul over another batch size may round differently
        # (1e-8 seen); everything else, events and key frequencies included, is identical
        torch.testing.assert_close(parts[key], value, rtol=1e-5, atol=1e-6, equal_nan=True, msg=key)
    assert parts.records["events"] == whole.records["events"]
    assert parts.records["key_frequencies"] == whole.records["key_frequencies"]
    # automatic chunks from a memory budget: a tiny budget means one checkpoint at a time
    loaded.clear()
    analyze(out, save=False, chunk_mb=1e-6)
    assert set(loaded) == {1}


# -- events of imported runs ----------------------------------------------------------------------------


def _their_state(p: int = 7, d: int = 12, heads: int = 2, d_head: int = 4, m: int = 16) -> dict[str, torch.Tensor]:
    r = lambda *s: torch.randn(*s) * 0.5
    return {
        "embed.W_E": r(d, p + 1),
        "pos_embed.W_pos": r(3, d),
        "blocks.0.attn.W_K": r(heads, d_head, d),
        "blocks.0.attn.W_Q": r(heads, d_head, d),
        "blocks.0.attn.W_V": r(heads, d_head, d),
        "blocks.0.attn.W_O": r(d, d_head * heads),
        "blocks.0.attn.mask": torch.tril(torch.ones(3, 3)),
        "blocks.0.mlp.W_in": r(m, d),
        "blocks.0.mlp.b_in": r(m),
        "blocks.0.mlp.W_out": r(d, m),
        "blocks.0.mlp.b_out": r(d),
        "unembed.W_U": r(d, p + 1),
    }


def test_imported_final_checkpoint_with_loss_curves(tmp_path):
    """A published run: full loss curves, only the final checkpoint. Events come from the curves
    (train loss below the 99%-accuracy bound from epoch 50, test from 300), not from the one
    checkpoint's accuracy."""
    epochs = 400
    e = np.arange(epochs)
    path = tmp_path / "pub.pth"
    cfg = {
        "p": 7,
        "frac_train": 0.4,
        "seed": 3,
        "num_epochs": epochs,
        "d_model": 12,
        "num_heads": 2,
        "d_head": 4,
        "d_mlp": 16,
        "n_ctx": 3,
        "d_vocab": 8,
        "act_type": "ReLU",
        "use_ln": False,
    }
    torch.save(
        {
            "model": _their_state(),
            "config": cfg,
            "epoch": epochs,
            "train_losses": np.where(e >= 50, 1e-4, 2.0).tolist(),
            "test_losses": np.where(e >= 300, 1e-4, 3.0).tolist(),
        },
        path,
    )
    a = analyze(path)
    ev = a.events
    assert (ev.memorised_step, ev.generalised_step, ev.phase) == (50, 300, "grokking")
    assert ev.evidence["n_train"] == epochs + 1 and "loss" in ev.evidence["train"]
    # one checkpoint and no curves: no phase is claimed
    one = torch.load(path, weights_only=True)
    del one["train_losses"], one["test_losses"]
    torch.save(one, tmp_path / "bare.pth")
    assert analyze(tmp_path / "bare.pth").events.phase == "unknown"
    # PAIR's loss rule on the same curves: min losses 1e-4 > 1e-5 -> never learned
    assert analyze(path, phase_rule="loss", save=False).events.phase == "confusion"


# -- robustness -----------------------------------------------------------------------------------------


def test_every_parity_bit_relevant_analyses_and_reports(tmp_path):
    cfg = RunConfig(
        name="allrel",
        task=TaskConfig(kind="parity", n_bits=4, relevant_bits=(0, 1, 2, 3), n_train=12, n_test=4, seed=3),
        model=ModelConfig(kind="parity_mlp", d_mlp=8, bias=True, n_out=2),
        optim=OptimConfig(lr=1e-2, weight_decay=0.1),
        train=TrainConfig(steps=40, checkpoint_every=20, log_checkpoints=3, resume_every=30),
    )
    out = tmp_path / "p"
    train(cfg, out, progress=False)
    a = analyze(out)
    assert a.events.extra["relevant_bits"] == [0, 1, 2, 3] and a.events.extra["pruned_step"] is None
    assert "every bit is relevant" in a.summary and "undefined" in a.summary
    assert "bits/irrelevant_weight_ratio" not in a.tensors and a["bits/weight_norm"].shape[1] == 4
    report = write_run_report(out)
    assert "every bit is relevant" in report.read_text()


def test_diverged_modular_run_gets_a_report_that_says_so(tiny_modadd, tmp_path):
    out = tmp_path / "div"
    train(tiny_modadd.with_overrides({"optim.lr": 1e6, "train.steps": 40}), out, progress=False)
    run = Run.open(out)
    assert not torch.isfinite(run.checkpoint(run.steps[-1])["embed.W_E"]).all()  # it did diverge
    a = analyze(out)
    assert "not finite" in a.records["diverged"] and "The run diverged" in a.summary
    report = write_run_report(out)  # was: numpy LinAlgError "SVD did not converge"
    assert "The run diverged" in report.read_text()


def test_a_huge_run_name_costs_nothing(tmp_path, capsys):
    """A 100 KB name made `mechgrok analyze` take 87 s: rich wraps a long word in quadratic time."""
    from mechgrok.cli import _print_analysis
    from mechgrok.probes._common import as_trajectory
    from mechgrok.probes.synthetic import planted_modadd_mlp

    traj = as_trajectory(planted_modadd_mlp(7, [2]))
    object.__setattr__(traj.config, "name", "x" * 100_000)  # past config validation, as a crafted file would be
    t = time.perf_counter()
    a = analyze(traj)
    _print_analysis(a, tmp_path)
    assert time.perf_counter() - t < 5
    out = capsys.readouterr().out
    assert len(out) < 3000 and "xxx..." in out
    assert len(a.summary) < 1000

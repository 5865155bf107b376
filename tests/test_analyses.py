"""Each analysis script, run as a program on a tiny configuration: it trains into an empty folder,
prints its story and writes its HTML report; a second call reuses the run."""

import json
import runpy
import sys
from pathlib import Path

import pytest
import torch

import mechgrok as mg

ANALYSES = Path(__file__).resolve().parent.parent / "analyses"


def run_script(name: str, *argv: str, capsys) -> str:
    old = sys.argv
    sys.argv = [str(ANALYSES / name), *argv]
    try:
        runpy.run_path(str(ANALYSES / name), run_name="__main__")
    finally:
        sys.argv = old
    return capsys.readouterr().out


TINY_PARITY = [
    "--set",
    "task.n_bits=8",
    "--set",
    "task.relevant_bits=1,5",
    "--set",
    "task.n_train=60",
    "--set",
    "task.n_test=100",
    "--set",
    "model.d_mlp=16",
    "--set",
    "train.steps=150",
    "--set",
    "train.checkpoint_every=25",
    "--set",
    "train.log_checkpoints=5",
    "--set",
    "train.eval_every=1",
]
TINY_MODULAR = [
    "--set",
    "task.p=11",
    "--set",
    "train.checkpoint_every=50",
    "--set",
    "train.log_checkpoints=5",
    "--set",
    "train.eval_every=5",
]


def test_parity_pruning(tmp_path, capsys):
    out = run_script("parity_pruning.py", str(tmp_path / "run"), *TINY_PARITY, capsys=capsys)
    assert "relevant bits [1, 5] of 8" in out
    for word in ("memorised", "prune-now >= 99%", "pruned", "generalised"):
        assert word in out
    report = tmp_path / "run" / "parity_pruning.html"
    assert report.exists() and report.read_text().count("Plotly.newPlot(") == 4
    # the run is reused, not retrained
    out = run_script("parity_pruning.py", str(tmp_path / "run"), capsys=capsys)
    assert "training" not in out and "report:" in out


def test_mlp24_fourier(tmp_path, capsys):
    out = run_script(
        "mlp24_fourier.py",
        str(tmp_path / "run"),
        *TINY_MODULAR,
        "--set",
        "model.d_model=24",
        "--set",
        "model.d_mlp=8",
        "--set",
        "train.steps=200",
        capsys=capsys,
    )
    assert "first checkpoint (step 0)" in out and "last checkpoint (step 200)" in out
    assert "neurons per dominant frequency at the end" in out
    assert (tmp_path / "run" / "mlp24_fourier.html").read_text().count("Plotly.newPlot(") == 5


def test_cossin_circle(tmp_path, capsys):
    out = run_script(
        "cossin_circle.py", str(tmp_path / "run"), *TINY_MODULAR, "--set", "train.steps=200", capsys=capsys
    )
    assert out.count("    neuron ") == 5 and "(even: 72°)" in out
    assert "phase spread (1 = even)" in out
    assert (tmp_path / "run" / "cossin_circle.html").read_text().count("Plotly.newPlot(") == 3


def test_progress_measures_on_run(tmp_path, capsys):
    out = run_script(
        "progress_measures.py",
        str(tmp_path / "run"),
        *TINY_MODULAR,
        "--set",
        "model.d_model=16",
        "--set",
        "model.n_heads=2",
        "--set",
        "model.d_head=8",
        "--set",
        "model.d_mlp=32",
        "--set",
        "train.steps=150",
        capsys=capsys,
    )
    assert "key frequencies:" in out and "Fourier sparsity" in out
    assert (tmp_path / "run" / "progress_measures.html").read_text().count("Plotly.newPlot(") == 4


def test_progress_measures_on_imported_checkpoint(tmp_path, capsys):
    """A file in the progress-measures paper's format (their layouts, vocab p + 1)."""
    p, d, h, dh, m = 7, 12, 2, 4, 16
    r = lambda *s: torch.randn(*s) * 0.5

    def state():
        return {
            "embed.W_E": r(d, p + 1),
            "pos_embed.W_pos": r(3, d),
            "blocks.0.attn.W_K": r(h, dh, d),
            "blocks.0.attn.W_Q": r(h, dh, d),
            "blocks.0.attn.W_V": r(h, dh, d),
            "blocks.0.attn.W_O": r(d, dh * h),
            "blocks.0.attn.mask": torch.tril(torch.ones(3, 3)),
            "blocks.0.mlp.W_in": r(m, d),
            "blocks.0.mlp.b_in": r(m),
            "blocks.0.mlp.W_out": r(d, m),
            "blocks.0.mlp.b_out": r(d),
            "unembed.W_U": r(d, p + 1),
        }

    config = {
        "p": p,
        "frac_train": 0.4,
        "seed": 3,
        "lr": 1e-3,
        "weight_decay": 1.0,
        "num_epochs": 20,
        "act_type": "ReLU",
        "use_ln": False,
        "d_model": d,
        "num_heads": h,
        "d_head": dh,
        "d_mlp": m,
        "n_ctx": 3,
        "d_vocab": p + 1,
    }
    path = tmp_path / "full_run.pth"
    torch.save(
        {
            "checkpoints": [state() for _ in range(3)],
            "checkpoint_epochs": [0, 10, 20],
            "config": config,
            "train_losses": [1.5] * 21,
            "test_losses": [1.9] * 21,
        },
        path,
    )
    out = run_script("progress_measures.py", str(path), capsys=capsys)
    assert "3 checkpoints" in out and "key frequencies:" in out
    assert (tmp_path / "full_run.mechgrok" / "progress_measures.html").exists()


def test_script_refuses_wrong_task(tmp_path, capsys):
    run_script("parity_pruning.py", str(tmp_path / "run"), *TINY_PARITY, capsys=capsys)
    with pytest.raises(SystemExit, match="not the cos/sin MLP"):
        run_script("cossin_circle.py", str(tmp_path / "run"), capsys=capsys)


# The analyses over many runs or a sweep, on tiny configurations through their --set options.


def test_parity_phase_map(tmp_path, capsys):
    out = run_script(
        "parity_phase_map.py",
        "--out",
        str(tmp_path / "pm"),
        "--steps",
        "40",
        "--seeds",
        "1",
        "--grid",
        "weight_decay=0.01,1",
        "--grid",
        "d_mlp=8",
        "--grid",
        "n_train=30,40",
        "--set",
        "task.n_bits=8",
        "--set",
        "task.n_train=40",
        "--set",
        "task.n_test=60",
        capsys=capsys,
    )
    assert "4 models in" in out and "phases: " in out
    # the text map: one row per (n_train, d_mlp), one column per weight decay
    rows = [line.split() for line in out.splitlines() if line.strip().startswith(("30 ", "40 "))]
    assert [r[:2] for r in rows] == [["30", "8"], ["40", "8"]] and all(len(r) == 4 for r in rows)
    results = tmp_path / "pm" / "results.csv"
    assert results.exists() and len(results.read_text().splitlines()) == 1 + 4
    assert (tmp_path / "pm" / "report.html").read_text().count("Plotly.newPlot(") >= 1


def test_pair_mlp24_seeds(tmp_path, capsys):
    args = [
        "--seeds",
        "2",
        "--seed-start",
        "3",
        "--set",
        "task.p=11",
        "--set",
        "model.d_model=16",
        "--set",
        "model.d_mlp=8",
        "--set",
        "train.steps=60",
        "--set",
        "train.eval_every=10",
    ]
    out = run_script(
        "pair_mlp24_seeds.py", str(tmp_path / "seeds"), *args, "--json", str(tmp_path / "t.json"), capsys=capsys
    )
    assert "training 2 x modadd-mlp24 (60 steps)" in out and "grokked (final test accuracy >= 99%):" in out
    table = json.loads((tmp_path / "t.json").read_text())
    assert [r["seed"] for r in table["rows"]] == [3, 4] and table["config"]["task"]["p"] == 11
    # each member's row is read from its own run folder: the final test accuracy its summary holds
    for row in table["rows"]:
        summary = json.loads((tmp_path / "seeds" / f"seed{row['seed']}" / "summary.json").read_text())
        assert row["final_test_acc"] == summary["final_test_acc"]
    # the members are reused, not retrained
    out = run_script("pair_mlp24_seeds.py", str(tmp_path / "seeds"), *args, capsys=capsys)
    assert "training" not in out


def test_recurrent_schedules(tmp_path, capsys):
    args = [
        "--out",
        str(tmp_path / "rec"),
        "--cells",
        "rnn",
        "--variants",
        "",
        "--fractions",
        "0.6",
        "--set",
        "task.p=7",
        "--set",
        "model.d_model=16",
        "--set",
        "train.steps=60",
        "--set",
        "train.eval_every=10",
        "--set",
        "train.checkpoint_every=30",
        "--set",
        "optim.batch_size=32",
    ]
    out = run_script("recurrent_schedules.py", *args, capsys=capsys)
    lines = [line for line in out.splitlines() if line.startswith("rnn-mod91")]
    assert len(lines) == 2 and "frac 0.50" in lines[0] and "frac 0.60" in lines[1]
    assert all("[60 steps" in line and " -> " in line for line in lines)
    assert (tmp_path / "rec" / "rnn-mod91").is_dir() and (tmp_path / "rec" / "rnn-mod91-train_fraction0.6").is_dir()
    again = run_script("recurrent_schedules.py", *args, capsys=capsys)  # reused, not retrained: the same table
    assert [line for line in again.splitlines() if line.startswith("rnn-mod91")] == lines


def test_parity_story_seeds(tmp_path, capsys):
    args = [
        "--out",
        str(tmp_path / "story"),
        "--seeds",
        "0",
        "--wd",
        "0.1",
        "--wd-seeds",
        "0",
        "--wd-steps",
        "60",
        "--json",
        str(tmp_path / "story.json"),
        *TINY_PARITY,
    ]
    out = run_script("parity_story_seeds.py", *args, capsys=capsys)
    assert "# Part 1" in out and "# Part 2" in out and "wd=0.1" in out
    data = json.loads((tmp_path / "story.json").read_text())
    (row,) = data["story"]
    # the story's steps are the stored analysis's events of that run
    analysis = mg.load_analysis(tmp_path / "story" / "seed0")
    assert row["memorised"] == analysis.events.memorised_step and row["generalised"] == analysis.events.generalised_step
    assert row["pruned"] == analysis.events.extra["pruned_step"]
    (wd_row,) = data["wd"]
    assert wd_row["wd"] == 0.1 and wd_row["phase"] in mg.PHASES
    # a second call reuses the finished run (it used to delete and retrain the folder)
    before = (tmp_path / "story" / "seed0" / "summary.json").stat().st_mtime_ns
    run_script("parity_story_seeds.py", *args, capsys=capsys)
    assert (tmp_path / "story" / "seed0" / "summary.json").stat().st_mtime_ns == before


def test_nanda_transformer(tmp_path, capsys):
    args = [
        "--out",
        str(tmp_path / "nanda"),
        *TINY_MODULAR,
        "--set",
        "model.d_model=16",
        "--set",
        "model.n_heads=2",
        "--set",
        "model.d_head=8",
        "--set",
        "model.d_mlp=32",
        "--set",
        "train.steps=150",
    ]
    out = run_script("nanda_transformer.py", *args, capsys=capsys)
    assert "training: 150 steps" in out and "key frequencies (final model):" in out
    assert "phases (Nanda et al.: memorisation / circuit formation / cleanup):" in out
    table = out.split("at the phase boundaries:")[1].splitlines()
    assert table[2].split()[0] == "0" and any(line.split()[:1] == ["150"] for line in table)
    out = run_script("nanda_transformer.py", *args, capsys=capsys)
    assert "reusing finished run" in out
    with pytest.raises(SystemExit, match="choose one"):
        run_script("nanda_transformer.py", "--out", str(tmp_path / "x"), "--accelerated", "--fast", capsys=capsys)


def test_stability_no_wd(tmp_path, capsys):
    argv = [
        str(tmp_path / "runs"),
        *TINY_MODULAR,
        "--set",
        "model.d_model=16",
        "--set",
        "model.d_mlp=8",
        "--set",
        "train.steps=100",
        "--set",
        "optim.lr=3e-2",
    ]
    out = run_script("stability_no_wd.py", *argv, capsys=capsys)
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert set(rows) == {"ce-float32", "ce-float64", "stablemax", "orthograd"}
    for name in rows:
        cfg = mg.Run.open(tmp_path / "runs" / name).config
        assert cfg.optim.weight_decay == 0.0
    assert mg.Run.open(tmp_path / "runs" / "orthograd").config.optim.orthograd
    assert mg.Run.open(tmp_path / "runs" / "stablemax").config.optim.loss == "stablemax"
    # a second call reuses the runs and prints the same table
    assert run_script("stability_no_wd.py", *argv, capsys=capsys) == out

"""Run reports end to end on tiny real runs, the `report` and `demo` commands, and the demo's
reuse / refusal rules."""

import re

import pytest

from mechgrok import ModelConfig, OptimConfig, Run, RunConfig, TaskConfig, TrainConfig, train
from mechgrok.analysis import analyze
from mechgrok.cli import main
from mechgrok.demo import demo_configs, headline, run_demo
from mechgrok.report import write_run_report


@pytest.fixture
def tiny_cossin() -> RunConfig:
    return RunConfig(
        name="tiny-cossin",
        task=TaskConfig(kind="modular", p=11, pairs="unordered", format="pairs", train_fraction=0.6),
        model=ModelConfig(kind="cossin_mlp", d_mlp=5, frequency=1),
        optim=OptimConfig(lr=1e-2, weight_decay=1e-3),
        train=TrainConfig(steps=120, checkpoint_every=20, log_checkpoints=5, resume_every=100),
    )


def _figure_ids(text: str) -> list[str]:
    return re.findall(r'<div id="(fig-[\w-]+)" class="plotly-graph-div"', text)


def test_parity_run_report(tiny_parity, tmp_path):
    run_dir = tmp_path / "p"
    train(tiny_parity, run_dir, progress=False)
    # without a stored analysis and with compute=False: the metrics and weights only
    path = write_run_report(run_dir, compute=False)
    assert _figure_ids(path.read_text()) == ["fig-curves", "fig-weights"]
    # the default computes (and stores) the analysis: every parity figure
    path = write_run_report(run_dir, max_frames=10)
    text = path.read_text()
    assert path == run_dir / "report.html"
    assert _figure_ids(text) == ["fig-curves", "fig-weights", "fig-bits", "fig-prune", "fig-stability"]
    assert (run_dir / "analysis" / "analysis.json").exists()
    assert "sparse parity of bits [1, 5]" in text
    # header: classification, events, config
    assert 'class="phase"' in text and "full config" in text and "memorised" in text
    # the slider is capped at max_frames frames
    frames = re.search(r'"sliders":\[\{"active":(\d+)', text)
    assert frames is not None and int(frames.group(1)) <= 9
    assert len(text) < 15e6


def test_modular_run_reports(tiny_modadd, tiny_cossin, tmp_path):
    base = ["fig-curves", "fig-weights", "fig-spectrum", "fig-keyfreq", "fig-progress"]
    for cfg in (tiny_modadd, tiny_cossin):
        run_dir = tmp_path / cfg.name
        train(cfg, run_dir, progress=False)
        analysis = analyze(run_dir)
        ids = _figure_ids(write_run_report(run_dir, analysis=analysis).read_text())
        # circles are drawn when the probes computed them: always for the cos/sin model
        has_circles = "circles/cos" in analysis.tensors
        assert has_circles or cfg is tiny_modadd
        assert ids == base + (["fig-circles"] if has_circles else []) + ["fig-stability"]


def test_report_cli(tiny_parity, tmp_path, capsys):
    run_dir = tmp_path / "p"
    train(tiny_parity, run_dir, progress=False)
    main(["report", str(run_dir), "--out", str(tmp_path / "r.html"), "--max-frames", "6"])
    assert "report:" in capsys.readouterr().out and (tmp_path / "r.html").exists()
    with pytest.raises(SystemExit) as e:
        main(["report", str(run_dir), "--x", "lr"])
    assert e.value.code == 2 and "only for sweep folders" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["report", str(tmp_path / "nope")])
    assert capsys.readouterr().err.startswith("error: ")
    # --phase-rule: the stored (accuracy) analysis is recomputed with PAIR's loss rule
    from mechgrok.analysis import load_analysis
    from mechgrok.probes import detect_events

    main(["report", str(run_dir), "--out", str(tmp_path / "l.html"), "--phase-rule", "loss"])
    stored = load_analysis(run_dir)
    assert stored.events.rule == "loss" and stored.records["options"]["phase_rule"] == "loss"
    assert stored.events.phase == detect_events(Run.open(run_dir).metrics(), rule="loss").phase
    text = (tmp_path / "l.html").read_text()
    assert re.search(r"phase rule</t[dh]>\s*<td>loss<", text)
    main(["analyze", str(run_dir), "--quiet", "--phase-rule", "accuracy", "--chunk-size", "2"])
    assert "(accuracy rule)" in capsys.readouterr().out and load_analysis(run_dir).events.rule == "accuracy"


def test_run_demo_trains_reuses_and_refuses(tiny_parity, tiny_cossin, tmp_path):
    lines = []
    results = run_demo(tmp_path, [tiny_parity, tiny_cossin], progress=False, log=lines.append)
    assert [r.report for r in results] == [
        tmp_path / "tiny-parity" / "report.html",
        tmp_path / "tiny-cossin" / "report.html",
    ]
    assert all(r.report.exists() for r in results)
    index = (tmp_path / "index.html").read_text()
    assert 'href="tiny-parity/report.html"' in index and "tiny-cossin" in index
    assert results[0].headline.startswith("tiny-parity: memorised at step ")
    assert "generalised at step" in results[0].headline or "never generalised" in results[0].headline
    assert "neuron circle: phase spread" in results[1].headline
    assert any("training 120 steps" in s for s in lines)
    # second call: nothing is retrained or re-analysed
    lines.clear()
    again = run_demo(tmp_path, [tiny_parity, tiny_cossin], progress=False, log=lines.append)
    assert any("already trained" in s for s in lines) and not any("training" in s or "analysing" in s for s in lines)
    assert [r.headline for r in again] == [r.headline for r in results]
    # a folder holding a different run is refused, not overwritten
    from mechgrok import StoreError

    with pytest.raises(StoreError, match="holds a different run"):
        run_demo(tmp_path, [tiny_parity.with_overrides({"optim.lr": 0.5})], progress=False, log=lines.append)


def test_headline_formats():
    class A:
        records = {
            "task": "parity",
            "run": {"name": "parity"},
            "events": {
                "memorised_step": 92,
                "generalised_step": 420,
                "phase": "grokking",
                "extra": {"pruned_step": None, "sensitivity_zero_step": 500, "prune_now_step": 144},
            },
        }
        tensors = {}

    text = headline(A())
    assert text.startswith(
        "parity: memorised at step 92, irrelevant-bit weights never pruned, generalised at step 420 [grokking]"
    )
    assert "from step 500" in text and "from step 144" in text


@pytest.mark.integration
def test_demo_cli_quick(tmp_path, capsys):
    assert [c.name for c in demo_configs()] == ["parity", "modadd-mlp24", "modadd-cossin5"]
    main(["demo", "--out", str(tmp_path), "--quick", "--quiet"])
    out = capsys.readouterr().out
    assert "headline numbers" in out
    for name in ("parity", "modadd-mlp24", "modadd-cossin5"):
        assert (tmp_path / name / "report.html").exists()
        assert f"  {name}: memorised at step" in out
    assert "last irrelevant-bit weight pruned at step" in out or "irrelevant-bit weights never pruned" in out

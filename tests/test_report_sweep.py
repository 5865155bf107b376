"""The sweep report on a real (tiny) sweep folder written by the sweep engine, and the CLI."""

import pandas as pd
import pytest

from mechgrok.cli import main
from mechgrok.report import write_sweep_report
from mechgrok.report.sweep import read_results, sweep_sections
from mechgrok.sweep import EngineConfig, SweepSpec, run_sweep


@pytest.fixture
def tiny_sweep(tiny_parity, tmp_path):
    base = tiny_parity.with_overrides({"train.steps": 60, "train.checkpoint_every": 30})
    spec = SweepSpec.from_cli(base, ["weight_decay=0.01,0.3,3", "d_mlp=8,16"], seeds=2)
    return run_sweep(spec, tmp_path / "sweep", engine=EngineConfig(writers=1), progress=False)


def test_sweep_report(tiny_sweep, tmp_path, capsys):
    table, params, spec = read_results(tiny_sweep.path)
    assert params == ["weight_decay", "d_mlp"]  # the grid axes; seeds are replicates, not axes
    assert len(table) == 12 and spec["seeds"] == 2
    sections = sweep_sections(table, params)
    assert [s.title for s in sections] == ["Phase map: weight_decay × d_mlp", "Steps to generalise"]
    fig = sections[0].figure
    assert sum(len(t.x) for t in fig.data) == 12
    assert fig.layout.xaxis.type == "log" and fig.layout.xaxis.range is not None
    path = write_sweep_report(tiny_sweep.path)
    text = path.read_text()
    assert path == tiny_sweep.path / "report.html"
    assert text.count("Plotly.newPlot(") == 2 and "swept parameters" in text
    # the CLI finds out that the folder is a sweep
    out = tmp_path / "sweep.html"
    main(["report", str(tiny_sweep.path), "--out", str(out), "--x", "d_mlp", "--y", "weight_decay"])
    assert out.exists() and "Phase map: d_mlp × weight_decay" in out.read_text()
    assert "report:" in capsys.readouterr().out


def test_sweep_report_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["report", str(tmp_path / "missing")])
    assert e.value.code == 2
    assert "no such run or sweep folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        main(["report", str(tmp_path / "empty")])
    assert "not a run or sweep folder" in capsys.readouterr().err
    # a plain results table without a sweep.json still gets a report; swept columns are guessed
    rows = [
        {"weight_decay": wd, "lr": lr, "phase": "grokking", "generalised_step": 100, "memorised_step": 10}
        for wd in (0.1, 1.0)
        for lr in (1e-3, 1e-2)
    ]
    (tmp_path / "plain").mkdir()
    pd.DataFrame(rows).to_csv(tmp_path / "plain" / "results.csv", index=False)
    assert write_sweep_report(tmp_path / "plain").exists()


def test_phase_rule_in_results_and_phase_map(tiny_sweep, tmp_path, capsys):
    from mechgrok import Run
    from mechgrok.probes import detect_events
    from mechgrok.sweep import SWEEP_FILES

    table = tiny_sweep.results()
    assert set(table["phase_rule"]) == {"accuracy"}
    members = [Run.open(tiny_sweep.path / d) for d in table["run_dir"]]
    by_loss = [detect_events(r.metrics(), rule="loss").phase for r in members]
    by_acc = [detect_events(r.metrics()).phase for r in members]
    assert list(table["phase"]) == by_acc
    # the report reclassifies from the members' metrics without touching results.csv
    loss_table, _, _ = read_results(tiny_sweep.path, "loss")
    assert list(loss_table["phase"]) == by_loss and set(loss_table["phase_rule"]) == {"loss"}
    assert set(pd.read_csv(tiny_sweep.path / SWEEP_FILES["results"])["phase_rule"]) == {"accuracy"}
    out = tmp_path / "loss.html"
    main(["report", str(tiny_sweep.path), "--out", str(out), "--phase-rule", "loss"])
    assert "phases by the loss rule" in out.read_text()
    # the sweep command writes results.csv by the rule asked for (here: resuming a finished sweep)
    main(["sweep", "--resume", str(tiny_sweep.path), "--phase-rule", "loss", "--quiet"])
    written = pd.read_csv(tiny_sweep.path / SWEEP_FILES["results"])
    assert list(written["phase"]) == by_loss and set(written["phase_rule"]) == {"loss"}
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["report", str(tiny_sweep.path), "--phase-rule", "auc"])
    assert e.value.code == 2 and "phase_rule: must be one of accuracy, loss" in capsys.readouterr().err
    # a bare results.csv cannot be reclassified: one line, not a silently wrong map
    (tmp_path / "plain").mkdir()
    written.to_csv(tmp_path / "plain" / "results.csv", index=False)
    with pytest.raises(SystemExit):
        main(["report", str(tmp_path / "plain"), "--phase-rule", "accuracy"])
    assert "cannot be classified by the accuracy rule" in capsys.readouterr().err

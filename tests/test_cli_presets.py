"""`mechgrok presets` names each preset's task by its kind (groups by group, not as modular arithmetic)."""

from typer.testing import CliRunner

from mechgrok.cli import app
from mechgrok.presets import preset, preset_names


def test_presets_lists_every_preset_with_its_task():
    out = CliRunner().invoke(app, ["presets"], env={"COLUMNS": "400"})
    assert out.exit_code == 0, out.output
    lines = {line.split("│")[1].strip(): line for line in out.output.splitlines() if line.count("│") > 3}
    for name in preset_names():
        cfg = preset(name)
        row = lines[name]
        if cfg.task.kind == "group":
            assert f"group {cfg.task.group} (order {cfg.task.p})" in row and " mod " not in row.split("│")[3]
        elif cfg.task.kind == "parity":
            assert f"parity n={cfg.task.n_bits}" in row
        else:
            assert f"{cfg.task.op} mod {cfg.task.p}" in row

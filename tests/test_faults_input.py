"""Hostile inputs: size limits, sweep validation, OS errors, run names,
lesser validation faults and hostile ``.pth`` imports. Each is tried as a user would (the CLI's
``main``: one ``error: ...`` line, exit status 2, nothing created) and at the API."""

from __future__ import annotations

import errno
import json
import math
import os
import re
import time
import zipfile
from pathlib import Path

import pytest
import torch

from mechgrok import RunConfig, StoreError, TrainConfig
from mechgrok.cli import main
from mechgrok.config import ConfigError
from mechgrok.importers import IMPORT_FILES, import_nanda_checkpoint
from mechgrok.presets import PRESETS, preset
from mechgrok.store import FILES
from mechgrok.sweep import SweepSpec
from mechgrok.sweep.spec import parse_axis


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run ``mechgrok ARGS`` in-process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(capsys, *args: str) -> str:
    code, _, err = cli(capsys, *args)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def tiny_config(tiny_parity: RunConfig, tmp_path: Path, **changes) -> Path:
    data = tiny_parity.to_dict()
    for key, value in changes.items():
        section, name = key.split(".", 1) if "." in key else ("name", key)
        if section == "name":
            data["name"] = value
        else:
            data[section][name] = value
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    return path


# ----------------------------------------------------------------------------------------------
# size limits


@pytest.mark.parametrize(
    "override, field, why",
    [
        ("task.p=100000", "train.max_memory_gb", "5,000,050,000 examples"),
        ("model.d_mlp=1000000000", "train.max_memory_gb", "parameters"),
        ("train.steps=1000000000000", "train.max_disk_gb", "4,000,000,037 checkpoints"),
    ],
)
def test_sizes_refused_before_anything_is_allocated(capsys, tmp_path, override, field, why):
    out = tmp_path / "run"
    t0 = time.perf_counter()
    line = one_line_error(capsys, "train", "modadd-mlp24", "--set", override, "--out", out, "--quiet")
    assert time.perf_counter() - t0 < 5  # steps=1e12 used to build a 4e9-element set (5 GB)
    assert field in line and why in line and "limit of" in line
    assert not out.exists()


def test_parity_bits_refused(capsys, tmp_path):
    line = one_line_error(capsys, "train", "parity", "--set", "task.n_bits=1000000", "--out", tmp_path / "r")
    assert "train.max_memory_gb" in line and "limit of 16 GB" in line
    line = one_line_error(capsys, "train", "parity", "--set", "task.n_bits=1000000000000", "--out", tmp_path / "r")
    assert line.startswith("error: task.n_bits: must be <=")
    assert not (tmp_path / "r").exists()


def test_huge_modulus_refused_before_primality_loop():
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=r"^task\.p: must be <="):
        preset("modadd-mlp24", {"task.p": 10**18, "task.op": "div"})
    assert time.perf_counter() - t0 < 1


def test_limits_are_overridable_and_presets_fit():
    for name in PRESETS:
        cfg = preset(name)
        r = cfg.resources()
        assert r["memory_bytes"] < cfg.train.max_memory_gb * 1e9 / 10, name
        assert r["disk_bytes"] < cfg.train.max_disk_gb * 1e9 / 10, name
    with pytest.raises(ConfigError, match="train.max_memory_gb"):
        preset("modadd-mlp24", {"task.p": 1500})
    # a user with a big machine raises the limit (0 = none); nothing is allocated by validation
    big = preset("modadd-mlp24", {"task.p": 1500, "train.max_memory_gb": 0})
    assert big.resources()["memory_bytes"] > 16e9
    assert preset("modadd-mlp24", {"task.p": 1500, "train.max_memory_gb": 64}).task.p == 1500
    with pytest.raises(ConfigError, match="train.max_disk_gb: must be finite"):
        preset("parity", {"train.max_disk_gb": "inf"})


def test_resource_estimate_bounds_the_real_sizes():
    from mechgrok.models import build_model

    for name in ("parity", "modadd-mlp24", "modadd-cossin5", "modadd-transformer", "rnn-mod91", "lstm-mod91"):
        cfg = preset(name)
        model = build_model(cfg.model, cfg.task, seed=0)
        n = sum(p.numel() for p in model.parameters())
        est = cfg.resources()["params"]
        assert n <= est <= 2 * n + 1000, (name, n, est)


def _reference_checkpoint_steps(tc: TrainConfig) -> list[int]:
    """The original set-based definition."""
    steps = {0, tc.steps}
    steps.update(range(0, tc.steps + 1, tc.checkpoint_every))
    if tc.log_checkpoints:
        top = math.log(max(tc.checkpoint_every * 10, 2))
        for i in range(tc.log_checkpoints):
            s = int(round(math.exp(top * (i + 1) / tc.log_checkpoints)))
            if s <= tc.steps:
                steps.add(s)
    return sorted(steps)


def test_checkpoint_steps_and_count_match_reference():
    import random

    rng = random.Random(0)
    for _ in range(300):
        tc = TrainConfig(
            steps=rng.randint(1, 2000), checkpoint_every=rng.randint(1, 300), log_checkpoints=rng.randint(0, 50)
        )
        ref = _reference_checkpoint_steps(tc)
        assert tc.checkpoint_steps() == ref
        assert tc.n_checkpoints == len(ref)
    # counted, not listed (validation of steps=1e12 must be instant)
    t0 = time.perf_counter()
    tc = TrainConfig(steps=10**12, checkpoint_every=10**9, log_checkpoints=40)
    assert tc.n_checkpoints == 1001 + len({s for s in tc._log_steps() if s % 10**9})
    assert time.perf_counter() - t0 < 0.1
    with pytest.raises(ConfigError, match="train.log_checkpoints"):
        TrainConfig(log_checkpoints=10**12)


# ----------------------------------------------------------------------------------------------
# sweeps


def test_sweep_validates_every_member_before_writing(capsys, tmp_path):
    out = tmp_path / "sweep"
    # member 0 (p=7, frequency=1) is valid; member 1 (p=7, frequency=5) is not
    line = one_line_error(
        capsys,
        "sweep",
        "modadd-cossin5",
        "--grid",
        "task.p=7,67",
        "--grid",
        "model.frequency=1,5",
        "--set",
        "train.steps=5",
        "--out",
        out,
        "--quiet",
    )
    assert line.startswith("error: sweep member 1 (p=7, frequency=5): model.frequency")
    assert not out.exists()


def test_sweep_member_count_and_disk_limits(capsys, tmp_path):
    out = tmp_path / "sweep"
    t0 = time.perf_counter()
    line = one_line_error(
        capsys,
        "sweep",
        "parity",
        "--grid",
        "weight_decay=log:0.001:1:1000",
        "--grid",
        "lr=log:0.001:0.1:1000",
        "--out",
        out,
        "--quiet",
    )
    assert "1,000,000 members" in line and "--max-members" in line
    line = one_line_error(capsys, "sweep", "parity", "--grid", "weight_decay=log:0.001:1:1000000", "--out", out)
    assert "1,000,000 values" in line
    line = one_line_error(capsys, "sweep", "parity", "--seeds", "1000000", "--out", out)
    assert "1,000,000 members" in line
    assert time.perf_counter() - t0 < 20  # used to validate / group members for minutes
    line = one_line_error(capsys, "sweep", "parity", "--seeds", "2000", "--set", "train.steps=200000", "--out", out)
    assert "train.max_disk_gb" in line and "2,000 member folders" in line
    assert not out.exists()
    # the largest seed is checked too (every member's config, not member 0's)
    with pytest.raises(ConfigError, match="train.seed"):
        SweepSpec(base=preset("parity"), seeds=3, seed_start=2**53 - 2)
    spec = SweepSpec(base=preset("parity"), seeds=3, max_members=3)
    with pytest.raises(ConfigError, match="over the limit of 2"):
        SweepSpec(base=preset("parity"), seeds=3, max_members=2)
    assert SweepSpec.from_dict(spec.to_dict()) == spec  # the limit is a guard, not stored
    assert "max_members" not in spec.to_dict()
    no_disk_limit = preset("parity", {"train.max_disk_gb": 0})
    big = SweepSpec(base=no_disk_limit, seeds=150_000, max_members=200_000)
    assert SweepSpec.from_dict(big.to_dict()).size == 150_000  # re-opened without the default limit
    with pytest.raises(ConfigError, match="over the limit of 100,000"):
        SweepSpec(base=no_disk_limit, seeds=150_000)
    with pytest.raises(ConfigError, match="over the limit"):
        parse_axis("lr=log:0.001:1:20", preset("parity"), max_values=10)


@pytest.mark.integration
def test_resume_of_finished_sweep_member_keeps_its_phase(capsys, tmp_path, tiny_parity):
    from mechgrok.sweep import Sweep, run_sweep

    spec = SweepSpec(base=tiny_parity, seeds=2)
    sweep = run_sweep(spec, tmp_path / "sw", progress=False)
    before = {r["member"]: r["phase"] for r in sweep.result_rows()}
    assert all(before.values())
    code, _, err = cli(capsys, "train", "--resume", sweep.member_path(0), "--quiet")
    assert code == 0, err
    summary = json.loads((sweep.member_path(0) / FILES["summary"]).read_text())
    assert summary["events"]["phase"] == before[0]
    reopened = Sweep.open(tmp_path / "sw")
    reopened.write_results()
    assert {r["member"]: r["phase"] for r in reopened.result_rows()} == before


# ----------------------------------------------------------------------------------------------
# OS errors


def test_out_under_a_regular_file(capsys, tmp_path):
    (tmp_path / "afile").write_text("x")
    line = one_line_error(capsys, "train", "parity", "--set", "train.steps=3", "--out", tmp_path / "afile" / "run")
    assert str(tmp_path / "afile" / "run") in line


def test_report_out_folder_or_under_file(capsys, tmp_path, tiny_parity):
    from mechgrok.train import train

    train(tiny_parity.with_overrides({"train.steps": 10}), tmp_path / "run", progress=False)
    (tmp_path / "dir").mkdir()
    line = one_line_error(capsys, "report", tmp_path / "run", "--out", tmp_path / "dir", "--no-analyze")
    assert f"{tmp_path / 'dir'}: is a folder" in line
    (tmp_path / "afile").write_text("x")
    line = one_line_error(capsys, "report", tmp_path / "run", "--out", tmp_path / "afile" / "r.html", "--no-analyze")
    assert "is a file" in line
    assert list((tmp_path / "dir").iterdir()) == []


def test_full_disk_names_the_file(capsys, tmp_path, tiny_parity, monkeypatch):
    """A full disk fails inside write/fsync, whose OSError names no file: the store adds it."""
    cfg = tiny_config(tiny_parity, tmp_path)
    real_fsync = os.fsync
    calls = {"n": 0}

    def full(fd):
        calls["n"] += 1
        if calls["n"] > 3:  # config.json and a few files made it; then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full)
    line = one_line_error(capsys, "train", "--config", cfg, "--out", tmp_path / "run", "--quiet")
    assert line.startswith(f"error: {tmp_path / 'run'}") and line.endswith(": No space left on device")
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert (tmp_path / "run" / FILES["config"]).exists()  # what was written is kept


def test_read_only_folder_and_programming_oserror(capsys, tmp_path, monkeypatch):
    import importlib

    train_module = importlib.import_module("mechgrok.train")  # mechgrok.train is also the function

    def read_only(config, out, **kw):
        raise PermissionError(errno.EACCES, "Permission denied", str(Path(out) / "config.json"))

    monkeypatch.setattr(train_module, "train", read_only)
    line = one_line_error(capsys, "train", "parity", "--out", tmp_path / "ro")
    assert line == f"error: {tmp_path / 'ro' / 'config.json'}: Permission denied"
    if os.geteuid() != 0:  # root writes through permissions: only then is the real thing testable
        monkeypatch.undo()
        ro = tmp_path / "ro2"
        ro.mkdir()
        ro.chmod(0o555)
        line = one_line_error(capsys, "train", "parity", "--set", "train.steps=3", "--out", ro / "run")
        assert "Permission denied" in line

    def bug(config, out, **kw):
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(train_module, "train", bug)
    with pytest.raises(OSError, match="Bad file descriptor"):  # a genuine bug keeps its traceback
        main(["train", "parity", "--out", str(tmp_path / "x")])


# ----------------------------------------------------------------------------------------------
# run names and paths


@pytest.mark.parametrize("name", ["../../escape", "ABSOLUTE", "a/b", "..", ".", "", "x\nrm", "x" * 100_000])
def test_unsafe_names_refused(capsys, tmp_path, tiny_parity, monkeypatch, name):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    if name == "ABSOLUTE":
        name = str(tmp_path / "outside" / "escape")
    cfg = tiny_config(tiny_parity, work, name=name)
    line = one_line_error(capsys, "train", "--config", cfg, "--quiet")
    assert line.startswith(f"error: {cfg}: name: ")
    assert len(line) < 400
    assert sorted(p.name for p in work.iterdir()) == ["config.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]  # nothing outside either
    with pytest.raises(ConfigError, match="^name: "):
        tiny_parity.with_overrides({"name": name})


def test_name_must_be_a_string_and_safe_names_train(capsys, tmp_path, tiny_parity, monkeypatch):
    with pytest.raises(ConfigError, match="name: expected a string"):
        RunConfig.from_dict({**tiny_parity.to_dict(), "name": ["x"]})
    monkeypatch.chdir(tmp_path)
    cfg = tiny_config(tiny_parity, tmp_path, name="my run (v2)", **{"train.steps": 5})
    code, _, err = cli(capsys, "train", "--config", cfg, "--quiet")
    assert code == 0, err
    assert (tmp_path / "checkpoints" / "my run (v2)" / FILES["config"]).exists()


# ----------------------------------------------------------------------------------------------
# lesser validation faults


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("optim.eps", "inf", "optim.eps: must be finite"),
        ("optim.eps", "nan", "optim.eps: must be finite"),
        ("task.relevant_bits", "[0,1.5]", "task.relevant_bits: expected integers"),
        ("task.relevant_bits", "0,1.5", "task.relevant_bits: cannot read"),
        ("train.seed", str(2**64), "train.seed: must be in"),
        ("train.seed", str(2**53), "train.seed: must be in"),
        ("train.seed", "-1", "train.seed: must be in"),
        ("task.seed", str(2**53 + 1), "task.seed: must be in"),
        ("betas", "a,b", "optim.betas: cannot read 'a,b'"),
        ("betas", "0.9", "optim.betas"),
    ],
)
def test_values_refused_with_the_field_named(capsys, tmp_path, key, value, match):
    line = one_line_error(capsys, "train", "parity", "--set", f"{key}={value}", "--out", tmp_path / "r")
    assert match in line
    assert not (tmp_path / "r").exists()


def test_json_values_checked_element_by_element():
    base = preset("parity").to_dict()
    for bits, ok in (([0, 1.5], False), ([0, "1"], False), ([0, True], False), ([0, 1.0], True)):
        data = json.loads(json.dumps(base))
        data["task"]["relevant_bits"] = bits
        if ok:
            assert RunConfig.from_dict(data).task.relevant_bits == (0, 1)
        else:
            with pytest.raises(ConfigError, match="task.relevant_bits: expected integers"):
                RunConfig.from_dict(data)
    data = json.loads(json.dumps(base))
    data["optim"]["betas"] = ["a", "b"]
    with pytest.raises(ConfigError, match="optim.betas: expected numbers"):
        RunConfig.from_dict(data)
    data["optim"]["betas"] = [0.9, 0.98, 0.5]
    with pytest.raises(ConfigError, match="optim.betas: expected 2 values"):
        RunConfig.from_dict(data)
    # the largest exact seed still works, and a valid --set betas still parses
    assert preset("parity", {"train.seed": 2**53 - 1}).train.seed == 2**53 - 1
    assert preset("parity", {"betas": "0.8, 0.9"}).optim.betas == (0.8, 0.9)


def test_hostile_config_files(capsys, tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200_000 + "]" * 200_000)
    assert one_line_error(capsys, "train", "--config", deep) == f"error: {deep}: JSON nested too deeply"
    nested = tmp_path / "nested.json"
    nested.write_text('{"task": {"p": ' + "[" * 100_000 + "]" * 100_000 + "}}")
    assert one_line_error(capsys, "train", "--config", nested) == f"error: {nested}: JSON nested too deeply"
    binary = tmp_path / "model.safetensors"
    binary.write_bytes(bytes(range(256)) * 40)
    assert one_line_error(capsys, "train", "--config", binary) == f"error: {binary}: not a text (UTF-8) JSON file"
    with pytest.raises(ConfigError, match="^config: JSON nested too deeply"):
        RunConfig.from_json("[" * 200_000 + "]" * 200_000)
    long_value = tmp_path / "long.json"
    long_value.write_text(json.dumps({"task": {"p": "7" * 100_000}}))
    line = one_line_error(capsys, "train", "--config", long_value)
    assert "task.p" in line and len(line) < 400


# ----------------------------------------------------------------------------------------------
# hostile .pth imports

P, D_MODEL, N_HEADS, D_HEAD, D_MLP = 5, 8, 2, 4, 8


def their_state(p: int = P) -> dict[str, torch.Tensor]:
    r = lambda *s: torch.randn(*s) * 0.5
    return {
        "embed.W_E": r(D_MODEL, p + 1),
        "pos_embed.W_pos": r(3, D_MODEL),
        "blocks.0.attn.W_K": r(N_HEADS, D_HEAD, D_MODEL),
        "blocks.0.attn.W_Q": r(N_HEADS, D_HEAD, D_MODEL),
        "blocks.0.attn.W_V": r(N_HEADS, D_HEAD, D_MODEL),
        "blocks.0.attn.W_O": r(D_MODEL, D_HEAD * N_HEADS),
        "blocks.0.mlp.W_in": r(D_MLP, D_MODEL),
        "blocks.0.mlp.b_in": r(D_MLP),
        "blocks.0.mlp.W_out": r(D_MODEL, D_MLP),
        "blocks.0.mlp.b_out": r(D_MODEL),
        "unembed.W_U": r(D_MODEL, p + 1),
    }


def save_theirs(path: Path, **obj) -> Path:
    torch.save({"config": {"p": P, "frac_train": 0.5, "seed": 1}, **obj}, path)
    return path


def test_import_zip_bomb_refused_before_loading(tmp_path):
    plain = tmp_path / "plain.pth"
    torch.save({"model": {"embed.W_E": torch.zeros(5_000_000)}}, plain)  # 20 MB of zeros
    bomb = tmp_path / "bomb.pth"
    with zipfile.ZipFile(plain) as zin, zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
    assert bomb.stat().st_size < 100_000  # torch reads it: deflate expands it 200x
    with pytest.raises(StoreError, match=r"bomb\.pth: unpacks to 0\.02 GB, over the limit of 0\.01 GB"):
        import_nanda_checkpoint(bomb, tmp_path / "out", max_memory_gb=0.01)
    assert not (tmp_path / "out").exists()


def test_import_huge_shapes_from_a_tiny_file(capsys, tmp_path):
    state = their_state()
    # a stride-0 view: a few bytes on disk that claim a vocabulary of 100,001 tokens
    state["embed.W_E"] = torch.zeros(1).expand(D_MODEL, 100_001)
    state["unembed.W_U"] = torch.zeros(1).expand(D_MODEL, 100_001)
    f = tmp_path / "huge.pth"
    torch.save({"model": state}, f)
    assert f.stat().st_size < 100_000
    line = one_line_error(capsys, "analyze", f, "--quiet")
    assert str(f) in line and "train.max_memory_gb" in line
    assert not (tmp_path / "huge.mechgrok").exists()


def test_import_repeated_state_dicts_refused(tmp_path):
    """One stored state named 100 times: a 1 MB file that would convert to 100 MB (a crafted
    3 MB file reached 6.2 GB this way); refused before anything is converted or written."""
    state = their_state()
    state["blocks.0.mlp.W_in"] = torch.randn(15_000, D_MODEL)  # ~250k parameters in all
    state["blocks.0.mlp.b_in"] = torch.randn(15_000)
    state["blocks.0.mlp.W_out"] = torch.randn(D_MODEL, 15_000)
    f = tmp_path / "refs.pth"
    torch.save({"state_dicts": [state] * 100}, f)
    assert f.stat().st_size < 2_000_000
    with pytest.raises(StoreError, match=r"refs\.pth: its 100 checkpoints would expand .* \(repeated or overlapping"):
        import_nanda_checkpoint(f, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # distinct checkpoints are judged against the disk limit
    torch.save({"state_dicts": [{k: v.clone() for k, v in state.items()} for _ in range(2)]}, f)
    with pytest.raises(StoreError, match=r"2 checkpoints of .* over the limit of 0\.001 GB"):
        import_nanda_checkpoint(f, tmp_path / "out", max_disk_gb=0.001)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bad", [3, "text", [1.0, 2.0], {"nested": torch.zeros(2)}, torch.zeros(2, dtype=torch.int64)])
def test_import_non_tensors_in_model(capsys, tmp_path, bad):
    state = their_state()
    state["blocks.0.mlp.W_in"] = bad
    f = save_theirs(tmp_path / "bad.pth", model=state)
    line = one_line_error(capsys, "analyze", f, "--quiet")
    assert line.startswith(f"error: {f}: 'model': 'blocks.0.mlp.W_in'")


def test_import_bad_config_values_named(capsys, tmp_path):
    f = tmp_path / "badcfg.pth"
    torch.save({"config": {"p": P, "seed": "abc"}, "model": their_state()}, f)
    line = one_line_error(capsys, "analyze", f, "--quiet")
    assert line.startswith(f"error: {f}: unreadable config value")


def test_interrupted_import_does_not_block_reimport(tmp_path, monkeypatch):
    import mechgrok.importers.nanda as importer

    f = save_theirs(tmp_path / "run.pth", model=their_state(), train_losses=[1.0, 0.5], test_losses=[1.2, 0.9])
    out = tmp_path / "run.mechgrok"
    real = importer.nanda_split

    def crash(*a, **k):  # after the checkpoints were written
        raise KeyboardInterrupt

    monkeypatch.setattr(importer, "nanda_split", crash)
    with pytest.raises(KeyboardInterrupt):
        import_nanda_checkpoint(f)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # temporary folder gone
    # a kill -9 leaves the temporary folder (nothing runs to remove it): the next import does
    stale = tmp_path / ".run.mechgrok.import-deadbeef0000"
    (stale / "checkpoints").mkdir(parents=True)
    (stale / FILES["config"]).write_text("{}")
    monkeypatch.setattr(importer, "nanda_split", real)
    run = import_nanda_checkpoint(f)
    assert run.path == out and (out / IMPORT_FILES["record"]).exists()
    assert not stale.exists()
    assert import_nanda_checkpoint(f).path == out  # the same file again: the same run


def test_import_into_nonempty_folder_refused(tmp_path):
    f = save_theirs(tmp_path / "run.pth", model=their_state())
    out = tmp_path / "dest"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not an empty folder"):
        import_nanda_checkpoint(f, out)
    assert (out / "notes.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert import_nanda_checkpoint(f, empty).path == empty


def test_every_importer_reads_through_the_unpacked_size_check(tmp_path):
    # the deflate-bomb check lives in the one weights-only loader that the Nanda, Zhong and
    # Chughtai importers all call, so no importer can skip it
    import torch

    from mechgrok.importers import _common
    from mechgrok.store import StoreError

    path = tmp_path / "w.pt"
    torch.save({"W": torch.zeros(1000)}, path)
    with pytest.raises(StoreError, match="unpacks to .* over the limit"):
        _common.load_weights_only(path, max_memory_gb=1e-6)
    assert set(_common.load_weights_only(path)) == {"W"}
    for name in ("nanda", "zhong", "chughtai"):
        src = (Path(_common.__file__).parent / f"{name}.py").read_text()
        calls = re.findall(r"^\s+[^#\n]*\btorch\.load\(", src, flags=re.M)  # code lines, not docstrings
        assert "load_weights_only(" in src and not [c for c in calls if "``" not in c], name

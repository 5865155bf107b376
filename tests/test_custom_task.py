"""User tasks (task.kind="custom", task.factory="module:function"): JSON round trip, the factory's
dataset checked, training and the analysis pipeline on it."""

from __future__ import annotations

import textwrap

import pytest
import torch

from mechgrok import ModelConfig, OptimConfig, RunConfig, TaskConfig, TrainConfig
from mechgrok.analysis import analyze
from mechgrok.config import ConfigError
from mechgrok.tasks import TASK_KINDS, make_dataset
from mechgrok.train import train

FACTORY_MODULE = textwrap.dedent('''
    import torch

    def make(task):
        """(a^2 + a b + b^2) mod p over all pairs, split by the task's seed."""
        p = task.p
        a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
        a, b = a.flatten(), b.flatten()
        y = (a * a + a * b + b * b) % p
        perm = torch.randperm(p * p, generator=torch.Generator().manual_seed(task.seed))
        n = int(round(task.train_fraction * p * p))
        x = torch.stack([a, b], -1)
        tr, te = perm[:n], perm[n:]
        return {"train_x": x[tr], "train_y": y[tr], "test_x": x[te], "test_y": y[te]}

    def bad_labels(task):
        x = torch.zeros(4, 2, dtype=torch.int64)
        return {
            "train_x": x,
            "train_y": torch.full((4,), task.p),
            "test_x": x,
            "test_y": torch.zeros(4, dtype=torch.int64),
        }

    def not_a_dataset(task):
        return 42
''')


@pytest.fixture
def factory(tmp_path, monkeypatch):
    (tmp_path / "mg_user_tasks.py").write_text(FACTORY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "mg_user_tasks:make"


def _config(factory: str, **task) -> RunConfig:
    return RunConfig(
        name="custom-tiny",
        task=TaskConfig(kind="custom", factory=factory, p=7, format="pairs", train_fraction=0.6, **task),
        model=ModelConfig(kind="mlp", d_model=16, d_mlp=32, tied_embed=False),
        optim=OptimConfig(lr=1e-2, weight_decay=0.1),
        train=TrainConfig(steps=60, checkpoint_every=20, log_checkpoints=3, resume_every=60),
    )


def test_registry_and_round_trip(factory):
    assert set(TASK_KINDS) >= {"modular", "parity", "group", "custom"}
    cfg = _config(factory)
    assert RunConfig.from_json(cfg.to_json()) == cfg
    data = make_dataset(cfg.task)
    a, b = data.train_x[:, 0], data.train_x[:, 1]
    assert torch.equal(data.train_y, (a * a + a * b + b * b) % 7)
    assert data.train_x.shape[0] + data.test_x.shape[0] == 49


def test_bad_factories_get_one_line_errors(factory):
    for bad in ("", "nocolon", "a.b:", "1x:make", "a:b:c"):
        with pytest.raises(ConfigError, match=r"^task\.factory: "):
            TaskConfig(kind="custom", factory=bad)
    cases = [
        ("mg_no_such_module:make", "cannot import"),
        ("mg_user_tasks:nope", "has no function 'nope'"),
        ("mg_user_tasks:bad_labels", r"train_y holds values outside \[0, 6\]"),
        ("mg_user_tasks:not_a_dataset", "returned int"),
    ]
    for spec, match in cases:
        with pytest.raises(ConfigError, match=match) as info:
            make_dataset(_config(spec).task)
        assert "\n" not in str(info.value) and str(info.value).startswith("task.factory: ")
    with pytest.raises(ConfigError, match=r"^model\.kind: "):
        RunConfig(task=TaskConfig(kind="custom", factory=factory, p=7), model=ModelConfig(kind="lstm"))


def test_custom_task_trains_and_is_analysed(factory, tmp_path):
    cfg = _config(factory)
    train(cfg, tmp_path / "run", progress=False)
    res = analyze(tmp_path / "run", progress=False)
    assert res.task == "custom"
    assert "custom task mg_user_tasks:make" in res.summary
    # the pipeline's accuracies are the live model's on the factory's split
    data = make_dataset(cfg.task)
    from mechgrok.store import Run

    run = Run.open(tmp_path / "run")
    model = run.model(60)
    acc = float((model(data.train_x).argmax(-1) == data.train_y).double().mean())
    assert float(res["progress/train_acc"][-1]) == pytest.approx(acc)
    assert res.events.phase == "memorisation" and res.events.memorised_step is not None  # 60 steps: memorised only


def test_custom_task_script(tmp_path, capsys, monkeypatch):
    """analyses/custom_task.py on a tiny table: trains, analyses, writes its report."""
    import runpy
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "analyses" / "custom_task.py"
    monkeypatch.syspath_prepend(str(script.parent))
    monkeypatch.setattr(
        sys,
        "argv",
        [
            str(script),
            str(tmp_path / "run"),
            "--set",
            "task.p=7",
            "--set",
            "train.steps=60",
            "--set",
            "train.checkpoint_every=20",
            "--set",
            "train.log_checkpoints=3",
        ],
    )
    runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    assert "custom task custom_task:make" in out and (tmp_path / "run" / "report.html").exists()

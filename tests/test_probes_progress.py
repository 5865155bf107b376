"""Progress measures against a float64 re-implementation of Nanda et al.'s definitions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mechgrok import TaskConfig, Trajectory, build_model, loss_and_accuracy, make_dataset, preset
from mechgrok.probes import key_frequencies, progress_measures
from mechgrok.probes._common import as_trajectory
from mechgrok.probes.progress import modular_events
from mechgrok.probes.synthetic import interpolated_trajectory, planted_modadd_mlp


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _grid_logits(model, p: int) -> torch.Tensor:
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    with torch.no_grad():
        return model(torch.stack([a.flatten(), b.flatten()], -1)).double()  # [p*p, p]


def _nanda_reference(logits: torch.Tensor, p: int, key: list[int], train_idx: torch.Tensor, labels: torch.Tensor):
    """Their recipe on all p^2 ordered pairs: for each frequency, project every logit column onto
    the unit vectors cos(w(a+b)) and sin(w(a+b)); restricted = sum of key components plus the
    per-output mean ("bias correction"), loss on all data; excluded = logits minus the key
    components, loss on the training pairs."""
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    s = (a + b).flatten().double()
    comps = torch.zeros_like(logits)
    for k in key:
        for f in (torch.cos, torch.sin):
            d = f(2 * math.pi * k * s / p)
            d = d / d.norm()
            comps += d[:, None] * (d[None, :] @ logits)
    restricted = comps + (logits - comps).mean(0, keepdim=True)
    excluded = logits - comps
    ce = lambda z, y: F.cross_entropy(z, y).item()
    return ce(restricted, labels), ce(excluded[train_idx], labels[train_idx])


@pytest.mark.parametrize("key", [[2, 5], [3], []])
def test_restricted_and_excluded_loss_match_nanda_reference(key):
    p = 11
    cfg = preset("modadd-mlp24").with_overrides(
        {"task.p": p, "task.pairs": "ordered", "model.d_model": 6, "model.d_mlp": 16}
    )
    model = build_model(cfg.model, cfg.task, seed=2)
    data = make_dataset(cfg.task)
    res = progress_measures(model, data, key_freqs=key)
    logits = _grid_logits(model, p)
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    labels = ((a + b) % p).flatten()
    train_idx = data.train_ab[:, 0] * p + data.train_ab[:, 1]
    r_ref, e_ref = _nanda_reference(logits, p, key, train_idx, labels)
    assert res["restricted_loss"][0].item() == pytest.approx(r_ref, rel=1e-6)
    assert res["excluded_loss"][0].item() == pytest.approx(e_ref, rel=1e-6)
    assert set(res) == {
        "restricted_loss",
        "excluded_loss",
        "train_loss",
        "test_loss",
        "train_acc",
        "test_acc",
        "sum_sq_weights",
    }


@pytest.mark.parametrize("overrides", [{"task.pairs": "unordered"}, {"task.op": "sub", "task.pairs": "ordered"}])
def test_projection_is_least_squares_on_any_table(overrides):
    """Unordered pairs make the answers non-uniform, so the directions are not orthogonal; the
    projection must still be the least-squares one over the task's inputs."""
    p = 7
    cfg = preset("modadd-mlp24").with_overrides({"task.p": p, "model.d_model": 6, "model.d_mlp": 10, **overrides})
    model = build_model(cfg.model, cfg.task, seed=1)
    data = make_dataset(cfg.task)
    key = [1, 3]
    res = progress_measures(model, data, key_freqs=key)
    from mechgrok.tasks import modular_table

    a, b, y = modular_table(cfg.task)
    logits = _grid_logits(model, p)[a * p + b]
    cols = [torch.ones_like(y, dtype=torch.float64)]
    for k in key:
        cols += [torch.cos(2 * math.pi * k * y / p), torch.sin(2 * math.pi * k * y / p)]
    X = torch.stack(cols, -1)
    coef = torch.linalg.lstsq(X, logits).solution
    restricted = X @ coef
    Xk = X[:, 1:]
    excluded_all = logits - Xk @ torch.linalg.lstsq(Xk, logits).solution
    assert res["restricted_loss"][0].item() == pytest.approx(F.cross_entropy(restricted, y).item(), rel=1e-6)
    pos = {(int(i), int(j)): n for n, (i, j) in enumerate(zip(a, b))}
    rows = torch.tensor([pos[(int(i), int(j))] for i, j in data.train_ab])
    assert res["excluded_loss"][0].item() == pytest.approx(
        F.cross_entropy(excluded_all[rows], y[rows]).item(), rel=1e-6
    )


def test_losses_and_weights_match_the_live_model():
    p = 11
    model = planted_modadd_mlp(p, [2, 4], scale=1.5)
    task = TaskConfig(kind="modular", p=p, pairs="ordered", train_fraction=0.4, seed=1)
    data = make_dataset(task)
    res = progress_measures(model, data)
    with torch.no_grad():
        tr = loss_and_accuracy(model(data.train_x), data.train_y)
        te = loss_and_accuracy(model(data.test_x), data.test_y)
    assert res["train_loss"][0].item() == pytest.approx(tr[0].item(), rel=1e-6)
    assert res["test_loss"][0].item() == pytest.approx(te[0].item(), rel=1e-6)
    assert res["train_acc"][0].item() == tr[1].item() == 1.0
    ssq = sum(float(v.double().pow(2).sum()) for v in model.state_dict().values())
    assert res["sum_sq_weights"][0].item() == pytest.approx(ssq, rel=1e-12)
    # the planted model's logits live in its key frequencies: keeping only them changes little,
    # removing them leaves nothing that fits the training set
    assert key_frequencies(model) == [2, 4]  # used by default
    assert res["restricted_loss"][0] < 1.5 * res["test_loss"][0] + 1e-3
    assert res["excluded_loss"][0] > math.log(p) * 0.9


def test_progress_over_a_forming_circuit():
    p = 13
    end = planted_modadd_mlp(p, [3, 5], scale=2.0)
    noise = preset("modadd-mlp24").with_overrides({"task.p": p, "model.d_model": 4, "model.d_mlp": 16})
    start = build_model(noise.model, noise.task, seed=0)
    cfg = as_trajectory(end).config
    traj = interpolated_trajectory(start, end, cfg, n=5)
    data = make_dataset(cfg.task)
    res = progress_measures(traj, data)
    assert all(v.shape == (5,) for v in res.values())
    assert key_frequencies(traj) == [3, 5]  # the last checkpoint's, used by default
    torch.testing.assert_close(res["excluded_loss"], progress_measures(traj, data, key_freqs=[3, 5])["excluded_loss"])
    assert res["restricted_loss"][-1] < res["restricted_loss"][0]
    assert res["excluded_loss"][-1] > res["train_loss"][-1] * 10


def test_modular_events_on_synthetic_curves():
    steps = torch.arange(0, 1000, 100)
    n = len(steps)
    restricted = torch.tensor([4.0, 4.2, 4.1, 3.0, 1.0, 0.2, 0.05, 0.04, 0.03, 0.03], dtype=torch.float64)
    train = torch.tensor([4.0, 1.0, 0.1, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01], dtype=torch.float64)
    excluded = torch.tensor([4.0, 1.0, 0.1, 0.05, 0.2, 0.5, 1.0, 2.0, 2.0, 2.0], dtype=torch.float64)
    mask = torch.zeros(n, 6, dtype=torch.bool)
    mask[5:, [1, 3]] = True
    mask[2, [1, 3]] = True  # a transient that must not count
    ev = modular_events(
        steps, {"restricted_loss": restricted, "excluded_loss": excluded, "train_loss": train}, mask, [2, 4]
    )
    # threshold sqrt(4.2 * 0.03) = 0.355: below it from step 500 on
    assert ev.restricted_drop_step == 500
    assert ev.excluded_rise_step == 400  # first excluded >= 10 x train: 0.2 >= 0.1 at step 400
    assert ev.key_freq_step == 500
    flat = modular_events(
        steps,
        {
            "restricted_loss": torch.full((n,), 4.0, dtype=torch.float64),
            "excluded_loss": train.clone(),
            "train_loss": train,
        },
        None,
        [],
    )
    assert flat.restricted_drop_step is None and flat.excluded_rise_step is None and flat.key_freq_step is None


def test_progress_needs_data_of_a_modular_task():
    cfg = preset("parity").with_overrides({"task.n_bits": 6, "task.n_train": 20, "task.n_test": 20})
    with pytest.raises(ValueError, match="modular"):
        progress_measures(build_model(cfg.model, cfg.task), make_dataset(cfg.task))
    model = planted_modadd_mlp(7, [1])
    with pytest.raises(ValueError, match=r"key_freqs: frequencies must be in \[1, 3\]"):
        progress_measures(model, make_dataset(TaskConfig(kind="modular", p=7)), key_freqs=[4])
    traj = as_trajectory(model)
    assert isinstance(traj, Trajectory) and len(traj) == 1

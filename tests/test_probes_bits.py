"""Bit-dependence probes against hand-built parity networks and per-model reference loops."""

from __future__ import annotations

import pytest
import torch

from mechgrok import ModelConfig, RunConfig, TaskConfig, Trajectory, build_model, make_dataset, preset
from mechgrok.probes import bit_dependence, infer_relevant_bits, parity_events, prune_now_accuracy
from mechgrok.probes._common import as_trajectory, first_stable_step
from mechgrok.probes.bits import irrelevant_series
from mechgrok.probes.synthetic import interpolated_trajectory, planted_parity_mlp

RELEVANT = (1, 4, 6)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def data():
    task = TaskConfig(kind="parity", n_bits=8, relevant_bits=RELEVANT, n_train=120, n_test=100, seed=3)
    return make_dataset(task)


def _random_traj(data, n_out: int, n: int = 3, d_mlp: int = 7) -> Trajectory:
    cfg = RunConfig(task=data.task, model=ModelConfig(kind="parity_mlp", d_mlp=d_mlp, bias=True, n_out=n_out))
    models = [build_model(cfg.model, cfg.task, seed=s) for s in range(n)]
    for m in models:
        torch.nn.init.normal_(m.blocks[0].mlp.b_in)
        torch.nn.init.normal_(m.blocks[0].mlp.b_out)
    params = {k: torch.stack([m.state_dict()[k] for m in models]) for k in models[0].state_dict()}
    return Trajectory(torch.arange(n) * 10, params, cfg)


def test_infer_relevant_bits_solves_gf2(data):
    assert infer_relevant_bits(data.train_ab, data.train_y) == RELEVANT
    assert infer_relevant_bits(data.train_ab[:3], data.train_y[:3]) is None  # underdetermined
    assert infer_relevant_bits(data.train_ab, 1 - data.train_y) is None  # not a parity
    other = TaskConfig(kind="parity", n_bits=12, relevant_bits=(0, 11), n_train=200, n_test=10)
    d = make_dataset(other)
    assert infer_relevant_bits(d.train_ab, d.train_y) == (0, 11)


@pytest.mark.parametrize("n_out", [1, 2])
def test_net_reading_only_relevant_bits_has_zero_irrelevant_dependence(data, n_out):
    model = planted_parity_mlp(8, RELEVANT, n_out=n_out)
    b = bit_dependence(model, data)
    rel = b["relevant"]
    assert rel.tolist() == [i in RELEVANT for i in range(8)]
    for key in ("weight_norm", "max_abs_weight", "grad_attr", "flip_sensitivity"):
        assert b[key].shape == (1, 8) and b[key].dtype == torch.float64
        assert (b[key][0, ~rel] == 0).all(), key
        assert (b[key][0, rel] > 0).all(), key
    assert (b["flip_sensitivity"][0, rel] == 1).all()  # flipping a relevant bit flips the parity
    assert prune_now_accuracy(model, data).tolist() == [1.0]
    traj = as_trajectory(model, data.task)
    ev = parity_events(b, traj.steps)
    assert ev.pruned_step == 0 and ev.sensitivity_zero_step == 0


@pytest.mark.parametrize("n_out", [1, 2])
def test_planted_irrelevant_weight_is_detected(data, n_out):
    model = planted_parity_mlp(8, RELEVANT, n_out=n_out, irrelevant_weights={(3, 0): 0.8})
    b = bit_dependence(model, data)
    assert b["max_abs_weight"][0, 3].item() == pytest.approx(0.8)
    assert b["flip_sensitivity"][0, 3] > 0.2 and b["grad_attr"][0, 3] > 0
    assert (b["flip_sensitivity"][0, [0, 2, 5, 7]] == 0).all()
    ev = parity_events(b, [0])
    assert ev.pruned_step is None and ev.sensitivity_zero_step is None
    # the causal check zeroes the weight on a copy: accuracy restored, model untouched
    assert prune_now_accuracy(model, data).tolist() == [1.0]
    assert model.blocks[0].mlp.W_in[3, 0].item() == pytest.approx(0.8)


def test_pruning_event_on_a_decaying_weight(data):
    start = planted_parity_mlp(8, RELEVANT, irrelevant_weights={(3, 0): 0.8, (7, 1): -0.5})
    end = planted_parity_mlp(8, RELEVANT)
    cfg = as_trajectory(start, data.task).config
    traj = interpolated_trajectory(start, end, cfg, n=6, steps=[0, 10, 20, 30, 40, 50])
    b = bit_dependence(traj, data)
    series = irrelevant_series(b)
    # ratio = largest irrelevant weight / largest relevant weight (1.0): 0.8 * (1 - t)
    torch.testing.assert_close(
        series["irrelevant_weight_ratio"], 0.8 * (1 - torch.linspace(0, 1, 6)).double(), atol=1e-6, rtol=0
    )
    ev = parity_events(b, traj.steps, generalised_step=40, prune_threshold=0.2)
    assert ev.pruned_step == 40 and ev.prune_lag == 0  # 0.16 <= 0.2 from row 4 on
    assert parity_events(b, traj.steps, prune_threshold=0.1).pruned_step == 50


@pytest.mark.parametrize("n_out", [1, 2])
def test_grad_attr_and_flip_sensitivity_match_a_per_model_loop(data, n_out):
    traj = _random_traj(data, n_out)
    b = bit_dependence(traj, data, n_eval=40)
    x = data.test_x[:40].clone()
    for i in range(len(traj)):
        model = traj.model(i)
        xi = x.clone().requires_grad_(True)
        logits = model(xi)
        z = logits[:, 0] if n_out == 1 else logits[:, 1] - logits[:, 0]
        (grad,) = torch.autograd.grad(z.sum(), xi)
        torch.testing.assert_close(b["grad_attr"][i], grad.abs().mean(0).double(), atol=1e-5, rtol=1e-5)
        with torch.no_grad():
            pred = z > 0
            for bit in range(8):
                flipped = x.clone()
                flipped[:, bit] = 1 - flipped[:, bit]
                lf = model(flipped)
                zf = lf[:, 0] if n_out == 1 else lf[:, 1] - lf[:, 0]
                assert b["flip_sensitivity"][i, bit].item() == pytest.approx(((zf > 0) != pred).double().mean().item())
        W = traj.params["blocks.0.mlp.W_in"][i].double()
        torch.testing.assert_close(b["weight_norm"][i], W.norm(dim=1))


def test_prune_now_matches_a_pruned_live_copy(data):
    traj = _random_traj(data, 2)
    before = traj.params["blocks.0.mlp.W_in"].clone()
    acc = prune_now_accuracy(traj, data)
    assert torch.equal(traj.params["blocks.0.mlp.W_in"], before)
    for i in range(len(traj)):
        model = traj.model(i)
        with torch.no_grad():
            model.blocks[0].mlp.W_in[[0, 2, 3, 5, 7]] = 0
            ref = (model(data.test_x).argmax(-1) == data.test_y).double().mean()
        assert acc[i].item() == pytest.approx(ref.item())


def test_first_stable_step():
    steps = torch.tensor([0, 5, 10, 15])
    assert first_stable_step(steps, torch.tensor([False, True, False, True])) == 15
    assert first_stable_step(steps, torch.tensor([True, True, True, True])) == 0
    assert first_stable_step(steps, torch.tensor([True, True, True, False])) is None


def test_bit_probes_reject_other_tasks(data):
    cfg = preset("modadd-mlp24").with_overrides({"task.p": 5, "model.d_model": 4, "model.d_mlp": 3})
    traj = as_trajectory(build_model(cfg.model, cfg.task), cfg.task)
    with pytest.raises(ValueError, match="parity") as info:
        bit_dependence(traj, data)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="task"):
        bit_dependence(planted_parity_mlp(8, RELEVANT), make_dataset(cfg.task))

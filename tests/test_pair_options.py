"""PAIR's exact training options: haiku's initialisers, the loss over batch and classes, numpy's
split, float64 arithmetic and the column-normalised (cos, sin) embedding - each against a
reference (analytic distribution, float64 re-implementation, PAIR's own numpy code)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mechgrok import ConfigError, build_model, make_dataset, preset
from mechgrok.config import TaskConfig
from mechgrok.models import HAIKU_TRUNC_STD, cossin_embedding, haiku_truncated_normal_
from mechgrok.sweep._kernels import ce_loss_grad
from mechgrok.train import loss_and_accuracy


def _phi_cdf(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def _trunc_std(a: float = 2.0) -> float:
    """Std of a unit normal truncated to [-a, a]: sqrt(1 - 2 a pdf(a) / (2 cdf(a) - 1))."""
    pdf = math.exp(-a * a / 2) / math.sqrt(2 * math.pi)
    return math.sqrt(1 - 2 * a * pdf / (2 * _phi_cdf(a) - 1))


def test_haiku_constant_is_the_truncated_normal_std():
    assert _trunc_std() == pytest.approx(HAIKU_TRUNC_STD, abs=1e-12)


def test_truncated_normal_matches_the_analytic_distribution():
    s = 0.3
    torch.manual_seed(1)
    x = haiku_truncated_normal_(torch.empty(400, 500, dtype=torch.float64), s).flatten()
    assert float(x.abs().max()) <= 2 * s  # cut at 2 parameters, not clipped onto the bound
    # the mass just inside the cut is the truncated density's (a clipped normal would put 4.6% there)
    edge = 2 * (_phi_cdf(2) - _phi_cdf(1.99)) / (2 * _phi_cdf(2) - 1)
    assert float((x.abs() > 1.99 * s).double().mean()) == pytest.approx(edge, abs=3e-4)
    assert float(x.std()) == pytest.approx(HAIKU_TRUNC_STD * s, rel=5e-3)
    # Kolmogorov-Smirnov distance to the analytic truncated-normal CDF
    grid = np.linspace(-2, 2, 81)
    z = 2 * _phi_cdf(2) - 1
    ref = np.array([(_phi_cdf(g) - _phi_cdf(-2)) / z for g in grid])
    emp = np.searchsorted(np.sort(x.numpy() / s), grid, side="right") / x.numel()
    assert np.abs(emp - ref).max() < 5e-3


def test_pair_init_of_the_mlp24_preset():
    """VarianceScaling(2.0) on W_E [67, 500] (fan_in 67, std sqrt(2/67), about 4x the default
    1/sqrt(500)) and hk.Linear's TruncatedNormal(1/sqrt(fan_in)) on W_in [500, 24], W_out [24, 500]."""
    cfg = preset("modadd-mlp24")
    assert (cfg.model.init, cfg.model.dtype, cfg.optim.loss_reduction, cfg.task.split) == (
        "pair",
        "float64",
        "mean_classes",
        "numpy",
    )
    model = build_model(cfg.model, cfg.task, seed=3)
    params = dict(model.named_parameters())
    expect = {  # name: (std of the draw, bound)
        "embed.W_E": (math.sqrt(2 / 67), 2 * math.sqrt(2 / 67) / HAIKU_TRUNC_STD),
        "blocks.0.mlp.W_in": (HAIKU_TRUNC_STD / math.sqrt(500), 2 / math.sqrt(500)),
        "blocks.0.mlp.W_out": (HAIKU_TRUNC_STD / math.sqrt(24), 2 / math.sqrt(24)),
    }
    assert set(params) == set(expect)
    for name, (std, bound) in expect.items():
        w = params[name].detach()
        assert w.dtype == torch.float64
        assert float(w.abs().max()) <= bound, name
        assert float(w.std()) == pytest.approx(std, rel=0.03), name
    again = build_model(cfg.model, cfg.task, seed=3).state_dict()
    assert all(torch.equal(v, again[k]) for k, v in model.state_dict().items())
    default = build_model(cfg.model.__class__(**{**cfg.model.__dict__, "init": "default"}), cfg.task, seed=3)
    assert float(default.embed.W_E.detach().std()) == pytest.approx(1 / math.sqrt(500), rel=0.03)


def test_pair_init_linear_biases_are_zero_and_parity_uses_fan_in():
    cfg = preset("parity").with_overrides({"model.init": "pair", "task.n_bits": 13, "model.d_mlp": 400})
    model = build_model(cfg.model, cfg.task, seed=0)
    mlp = model.blocks[0].mlp
    assert float(mlp.W_in.detach().std()) == pytest.approx(HAIKU_TRUNC_STD / math.sqrt(13), rel=0.05)
    assert float(mlp.W_in.detach().abs().max()) <= 2 / math.sqrt(13)
    assert float(mlp.b_in.abs().max()) == 0 and float(mlp.b_out.abs().max()) == 0


def test_pair_init_rejected_for_transformer():
    with pytest.raises(ConfigError, match=r"^model\.init: "):
        preset("modadd-transformer").with_overrides({"model.init": "pair"})


def _pair_loss_float64(logits: np.ndarray, y: np.ndarray) -> float:
    """PAIR's ``-jnp.mean(one_hot(y) * log_softmax(logits))`` in float64 numpy."""
    z = logits - logits.max(-1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(-1, keepdims=True))
    onehot = np.eye(logits.shape[-1])[y]
    return float(-(onehot * log_probs).mean())


def test_mean_classes_loss_and_gradient_against_float64_reference():
    torch.manual_seed(0)
    logits = (torch.randn(37, 11, dtype=torch.float64) * 4).requires_grad_(True)
    y = torch.randint(0, 11, (37,))
    loss, acc = loss_and_accuracy(logits, y, "mean_classes")
    assert float(loss) == pytest.approx(_pair_loss_float64(logits.detach().numpy(), y.numpy()), rel=1e-13)
    assert float(loss_and_accuracy(logits, y)[0]) == pytest.approx(11 * float(loss), rel=1e-13)
    (g,) = torch.autograd.grad(loss, logits)
    # d/dz of -mean(onehot * log_softmax) = (softmax - onehot) / (n k)
    ref = (torch.softmax(logits.detach(), -1) - F.one_hot(y, 11)) / (37 * 11)
    torch.testing.assert_close(g, ref, rtol=1e-12, atol=1e-15)
    # the batched engine's kernel, with a padded member, gives the same loss and gradient
    z = logits.detach().float()[None].expand(2, -1, -1).clone()
    mask = torch.ones(2, 37, dtype=torch.bool)
    mask[1, 30:] = False
    bl, _, bg = ce_loss_grad(z, y[None].expand(2, -1), mask, torch.tensor([37, 30]), div=11.0)
    ref32 = [loss_and_accuracy(z[0], y, "mean_classes")[0], loss_and_accuracy(z[1, :30], y[:30], "mean_classes")[0]]
    torch.testing.assert_close(bl, torch.stack(ref32), rtol=1e-12, atol=0)
    zz = z[1, :30].clone().requires_grad_(True)
    (g30,) = torch.autograd.grad(loss_and_accuracy(zz, y[:30], "mean_classes")[0], zz)
    torch.testing.assert_close(bg[1, :30], g30, rtol=1e-5, atol=1e-9)
    assert float(bg[1, 30:].abs().max()) == 0


def test_mean_classes_leaves_a_single_logit_alone():
    z = torch.randn(20, 1, dtype=torch.float64)
    y = torch.randint(0, 2, (20,))
    assert float(loss_and_accuracy(z, y, "mean_classes")[0]) == float(loss_and_accuracy(z, y)[0])


@pytest.mark.parametrize("pairs,frac,seed", [("unordered", 0.4, 165), ("ordered", 0.3, 86), ("unordered", 0.77, 5)])
def test_numpy_split_is_pairs_notebook_split(pairs, frac, seed):
    """PAIR's cell, literally: the table, np.random.seed, np.random.permutation, int(frac * n)."""
    p = 13
    nums = list(range(p))
    if pairs == "unordered":
        inputs = np.array([[a, b] for a in nums for b in nums if a <= b]).astype(np.int32)
    else:
        inputs = np.array([[a, b] for a in nums for b in nums]).astype(np.int32)
    outputs = (inputs[:, 0] + inputs[:, 1]) % p
    np.random.seed(seed)
    indices = np.random.permutation(len(inputs))
    split_idx = int(frac * len(inputs))
    data = make_dataset(TaskConfig(kind="modular", p=p, pairs=pairs, train_fraction=frac, split="numpy", seed=seed))
    np.testing.assert_array_equal(data.train_x.numpy(), inputs[indices[:split_idx]])
    np.testing.assert_array_equal(data.train_y.numpy(), outputs[indices[:split_idx]])
    np.testing.assert_array_equal(data.test_x.numpy(), inputs[indices[split_idx:]])
    np.testing.assert_array_equal(data.test_y.numpy(), outputs[indices[split_idx:]])


def test_numpy_split_does_not_touch_numpys_global_state():
    np.random.seed(7)
    expect = np.random.rand()
    np.random.seed(7)
    make_dataset(TaskConfig(kind="modular", p=11, split="numpy", seed=3))
    assert np.random.rand() == expect


def test_cossin_column_norm_and_float64():
    """PAIR's gen_fixed_embed: cos and sin columns each of unit norm over the p tokens, in float64."""
    p, k = 67, 1
    a = np.arange(p)
    ref = np.stack([np.cos(2 * np.pi * a * k / p), np.sin(2 * np.pi * a * k / p)], axis=1)
    ref /= np.linalg.norm(ref, axis=0)
    cfg = preset("modadd-cossin5")
    assert (cfg.model.embed_norm, cfg.model.init, cfg.model.dtype, cfg.task.seed) == ("columns", "pair", "float64", 86)
    model = build_model(cfg.model, cfg.task, seed=0)
    assert model.W_E.dtype == torch.float64
    np.testing.assert_allclose(model.W_E.numpy(), ref, rtol=0, atol=1e-15)
    assert all(prm.dtype == torch.float64 for prm in model.parameters())
    rows = cossin_embedding(p, k)
    torch.testing.assert_close(rows.norm(dim=1), torch.ones(p))

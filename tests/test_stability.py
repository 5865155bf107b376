"""Numerical stability options: StableMax, the loss precision, ⊥Grad, Grokfast-MA, in
the single trainer and the batched engine, and the stability probes - against float64 reference
implementations of the publishers' formulas."""

import json
from collections import deque
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_sweep_engine import _assert_same

from mechgrok import ConfigError, Run, train
from mechgrok.metrics import example_nll, log_probs, loss_and_accuracy, stablemax_s
from mechgrok.probes.stability import stability_over_training
from mechgrok.store import FILES
from mechgrok.sweep import EngineConfig, train_batch
from mechgrok.sweep._kernels import ce_loss_grad, orthograd_rows_
from mechgrok.tasks import make_dataset
from mechgrok.train import grokfast_ma_update, orthograd_


def _ref_log_stablemax(x):
    """Prieto et al.'s utils.py, in float64."""
    x = x.double()
    s = torch.where(x < 0, 1 / (1 - x + 1e-30), x + 1)
    return torch.log(s / s.sum(-1, keepdim=True))


def test_stablemax_matches_the_publisher_and_has_finite_gradients():
    x = torch.tensor([[-3.0, -1.0, 0.0, 1.0, 2.5], [1.0, 1.0, -0.5, 7.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(log_probs(x, "stablemax", "float64"), _ref_log_stablemax(x), rtol=1e-12, atol=0)
    assert torch.allclose(log_probs(x, "stablemax").exp().sum(-1), torch.ones(2, dtype=torch.float64))
    # x = 1 exactly: the discarded 1 / (1 - x) branch must not turn the gradient into NaN
    z = x.clone().requires_grad_(True)
    example_nll(z, torch.tensor([0, 3]), "stablemax", "float32").sum().backward()
    assert torch.isfinite(z.grad).all()
    assert torch.equal(stablemax_s(torch.tensor([-1.0, 0.0, 2.0])), torch.tensor([0.5, 1.0, 3.0]))


def test_float32_softmax_collapses_where_stablemax_and_float64_do_not():
    y = torch.tensor([0])
    # margin 25: float32 rounds the label's probability to exactly 1 - zero loss, zero label gradient
    # (Prieto et al.'s softmax collapse); the other logits keep gradients ~exp(-25) (float64 resolves 1 + 3 exp(-25))
    grads, losses = {}, {}
    for loss, dtype in [("cross_entropy", "float32"), ("cross_entropy", "float64"), ("stablemax", "float32")]:
        z = torch.tensor([[25.0, 0.0, 0.0, 0.0]], requires_grad=True)
        nll = example_nll(z, y, loss, dtype)
        nll.sum().backward()
        grads[loss, dtype], losses[loss, dtype] = z.grad, float(nll.detach())
    assert losses["cross_entropy", "float32"] == 0.0 and float(grads["cross_entropy", "float32"][0, 0]) == 0.0
    assert losses["cross_entropy", "float64"] > 0 and float(grads["cross_entropy", "float64"][0, 0]) < 0
    assert losses["stablemax", "float32"] == pytest.approx(-np.log(26 / 29), rel=1e-6)
    # margin 120: every probability but the label's underflows, the whole gradient is exactly zero
    z = torch.tensor([[120.0, 0.0, 0.0, 0.0]], requires_grad=True)
    example_nll(z, y, "cross_entropy", "float32").sum().backward()
    assert torch.count_nonzero(z.grad) == 0


def test_loss_dtype_float32_is_torch_cross_entropy_and_default_unchanged():
    torch.manual_seed(1)
    z, y = torch.randn(6, 5) * 3, torch.randint(0, 5, (6,))
    assert torch.equal(loss_and_accuracy(z, y)[0], F.cross_entropy(z.double(), y))
    l32, _ = loss_and_accuracy(z, y, dtype="float32")
    assert l32.dtype == torch.float64 and float(l32) == float(F.cross_entropy(z, y))
    lb, _ = loss_and_accuracy(z, y, dtype="bfloat16")
    assert abs(float(lb) - float(F.cross_entropy(z.double(), y))) < 0.1


def test_engine_loss_grad_matches_autograd_of_the_trainer_loss():
    torch.manual_seed(2)
    logits, y = torch.randn(3, 6, 5) * 4, torch.randint(0, 5, (3, 6))
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[1, 4:] = False
    count = mask.sum(1)
    for loss, dtype in [("stablemax", "float64"), ("cross_entropy", "float32"), ("stablemax", "float32")]:
        lo, ac, g = ce_loss_grad(logits, y, mask, count, div=5.0, loss=loss, dtype=dtype)
        for c in range(3):
            n = int(count[c])
            z = logits[c, :n].clone().requires_grad_(True)
            ref, acc = loss_and_accuracy(z, y[c, :n], "mean_classes", loss, dtype)
            ref.backward()
            torch.testing.assert_close(lo[c], ref.detach(), rtol=1e-6, atol=1e-7)
            assert float(ac[c]) == float(acc)
            torch.testing.assert_close(g[c, :n], z.grad, rtol=1e-5, atol=1e-7)
            assert torch.count_nonzero(g[c, n:]) == 0


def test_orthograd_matches_the_publisher_formula():
    torch.manual_seed(3)
    w, g = torch.randn(4, 3), torch.randn(4, 3)
    g2 = g.clone()
    orthograd_([w], [g2])
    w64, g64 = w.double().reshape(-1), g.double().reshape(-1)
    ref = g64 - (w64 @ g64) / (w64 @ w64) * w64
    ref = ref * g64.norm() / ref.norm()
    torch.testing.assert_close(g2.double().reshape(-1), ref, rtol=1e-5, atol=1e-6)
    assert abs(float(g2.double().reshape(-1) @ w64)) < 1e-5
    # the batched version is the per-row one
    W, G = torch.randn(3, 4, 2), torch.randn(3, 4, 2)
    Gr = G.clone()
    orthograd_rows_([W], [Gr])
    for r in range(3):
        gr = G[r].clone()
        orthograd_([W[r]], [gr])
        torch.testing.assert_close(Gr[r], gr, rtol=1e-6, atol=1e-7)
    # a zero tensor keeps its gradient (the publisher's 1e-30 guard)
    z, gz = torch.zeros(3), torch.tensor([1.0, 2.0, 3.0])
    orthograd_([z], [gz])
    assert torch.allclose(gz, torch.tensor([1.0, 2.0, 3.0]))


def test_grokfast_ma_matches_lee_et_al_gradfilter_ma():
    torch.manual_seed(4)
    window, lamb = 3, 2.0
    hist, ours, filled = deque(maxlen=window), None, 0
    for _ in range(7):
        g = torch.randn(5).double()
        # gradfilter_ma(warmup=True, filter_type='mean'): filtered once the window is full
        hist.append(g.clone())
        ref = g + lamb * sum(hist) / len(hist) if len(hist) == window else g.clone()
        gg = [g.clone()]
        ours, filled = grokfast_ma_update(gg, ours, filled, window, lamb)
        torch.testing.assert_close(gg[0], ref, rtol=1e-12, atol=1e-12)


def _ref_train_orthograd(cfg):
    """A plain loop: float64 log-softmax CE, Prieto et al.'s OrthoGrad wrapper around AdamW."""
    from mechgrok.models import build_model

    data = make_dataset(cfg.task)
    model = build_model(cfg.model, cfg.task, seed=cfg.train.seed)
    params = list(model.parameters())
    opt = torch.optim.AdamW(
        params, lr=cfg.optim.lr, betas=cfg.optim.betas, eps=cfg.optim.eps, weight_decay=cfg.optim.weight_decay
    )
    for _ in range(cfg.train.steps):
        opt.zero_grad()
        F.cross_entropy(model(data.train_x).double(), data.train_y).backward()
        with torch.no_grad():
            for p in params:
                w, g = p.view(-1), p.grad.view(-1)
                g_orth = g - torch.dot(w, g) / (torch.dot(w, w) + 1e-30) * w
                p.grad.copy_((g_orth * (g.norm(2) / (g_orth.norm(2) + 1e-30))).view_as(p.grad))
        opt.step()
    return model


def test_trainer_orthograd_is_the_publisher_wrapper(tiny_modadd):
    cfg = tiny_modadd.with_overrides({"optim.orthograd": True, "optim.weight_decay": 0.0, "train.steps": 30})
    ours = train(cfg, progress=False).model.state_dict()
    ref = _ref_train_orthograd(cfg).state_dict()
    for k in ref:
        torch.testing.assert_close(ours[k], ref[k], rtol=1e-5, atol=1e-6, msg=k)
    plain = train(cfg.with_overrides({"optim.orthograd": False}), progress=False).model.state_dict()
    assert not torch.allclose(plain["embed.W_E"], ours["embed.W_E"])


@pytest.mark.parametrize("engine", ["fused", "vmap"])
@pytest.mark.parametrize(
    "extra",
    [
        {"optim.loss": "stablemax"},
        {"optim.loss_dtype": "float32"},
        {"optim.orthograd": True},
        {"optim.orthograd": True, "optim.grokfast_lambda": 2.0, "optim.grad_clip": 0.5, "optim.loss": "stablemax"},
    ],
    ids=["stablemax", "float32", "orthograd", "combined"],
)
def test_batched_equals_single_stability_options(tiny_modadd, engine, extra):
    base = tiny_modadd.with_overrides({"train.steps": 40, **extra})
    variants = [
        {"train.seed": 0, "optim.weight_decay": 0.0},
        {"train.seed": 1, "optim.wd_schedule": "on@20"},
        {"train.seed": 2, "optim.lr": 3e-3, "optim.warmup_steps": 5},
    ]
    configs = [base.with_overrides(v) for v in variants]
    for cfg, res in zip(configs, train_batch(configs, engine=EngineConfig(engine=engine), progress=False)):
        _assert_same(res, train(cfg, progress=False))


@pytest.mark.parametrize(
    "extra",
    [
        {"optim.grokfast_filter": "ma", "optim.grokfast_window": 4, "optim.grokfast_lambda": 2.0},
        {"optim.orthograd": True},
    ],
    ids=["ma", "orthograd"],
)
def test_resume_continues_ma_and_orthograd_exactly(tiny_modadd, tmp_path, extra):
    cfg = tiny_modadd.with_overrides({"optim.batch_size": 8, "train.eval_every": 5, **extra})
    full = train(cfg, tmp_path / "full", progress=False).model.state_dict()
    # the same run stopped at step 30 (mid-window for the MA filter), then resumed to 60
    short = cfg.with_overrides({"train.steps": 30})
    train(short, tmp_path / "cut", progress=False)
    (tmp_path / "cut" / FILES["summary"]).unlink()
    path = tmp_path / "cut" / FILES["config"]
    stored = json.loads(path.read_text())
    stored["config"]["train"]["steps"] = 60
    path.write_text(json.dumps(stored))
    assert Run.open(tmp_path / "cut").config.train.steps == 60
    cont = train(None, tmp_path / "cut", resume=True, progress=False)
    assert cont.summary["resumed_from"] == 30
    for k, v in full.items():
        assert torch.equal(cont.model.state_dict()[k], v), k


def test_config_and_engine_refusals(tiny_modadd, tiny_parity):
    with pytest.raises(ConfigError, match="optim.grokfast_window"):
        tiny_modadd.with_overrides({"optim.grokfast_window": 0})
    with pytest.raises(ConfigError, match="optim.loss"):
        tiny_modadd.with_overrides({"optim.loss": "sparsemax"})
    with pytest.raises(ConfigError, match="optim.loss_dtype"):
        tiny_modadd.with_overrides({"optim.loss_dtype": "float8"})
    with pytest.raises(ConfigError, match="optim.loss: 'stablemax'"):
        tiny_parity.with_overrides({"model.n_out": 1, "optim.loss": "stablemax"})
    ma = tiny_modadd.with_overrides({"optim.grokfast_filter": "ma", "optim.grokfast_lambda": 1.0})
    with pytest.raises(ConfigError, match="optim.grokfast_filter"):
        train_batch([ma], progress=False)


def test_stability_probe_against_float64_reference(tiny_modadd, tmp_path):
    cfg = tiny_modadd.with_overrides({"optim.weight_decay": 0.0, "optim.loss_dtype": "float32"})
    run = train(cfg, tmp_path / "r", progress=False).run
    traj = run.trajectory()
    # a scaled-up copy of the last checkpoint: its confident samples collapse in float32
    big = {k: v.clone() for k, v in traj.params.items()}
    for k in big:
        big[k][-1] *= 6.0
    traj.params.update(big)
    st = stability_over_training(traj)
    data = make_dataset(cfg.task)
    assert st["collapse_fraction"].shape == traj.steps.shape
    for i in (0, len(traj) - 1):
        model = traj.model(i)
        logits = model(data.train_x)
        z = logits.detach().float()
        p = z.softmax(-1)  # float32: the run's loss precision
        onehot = F.one_hot(data.train_y, z.shape[-1]).float()
        collapsed = p.gather(-1, data.train_y[:, None])[:, 0] == 1.0
        assert float(st["collapse_fraction"][i]) == float(collapsed.double().mean())
        assert float(st["zero_grad_fraction"][i]) == float(((p - onehot) == 0).all(-1).double().mean())
        assert float(st["logit_norm"][i]) == pytest.approx(float(z.double().norm(dim=-1).mean()), rel=1e-6)
        F.cross_entropy(logits.float(), data.train_y).backward()
        g = torch.cat([q.grad.double().reshape(-1) for q in model.parameters()])
        w = torch.cat([q.detach().double().reshape(-1) for q in model.parameters()])
        assert float(st["alignment"][i]) == pytest.approx(float(-(g @ w) / (g.norm() * w.norm())), rel=1e-4, abs=1e-6)
    assert float(st["collapse_fraction"][0]) == 0.0 and float(st["collapse_fraction"][-1]) > 0.5
    assert set(st["alignment_per_tensor"]) == set(traj.params)


def test_analyze_stores_stability_and_summarises_collapse(tiny_modadd, tmp_path):
    from mechgrok import analyze

    cfg = tiny_modadd.with_overrides({"optim.weight_decay": 0.0, "optim.loss_dtype": "float32"})
    train(cfg, tmp_path / "r", progress=False)
    a = analyze(tmp_path / "r")
    ref = stability_over_training(Run.open(tmp_path / "r"))
    for key in ("collapse_fraction", "zero_grad_fraction", "alignment", "logit_norm"):
        torch.testing.assert_close(a[f"stability/{key}"], ref[key], equal_nan=True)
    assert "stability/alignment/embed.W_E" in a
    assert "Softmax collapse at the last checkpoint" in a.summary and "float32" in a.summary


def test_stability_figure_draws_the_probe_and_the_run_report_has_it(tiny_modadd, tmp_path):
    from mechgrok import analyze
    from mechgrok.report import stability_figure, write_run_report

    cfg = tiny_modadd.with_overrides({"optim.weight_decay": 0.0, "optim.loss_dtype": "float32"})
    train(cfg, tmp_path / "r", progress=False)
    a = analyze(tmp_path / "r")
    fig = stability_figure(
        a.steps, a["stability/collapse_fraction"], a["stability/alignment"], a["stability/logit_norm"]
    )
    keep = a.steps.numpy() > 0
    np.testing.assert_allclose(fig.data[0].y, 100 * a["stability/collapse_fraction"].numpy()[keep])
    np.testing.assert_allclose(fig.data[1].y, a["stability/alignment"].numpy()[keep])
    np.testing.assert_allclose(fig.data[2].y, a["stability/logit_norm"].numpy()[keep])
    path = write_run_report(tmp_path / "r")
    assert "Numerical stability" in Path(path).read_text()

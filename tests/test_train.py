import math

import torch
import torch.nn.functional as F

from mechgrok import build_model, detect_events, make_dataset, train


def test_tiny_parity_memorises_then_generalises(tiny_parity):
    cfg = tiny_parity.with_overrides({"train.steps": 400})
    res = train(cfg, None, progress=False)
    ev = detect_events(res.metrics)
    assert ev.memorised_step is not None and ev.memorised_step < 200
    assert res.summary["final_train_acc"] == 1.0
    assert res.summary["final_test_acc"] >= 0.95
    assert len(res.metrics["step"]) == 401 and res.metrics["step"][-1] == 400


def test_training_is_deterministic(tiny_modadd):
    a = train(tiny_modadd, None, progress=False)
    b = train(tiny_modadd, None, progress=False)
    assert a.metrics["train_loss"] == b.metrics["train_loss"]
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k])
    c = train(tiny_modadd.with_overrides({"train.seed": 1}), None, progress=False)
    assert a.metrics["train_loss"] != c.metrics["train_loss"]


def _reference_adamw(cfg, steps):
    """Float64 hand-written AdamW + L1 + piecewise wd + warmup + Grokfast, per the docs."""
    oc = cfg.optim
    data = make_dataset(cfg.task)
    model = build_model(cfg.model, cfg.task, seed=cfg.train.seed).double()
    params = list(model.parameters())
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    ema = None
    b1, b2 = oc.betas
    for t in range(steps):
        logits = model(data.train_x.double() if cfg.task.kind == "parity" else data.train_x)
        loss = F.cross_entropy(logits, data.train_y) + oc.l1_at(t) * sum(p.abs().sum() for p in params)
        grads = torch.autograd.grad(loss, params)
        if oc.grokfast_lambda:
            ema = (
                [g.clone() for g in grads]
                if ema is None
                else [oc.grokfast_alpha * e + (1 - oc.grokfast_alpha) * g for e, g in zip(ema, grads)]
            )
            grads = [g + oc.grokfast_lambda * e for g, e in zip(grads, ema)]
        lr, wd = oc.lr_at(t), oc.weight_decay_at(t)
        with torch.no_grad():
            for i, (p, g) in enumerate(zip(params, grads)):
                p.mul_(1 - lr * wd)
                m[i] = b1 * m[i] + (1 - b1) * g
                v[i] = b2 * v[i] + (1 - b2) * g * g
                mhat, vhat = m[i] / (1 - b1 ** (t + 1)), v[i] / (1 - b2 ** (t + 1))
                p.sub_(lr * mhat / (vhat.sqrt() + oc.eps))
    return model


def test_optimiser_matches_float64_reference(tiny_parity):
    cfg = tiny_parity.with_overrides(
        {
            "train.steps": 8,
            "optim.wd_schedule": "0:0,4:0.5",
            "optim.l1": "1e-3",
            "optim.warmup_steps": "3",
            "optim.grokfast_lambda": "2.0",
            "optim.grokfast_alpha": "0.9",
        }
    )
    res = train(cfg, None, progress=False)
    ref = _reference_adamw(cfg, 8)
    for k, p in ref.state_dict().items():
        torch.testing.assert_close(res.model.state_dict()[k].double(), p, rtol=2e-4, atol=2e-6)
    assert res.metrics["weight_decay"][:6] == [0.0, 0.0, 0.0, 0.0, 0.5, 0.5]
    assert math.isclose(res.metrics["lr"][0], cfg.optim.lr / 3)


def test_weight_decay_schedule_changes_training(tiny_parity):
    base = train(tiny_parity, None, progress=False)
    late = train(tiny_parity.with_overrides({"optim.wd_schedule": "on@60"}), None, progress=False)
    # identical until the switch (wd 0 vs 0.1 differ from step 0, so compare with wd off)
    off = train(tiny_parity.with_overrides({"optim.wd_schedule": "off"}), None, progress=False)
    assert late.metrics["train_loss"][:61] == off.metrics["train_loss"][:61]
    assert late.metrics["train_loss"][70] != off.metrics["train_loss"][70]
    assert base.metrics["weight_norm"][-1] < off.metrics["weight_norm"][-1]


def test_minibatch_and_clipping_run(tiny_modadd):
    res = train(
        tiny_modadd.with_overrides({"optim.batch_size": "8", "optim.grad_clip": "0.5", "train.eval_every": "5"}),
        None,
        progress=False,
    )
    assert len(res.metrics["step"]) == 60 // 5 + 1
    assert all(0 <= a <= 1 for a in res.metrics["train_acc"])

"""The batched engine against the single-model trainer (the reference), member by member."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mechgrok import ConfigError, Run, build_model, make_dataset, preset, train
from mechgrok.store import FILES
from mechgrok.sweep import EngineConfig, train_batch
from mechgrok.sweep._kernels import adamw_step, ce_loss_grad, clip_grad_norms, make_model
from mechgrok.train import loss_and_accuracy


def _assert_same(batched, single, rtol=1e-4, atol=1e-5):
    """Same metric rows and final weights (to float tolerance; an accuracy may differ by one
    example whose two top logits are within rounding of each other)."""
    mb, ms = batched.metrics, single.metrics
    assert list(mb["step"]) == list(ms["step"])
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "weight_norm", "lr", "weight_decay", "l1"):
        a, b = np.asarray(mb[key], float), np.asarray(ms[key], float)
        assert np.array_equal(np.isnan(a), np.isnan(b)), key
        tol = 0.026 if key.endswith("_acc") else atol
        np.testing.assert_allclose(a[~np.isnan(a)], b[~np.isnan(b)], rtol=rtol, atol=tol, err_msg=key)
    wb, ws = batched.model.state_dict(), single.model.state_dict()
    assert wb.keys() == ws.keys()
    for k in ws:
        torch.testing.assert_close(wb[k], ws[k], rtol=rtol, atol=atol, msg=k)


def _check(configs, engine=None, **kw):
    results = train_batch(configs, engine=engine or EngineConfig(), progress=False, **kw)
    for cfg, res in zip(configs, results):
        _assert_same(res, train(cfg, progress=False))
    return results


def _per_member(base, variants):
    return [base.with_overrides(v) for v in variants]


# per-member seed, lr, weight decay (and schedule), warmup, L1, training set
VARIANTS_MODULAR = [
    {"train.seed": 0, "optim.weight_decay": 1.0},
    {"train.seed": 1, "optim.lr": 3e-3, "optim.wd_schedule": "on@20"},
    {"train.seed": 2, "task.train_fraction": 0.7, "optim.l1": 1e-3},
    {"train.seed": 3, "optim.warmup_steps": 10, "optim.weight_decay": 0.0, "task.seed": 4},
]


def test_batched_equals_single_modular_mlp(tiny_modadd):
    _check(_per_member(tiny_modadd.with_overrides({"train.eval_every": 3}), VARIANTS_MODULAR))


@pytest.mark.parametrize("engine", ["fused", "vmap"])
@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"model.tied_embed": False, "model.bias": True},
        {"optim.grokfast_lambda": 2.0},
        {"optim.grad_clip": 0.05},
        {"optim.batch_size": 8, "train.eval_every": 5},
    ],
    ids=["plain", "untied-bias", "grokfast", "clip", "minibatch"],
)
def test_batched_equals_single_options(tiny_modadd, engine, extra):
    base = tiny_modadd.with_overrides({"train.steps": 40, **extra})
    _check(_per_member(base, VARIANTS_MODULAR[:3]), EngineConfig(engine=engine))


def test_batched_equals_single_parity(tiny_parity):
    variants = [
        {"train.seed": 0},
        {"train.seed": 1, "optim.weight_decay": 1.0, "model.bias": True},
        {"train.seed": 2, "task.n_train": 40, "optim.lr": 3e-3},
    ]
    base = tiny_parity.with_overrides({"train.eval_every": 4})
    _check(_per_member(base, variants[:1] + variants[2:]))
    _check(_per_member(base, variants[:1] + variants[2:]), EngineConfig(engine="vmap"))


def test_batched_equals_single_parity_bce_and_cossin(tiny_parity):
    bce = tiny_parity.with_overrides({"model.n_out": 1, "optim.l1": 1e-4, "optim.weight_decay": 0.0, "train.steps": 60})
    _check(_per_member(bce, [{"train.seed": 0}, {"train.seed": 1, "task.n_train": 30}]))
    cossin = preset("modadd-cossin5").with_overrides({"task.p": 11, "train.steps": 60, "train.eval_every": 5})
    _check(_per_member(cossin, [{"train.seed": 0}, {"train.seed": 1, "optim.lr": 3e-3}]))


PAIR_OPTIONS = {
    "model.init": "pair",
    "model.dtype": "float64",
    "optim.loss_reduction": "mean_classes",
    "task.split": "numpy",
}


@pytest.mark.parametrize("engine", ["fused", "vmap"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_batched_equals_single_pair_options(tiny_modadd, tiny_parity, engine, dtype):
    """PAIR's options (haiku initialisers, loss over batch and classes, numpy split, float64) in
    the engine's fused and vmap paths: the single trainer's trajectories (float64: to 1e-10)."""
    opts = {**PAIR_OPTIONS, "model.dtype": dtype}
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == "float64" else {}
    variants = [
        {"train.seed": 0, "task.seed": 5},
        {"train.seed": 1, "optim.lr": 3e-3, "optim.l1": 1e-3, "task.seed": 6},
    ]
    cfgs = [
        tiny_modadd.with_overrides({**opts, "train.eval_every": 3}),
        tiny_modadd.with_overrides({**opts, "model.tied_embed": False, "model.bias": True, "train.steps": 30}),
        preset("modadd-cossin5").with_overrides(
            {**opts, "task.p": 11, "train.steps": 40, "train.eval_every": 5, "model.embed_norm": "columns"}
        ),
    ]
    parity = tiny_parity.with_overrides({k: v for k, v in opts.items() if k != "task.split"} | {"train.steps": 40})
    for base in cfgs + [parity, parity.with_overrides({"model.n_out": 1, "model.bias": False})]:
        configs = _per_member(base, variants if base.task.kind == "modular" else [{"train.seed": s} for s in (0, 1)])
        results = train_batch(configs, engine=EngineConfig(engine=engine), progress=False)
        for cfg, res in zip(configs, results):
            ref = train(cfg, progress=False)
            _assert_same(res, ref, **tol)
            assert next(iter(res.model.state_dict().values())).dtype == getattr(torch, dtype)


@pytest.mark.parametrize(
    "bias,n_out,n_bits", [(True, 2, 8), (False, 2, 8), (True, 1, 8), (False, 1, 8), (True, 2, 14), (False, 1, 15)]
)
def test_parity_shared_inputs_wide_kernel(tiny_parity, bias, n_out, n_bits):
    """Members sharing one training set go through the wide-GEMM path of the fused parity MLP
    (and a member with its own set through the per-member path), with steps that skip the float64
    metrics (log_every > 1): same weights as the single trainer after every member's run, and the
    same logged rows where both log. 14 bits + bias and 15 bits get the zero pad column (k = 16)."""
    base = tiny_parity.with_overrides(
        {"model.bias": bias, "model.n_out": n_out, "task.n_bits": n_bits, "train.steps": 80, "train.eval_every": 8}
    )
    configs = _per_member(
        base,
        [
            {"train.seed": s, "optim.weight_decay": w, "optim.lr": lr}
            for s, w, lr in [(0, 0.1, 1e-2), (1, 1.0, 3e-3), (2, 0.0, 1e-2)]
        ],
    )
    configs.append(base.with_overrides({"train.seed": 3, "task.n_train": 50}))
    results = train_batch(configs, engine=EngineConfig(log_every=5), progress=False)
    for cfg, res in zip(configs, results):
        ref = train(cfg, progress=False)
        rows = {int(s): i for i, s in enumerate(ref.metrics["step"])}
        assert list(res.metrics["step"]) == sorted(set(range(0, 81, 8)) | set(range(0, 81, 5)))
        for key in ("train_loss", "test_loss", "weight_norm"):
            ours = np.asarray(res.metrics[key], float)
            theirs = np.asarray([ref.metrics[key][rows[int(s)]] for s in res.metrics["step"]], float)
            np.testing.assert_allclose(
                ours[~np.isnan(theirs)], theirs[~np.isnan(theirs)], rtol=1e-4, atol=1e-5, err_msg=key
            )
        for k, v in ref.model.state_dict().items():
            torch.testing.assert_close(res.model.state_dict()[k], v, rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.parametrize("n_bits", [8, 14])
def test_member_trajectory_does_not_depend_on_its_chunk(tiny_parity, n_bits):
    """Bitwise: a member trains the same whether it shares its chunk (and the wide GEMMs) with
    four others, with one other, or runs alone; resume and slot refills rely on this."""
    base = tiny_parity.with_overrides({"train.steps": 150, "train.eval_every": 10, "task.n_bits": n_bits})
    configs = _per_member(
        base,
        [{"train.seed": s, "optim.weight_decay": w} for s, w in [(0, 0.1), (1, 1.0), (2, 0.3), (3, 0.0), (4, 0.1)]],
    )
    runs = [train_batch(configs, engine=EngineConfig(max_batch=b), progress=False) for b in (5, 2, 1)]
    for i in range(len(configs)):
        for other in runs[1:]:
            assert np.array_equal(runs[0][i].metrics["train_loss"], other[i].metrics["train_loss"])
            for k, v in runs[0][i].model.state_dict().items():
                assert torch.equal(v, other[i].model.state_dict()[k]), (i, k)


def test_batched_equals_single_transformer_and_rnn():
    tr = preset("modadd-transformer").with_overrides(
        {
            "task.p": 7,
            "model.d_model": 16,
            "model.d_mlp": 16,
            "model.d_head": 4,
            "train.steps": 15,
            "train.eval_every": 5,
        }
    )
    _check(_per_member(tr, [{"train.seed": 0}, {"train.seed": 1}]))  # vmap
    rnn = preset("rnn-mod91").with_overrides(
        {"task.p": 5, "model.d_model": 8, "train.steps": 15, "optim.batch_size": 8, "train.eval_every": 5}
    )
    _check(_per_member(rnn, [{"train.seed": 0}, {"train.seed": 1}]))  # member-by-member loop


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_fused_recurrent_equals_single_rnn_and_lstm(cell):
    """engine='fused' for RNN / LSTM (stacked bmm recurrences) against torch's nn.RNN / nn.LSTM.

    In float64 the loss and gradients equal autograd through the real module to 1e-12, for
    shared and per-member inputs. Trained in float32 (minibatches, and full batches on shared or
    per-member training sets, per-member weight decay and train fraction) the trajectories agree
    to 1e-3 (a third of the learning rate): the rounding differs from torch's recurrent kernels,
    and Adam turns a near-zero gradient component (here the RNN's biases) into a step of about
    +-lr whose sign is rounding noise; the weights agree to ~1e-6, the RNN biases to ~2e-4."""
    base = preset(f"{cell}-mod91").with_overrides(
        {"task.p": 5, "model.d_model": 8, "train.steps": 15, "optim.batch_size": 8, "train.eval_every": 5}
    )
    data = make_dataset(base.task)
    models = [build_model(base.model, base.task, seed=s).double() for s in (0, 1)]
    bm = make_model(base, models[0], "fused")
    params = {
        k: torch.stack([dict(m.named_parameters())[k].detach() for m in models])
        for k, _ in models[0].named_parameters()
    }
    x, y = data.train_x, data.train_y
    for shared in (True, False):
        xs, ys = (x, y.expand(2, -1)) if shared else (torch.stack([x, x.flip(0)]), torch.stack([y, y.flip(0)]))
        loss, _, grads = bm.loss_grad(params, xs, ys, None, torch.full((2,), len(x)), shared)
        for i, m in enumerate(models):
            xi, yi = (x, y) if shared or i == 0 else (x.flip(0), y.flip(0))
            ref = F.cross_entropy(m(xi), yi)
            ref_grads = torch.autograd.grad(ref, list(m.parameters()))
            assert abs(loss[i].item() - ref.item()) < 1e-12
            for (k, _), g in zip(m.named_parameters(), ref_grads):
                torch.testing.assert_close(grads[k][i], g, rtol=1e-10, atol=1e-12, msg=lambda m, k=k: f"{k}: {m}")
    variants = [{"train.seed": 0}, {"train.seed": 1, "optim.weight_decay": 0.1}]
    fused = EngineConfig(engine="fused")
    for cfg, res in zip(
        _per_member(base, variants), train_batch(_per_member(base, variants), engine=fused, progress=False)
    ):
        _assert_same(res, train(cfg, progress=False), rtol=1e-3, atol=1e-3)
    full = _per_member(
        base.with_overrides({"optim.batch_size": 0}), variants + [{"train.seed": 2, "task.train_fraction": 0.7}]
    )
    for cfg, res in zip(full, train_batch(full, engine=fused, progress=False)):
        _assert_same(res, train(cfg, progress=False), rtol=1e-3, atol=1e-3)


def test_slots_are_refilled_when_members_finish(tiny_parity):
    """max_batch < members: waiting members take the rows of finished ones (different step
    counts make them finish at different times); trajectories are unchanged."""
    base = tiny_parity.with_overrides({"train.eval_every": 5})
    configs = _per_member(
        base, [{"train.seed": s, "train.steps": n} for s, n in [(0, 40), (1, 90), (2, 30), (3, 60), (4, 50)]]
    )
    _check(configs, EngineConfig(max_batch=2))


def test_parallel_chunk_workers(tiny_parity):
    """Chunks trained by two threads side by side (disjoint rows): the same trajectories as the
    single trainer, and bitwise the same as one worker (so 'one per core' is safe to default to)."""
    base = tiny_parity.with_overrides({"train.eval_every": 5, "train.steps": 60})
    configs = _per_member(
        base, [{"train.seed": s, "optim.weight_decay": w} for s, w in [(0, 0.1), (1, 1.0), (2, 0.3), (3, 0.0)]]
    )
    threads = torch.get_num_threads()
    _check(configs, EngineConfig(workers=2, chunk_mb=0.5))  # small chunks: several per step
    assert torch.get_num_threads() == threads
    runs = [train_batch(configs * 3, engine=EngineConfig(workers=w, chunk_mb=0.5), progress=False) for w in (1, 2, 3)]
    for i in range(len(configs) * 3):
        for other in runs[1:]:
            assert np.array_equal(runs[0][i].metrics["train_loss"], other[i].metrics["train_loss"])
            for k, v in runs[0][i].model.state_dict().items():
                assert torch.equal(v, other[i].model.state_dict()[k]), (i, k)
    with pytest.raises(ConfigError, match="engine.workers"):
        EngineConfig(workers=-1)


def test_member_run_folders_are_ordinary_runs(tiny_modadd, tmp_path):
    configs = _per_member(tiny_modadd, VARIANTS_MODULAR[:2])
    outs = [tmp_path / "a", tmp_path / "b"]
    batched = train_batch(configs, outs, progress=False)
    train(configs[0], tmp_path / "single", progress=False)
    a, s = Run.open(outs[0]), Run.open(tmp_path / "single")
    assert a.config == configs[0]
    assert a.steps == s.steps  # the same dense checkpoint schedule
    assert (a.path / FILES["resume"]).exists() and a.summary()["events"]["phase"]
    ma, ms = a.metrics(), s.metrics()
    assert list(ma) == list(ms) and list(ma["step"]) == list(ms["step"])
    np.testing.assert_allclose(ma["train_loss"], ms["train_loss"], rtol=1e-4)
    for step in a.steps:
        ca, cs = a.checkpoint(step), s.checkpoint(step)
        for k in cs:
            torch.testing.assert_close(ca[k], cs[k], rtol=1e-4, atol=1e-5)
    traj = a.trajectory()
    assert traj.params["embed.W_E"].shape[0] == len(a.steps)
    assert batched[0].run is not None and batched[0].summary["steps"] == configs[0].train.steps


def test_log_every_keeps_evaluation_rows(tiny_parity):
    cfg = tiny_parity.with_overrides({"train.eval_every": 10, "train.steps": 50})
    res = train_batch([cfg], engine=EngineConfig(log_every=20), progress=False)[0]
    assert list(res.metrics["step"]) == [0, 10, 20, 30, 40, 50]


def test_early_stop_and_single_trainer_resume(tiny_parity, tmp_path):
    """A member stopped early keeps the state it was logged with (no update at the stop step),
    and the single trainer (`mechgrok train --resume`) continues it like the engine would have."""
    cfg = tiny_parity.with_overrides({"train.steps": 400, "train.eval_every": 5, "optim.weight_decay": 1.0})
    out = tmp_path / "m"
    res = train_batch([cfg], [out], engine=EngineConfig(early_stop=True, patience=20), progress=False)[0]
    s = res.summary
    stop = s["steps"]
    assert s["stopped_early"] == "generalised" and stop < 400 and s["planned_steps"] == 400
    assert s["events"]["generalised_step"] is not None
    run = Run.open(out)
    assert run.steps[-1] == stop and run.resume_step() == stop
    assert run.metrics()["step"][-1] == stop
    # the same member without early stop passes through the same state at the stop step
    ref_out = tmp_path / "ref"
    train_batch([cfg.with_overrides({"train.checkpoint_every": 5})], [ref_out], progress=False)
    ref = Run.open(ref_out)
    for k, v in ref.checkpoint(stop).items():
        assert torch.equal(run.checkpoint(stop)[k], v), k
    # continue the stopped member with the single-model trainer
    (out / FILES["summary"]).unlink()
    cont = train(None, out, resume=True, progress=False)
    assert cont.summary["resumed_from"] == stop and Run.open(out).steps[-1] == 400
    mc, mr = Run.open(out).metrics(), ref.metrics()
    after = (mr["step"] >= stop) & (mr["step"] <= stop + 20)
    keep = np.isin(mc["step"], mr["step"][after])
    assert keep.sum() == after.sum()
    # float-level differences between engines grow later (Adam normalises near-zero gradients)
    np.testing.assert_allclose(mc["train_loss"][keep], mr["train_loss"][after], rtol=1e-3)


def test_members_must_share_the_architecture(tiny_parity):
    from mechgrok import ConfigError

    with pytest.raises(ConfigError, match="differ in a field a batch must share"):
        train_batch([tiny_parity, tiny_parity.with_overrides({"model.d_mlp": 8})], progress=False)


# ----------------------------------------------------------------------------------------------
# numerics


def test_adamw_step_is_torch_adamw_bitwise():
    """Per-model lr / weight decay / step count: the same floats as torch.optim.AdamW."""
    torch.manual_seed(0)
    c = 4
    lrs, wds, betas, eps = [1e-3, 3e-2, 1e-1, 5e-3], [0.0, 1.0, 0.1, 3.0], (0.9, 0.98), 1e-8
    P = torch.randn(c, 5, 3)
    M, V = torch.zeros_like(P), torch.zeros_like(P)
    ref = [P[i].clone().requires_grad_(True) for i in range(c)]
    opts = [torch.optim.AdamW([ref[i]], lr=lrs[i], betas=betas, eps=eps, weight_decay=wds[i]) for i in range(c)]
    for t in range(1, 30):
        G = torch.randn(c, 5, 3) * (10.0 ** -torch.randint(0, 6, (c, 1, 1)).float())
        adamw_step([P], [G], [M], [V], np.full(c, t), np.array(lrs), np.array(wds), betas, eps)
        for i in range(c):
            ref[i].grad = G[i].clone()
            opts[i].step()
        for i in range(c):
            assert torch.equal(P[i], ref[i].detach()), (t, i)


def test_cross_entropy_is_float64_accurate_near_100_percent():
    """The loss and its gradient keep their precision when the correct logit dominates (float32
    log-softmax rounds them to 0 there); both match a float64 autograd reference."""
    torch.manual_seed(0)
    for k in (1, 2, 7):
        logits = (torch.randn(3, 20, k) * 8).float()
        y = torch.randint(0, max(k, 2), (3, 20))
        logits[..., 0] += 25.0 * (1 - 2 * (y == 0).float()) if k == 1 else 0.0
        if k > 1:
            logits.scatter_add_(-1, y[..., None], torch.full((3, 20, 1), 30.0))
        count = torch.full((3,), 20)
        loss, acc, g = ce_loss_grad(logits, y, None, count)
        for i in range(3):
            z = logits[i].double().requires_grad_(True)
            ref_loss, ref_acc = loss_and_accuracy(z, y[i])
            ref_loss.backward()
            assert ref_loss.item() > 0
            ref_value = ref_loss.item()
            assert abs(float(loss[i]) - ref_value) <= 1e-12 * max(1.0, ref_value) + 1e-300
            assert float(acc[i]) == float(ref_acc)
            # p - 1 for the dominant class cancels in float64 in both: compare at 1e-12 of 1/n
            torch.testing.assert_close(g[i], z.grad.float(), rtol=1e-6, atol=1e-12)
            assert (g[i] != 0).sum() >= (z.grad != 0).sum()  # no gradient rounded away


def test_accuracy_breaks_ties_like_argmax():
    """Tied maximal logits: argmax (and so the single trainer) counts only the first as predicted."""
    z = torch.tensor([[[1.0, 3.0, 3.0, 0.0], [3.0, 3.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0], [5.0, 1.0, 2.0, 5.0]]])
    y = torch.tensor([[2, 0, 3, 0]])
    _, acc, _ = ce_loss_grad(z, y, None, torch.tensor([4]))
    _, ref = loss_and_accuracy(z[0], y[0])
    assert float(acc[0]) == float(ref) == 0.5


def test_cross_entropy_mask_and_counts():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 5)
    y = torch.randint(0, 5, (2, 6))
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    loss, acc, g = ce_loss_grad(logits, y, mask, torch.tensor([6, 4]))
    ref_loss, ref_acc = loss_and_accuracy(logits[1, :4], y[1, :4])
    assert abs(float(loss[1]) - float(ref_loss)) < 1e-12 and float(acc[1]) == float(ref_acc)
    assert (g[1, 4:] == 0).all()


def test_grad_clip_matches_torch():
    torch.manual_seed(0)
    G = [torch.randn(3, 4, 2), torch.randn(3, 5)]
    ref = [[g[i].clone() for g in G] for i in range(3)]
    clip_grad_norms(G, 0.5)
    for i in range(3):
        ps = [torch.nn.Parameter(torch.zeros_like(r)) for r in ref[i]]
        for p, r in zip(ps, ref[i]):
            p.grad = r
        torch.nn.utils.clip_grad_norm_(ps, 0.5)
        for p, g in zip(ps, G):
            torch.testing.assert_close(g[i], p.grad, rtol=1e-6, atol=1e-7)


def test_rows_move_every_table_together():
    from mechgrok.sweep._rows import Rows

    names = ["a", "b"]
    rows = Rows(names, ("param", "exp_avg"), torch.device("cpu"))
    assert len(rows) == 0
    member = [{"a": torch.full((2,), float(i)), "b": torch.full((3, 1), float(i))} for i in range(5)]
    rows.cat({"param": member[:3], "exp_avg": [{k: -v for k, v in m.items()} for m in member[:3]]})
    rows.cat({"param": member[3:], "exp_avg": [{k: -v for k, v in m.items()} for m in member[3:]]})
    assert len(rows) == 5 and rows["param"]["b"].shape == (5, 3, 1)

    def ids(table="param"):
        return rows[table]["a"][:, 0].tolist()

    rows.select([4, 0, 2])  # drop 1 and 3, reorder
    assert ids() == [4.0, 0.0, 2.0] and ids("exp_avg") == [-4.0, -0.0, -2.0]
    view = rows.take("param", [1, 2])  # consecutive: views into the stacked tensors
    assert view["a"].data_ptr() == rows["param"]["a"][1].data_ptr()
    assert rows.take("param", [2, 0])["b"][:, 0, 0].tolist() == [2.0, 4.0]  # copies, in that order
    assert [t.shape[0] for t in rows.slices("exp_avg", 0, 2)] == [2, 2]
    assert rows.row_bytes() == (2 + 3) * 4 and rows.row("param", 0)["a"].tolist() == [4.0, 4.0]
    snap = rows.snapshot([0, 2])
    for t in rows.slices("param", 0, 3) + rows.slices("exp_avg", 0, 3):
        t.add_(100.0)  # an update (in place, as AdamW does)
    rows.restore([0, 2], snap)  # rows 0 and 2 stop before this update: their state comes back
    assert ids() == [4.0, 100.0, 2.0] and ids("exp_avg") == [-4.0, 100.0, -2.0]
    rows.select([])
    assert len(rows) == 0 and rows["param"] == {}

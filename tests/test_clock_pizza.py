"""Clock vs pizza (Zhong et al. 2023): attention rate, the algorithm signatures, their importer."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from mechgrok import preset
from mechgrok.cli import app, main
from mechgrok.config import ConfigError, ModelConfig, RunConfig, TaskConfig
from mechgrok.importers import import_zhong_checkpoint
from mechgrok.models import build_model
from mechgrok.probes._batch import grid_inputs
from mechgrok.probes.algorithms import (
    _distance_irrelevance_of,
    algorithm_signatures,
    circularity,
    classify_algorithm,
    distance_irrelevance,
    gradient_symmetricity,
)
from mechgrok.store import StoreError, Trajectory


def _theirs(state, x, attn_coeff, act="ReLU"):
    """Their ``Transformer.forward`` (code/train-main.py), line by line in their layouts, float64,
    logits at the last position: no mask, ``softmax * attn_coeff + (1 - attn_coeff)``."""
    s = {k: v.double() for k, v in state.items()}
    h = torch.einsum("dbp -> bpd", s["embed.W_E"][:, x])
    h = h + s["pos_embed.W_pos"][: h.shape[-2]]
    k = torch.einsum("ihd,bpd->biph", s["blocks.0.attn.W_K"], h)
    q = torch.einsum("ihd,bpd->biph", s["blocks.0.attn.W_Q"], h)
    v = torch.einsum("ihd,bpd->biph", s["blocks.0.attn.W_V"], h)
    scores = torch.einsum("biph,biqh->biqp", k, q) / np.sqrt(s["blocks.0.attn.W_K"].shape[1])
    attn = F.softmax(scores, dim=-1) * attn_coeff + (1 - attn_coeff)
    z = torch.einsum("biph,biqp->biqh", v, attn)
    z_flat = z.permute(0, 2, 1, 3).reshape(z.shape[0], z.shape[2], -1)  # 'b i q h -> b q (i h)'
    h = h + torch.einsum("df,bqf->bqd", s["blocks.0.attn.W_O"], z_flat)
    pre = torch.einsum("md,bpd->bpm", s["blocks.0.mlp.W_in"], h) + s["blocks.0.mlp.b_in"]
    post = F.relu(pre) if act == "ReLU" else F.gelu(pre)
    h = h + torch.einsum("dm,bpm->bpd", s["blocks.0.mlp.W_out"], post) + s["blocks.0.mlp.b_out"]
    return (h @ s["unembed.W_U"])[:, -1]


def _their_state(p, d=16, heads=2, n_ctx=2, vocab=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    vocab = vocab or p
    e = d // heads
    r = lambda *shape: torch.randn(*shape, generator=g) / math.sqrt(d)
    return {
        "embed.W_E": r(d, vocab),
        "pos_embed.W_pos": r(n_ctx, d),
        "unembed.W_U": r(d, vocab),
        "blocks.0.attn.W_K": r(heads, e, d),
        "blocks.0.attn.W_Q": r(heads, e, d),
        "blocks.0.attn.W_V": r(heads, e, d),
        "blocks.0.attn.W_O": r(d, heads * e),
        "blocks.0.attn.mask": torch.tril(torch.ones(n_ctx, n_ctx)),
        "blocks.0.mlp.W_in": r(4 * d, d),
        "blocks.0.mlp.b_in": r(4 * d),
        "blocks.0.mlp.W_out": r(d, 4 * d),
        "blocks.0.mlp.b_out": r(d),
    }


def _write_theirs(tmp_path, state, **cfg):
    base = {
        "name": "modadd_7",
        "funcs": "lambda x: (x[0]+x[1])%7",
        "C": 7,
        "n_heads": 2,
        "d_model": 16,
        "n_layers": 1,
        "act_fn": "ReLU",
        "epoch": 300,
        "lr": 0.001,
        "weight_decay": 2.0,
        "frac": 0.8,
        "attn_coeff": 0.3,
        "diff_vocab": 0,
        "eqn_sign": 0,
        "func": None,
    }
    base.update(cfg)
    model_file, config_file = tmp_path / "model_abc.pt", tmp_path / "config_abc.json"
    torch.save(state, model_file)
    config_file.write_text(json.dumps(base))
    return model_file, config_file


# -- attention rate -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["pairs", "equals"])
@pytest.mark.parametrize("rate", [0.0, 0.4, 1.0])
def test_attention_rate_is_their_attention(tmp_path, fmt, rate):
    """Imported weights give their model's logits (their forward, ported in float64) for every
    input, through both of mechgrok's forward paths and the probes' batched grid forward."""
    p, n_ctx = 7, 3 if fmt == "equals" else 2
    state = _their_state(p, n_ctx=n_ctx, vocab=p + (n_ctx == 3))
    model_file, config_file = _write_theirs(tmp_path, state, attn_coeff=rate, eqn_sign=int(fmt == "equals"))
    run = import_zhong_checkpoint(model_file, config_file)
    assert run.config.model.attn_rate == rate and run.config.task.format == fmt
    x = grid_inputs(run.config)
    ref = _theirs(state, x, rate)[:, :p]
    model = run.model(run.steps[-1]).double()
    torch.testing.assert_close(model(x), ref, rtol=1e-6, atol=1e-6)
    model.last_position_only = False
    torch.testing.assert_close(model(x), ref, rtol=1e-6, atol=1e-6)
    traj = run.trajectory()
    from mechgrok.probes._batch import modular_grid_forward

    params = {k: v.double() for k, v in traj.params.items()}
    grid = modular_grid_forward(params, run.config)["logits"].reshape(-1, p)
    torch.testing.assert_close(grid, ref, rtol=1e-5, atol=1e-5)


def test_imported_gelu_model_is_their_model(tmp_path):
    state = _their_state(7)
    model_file, config_file = _write_theirs(tmp_path, state, act_fn="GeLU", attn_coeff=0.5)
    run = import_zhong_checkpoint(model_file, config_file)
    assert run.config.model.act_fn == "gelu"
    x = grid_inputs(run.config)
    torch.testing.assert_close(
        run.model(run.steps[-1]).double()(x), _theirs(state, x, 0.5, "GeLU")[:, :7], rtol=1e-6, atol=1e-6
    )


def test_zero_attention_rate_ignores_queries_and_keys():
    cfg = RunConfig(
        task=TaskConfig(p=7, format="pairs"),
        model=ModelConfig(kind="transformer", d_model=8, n_heads=2, d_head=4, d_mlp=16, attn_rate=0.0),
    )
    m = build_model(cfg.model, cfg.task, seed=0)
    x = grid_inputs(cfg)
    before = m(x)
    with torch.no_grad():
        m.blocks[0].attn.W_Q.mul_(5.0)
        m.blocks[0].attn.W_K.normal_()
    torch.testing.assert_close(m(x), before)


def test_attn_rate_and_act_fn_validation():
    with pytest.raises(ConfigError, match="model.attn_rate"):
        ModelConfig(kind="transformer", attn_rate=1.5)
    with pytest.raises(ConfigError, match="model.act_fn"):
        ModelConfig(kind="transformer", act_fn="tanh")
    with pytest.raises(ConfigError, match="attn_rate"):
        preset("modadd-mlp24").with_overrides({"model.attn_rate": 0.5})
    cfg = preset("modadd-pizza")
    assert (cfg.task.p, cfg.task.train_fraction, cfg.task.format, cfg.optim.weight_decay) == (59, 0.8, "pairs", 2.0)
    assert (cfg.model.d_model, cfg.model.n_heads, cfg.model.d_head, cfg.model.d_mlp) == (128, 4, 32, 512)


def test_batched_engine_trains_attention_rate_like_the_trainer():
    """The sweep engine's vmapped transformer with attn_rate < 1 and GELU == the single trainer."""
    from mechgrok import train
    from mechgrok.sweep import train_batch

    base = preset("modadd-pizza").with_overrides(
        {
            "task.p": 7,
            "model.d_model": 8,
            "model.d_mlp": 16,
            "model.n_heads": 2,
            "model.d_head": 4,
            "model.attn_rate": 0.3,
            "model.act_fn": "gelu",
            "train.steps": 15,
            "train.eval_every": 5,
        }
    )
    configs = [base.with_overrides({"train.seed": s}) for s in (0, 1)]
    for cfg, res in zip(configs, train_batch(configs, progress=False)):
        single = train(cfg, progress=False)
        np.testing.assert_allclose(res.metrics["train_loss"], single.metrics["train_loss"], rtol=1e-4, atol=1e-5)
        for k, v in res.model.state_dict().items():
            torch.testing.assert_close(v, single.model.state_dict()[k], rtol=1e-4, atol=1e-5)


# -- signatures -----------------------------------------------------------------------------------


def test_distance_irrelevance_is_their_formula():
    """Against their numpy line on the (a+b, a-b) table, and the two ends: a logit that depends
    on the answer only (clock) scores 1, one that depends on the distance only (pizza) 0."""
    p = 11
    a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    q = np.random.default_rng(0).normal(size=(p, p))
    oo = np.zeros((p, p))
    oo[(a + b) % p, (a - b) % p] = q
    theirs = np.mean(np.std(oo, axis=0)) / np.std(oo.flatten())
    ours = _distance_irrelevance_of(torch.tensor(q)[None])
    assert abs(float(ours[0]) - theirs) < 1e-12
    clock = torch.tensor(np.cos(2 * np.pi * 3 * ((a + b) % p) / p))[None]
    pizza = torch.tensor(np.abs(np.cos(np.pi * 3 * ((a - b) % p) / p)))[None]
    assert abs(float(_distance_irrelevance_of(clock)[0]) - 1) < 1e-12
    assert float(_distance_irrelevance_of(pizza)[0]) < 1e-12


def _jacobian_symmetricity(model, x, abc):
    """Reference: per triple, torch.func.jacrev of one logit w.r.t. the embedded input."""
    emb = model.embed.W_E[x].detach()

    def logit(e, tokens, c):
        pos = model.pos_embed.W_pos[: tokens.shape[0]]
        resid = (e + pos)[None]
        block = model.blocks[0]
        resid = resid + block.attn(resid)
        post = model.act(block.mlp.pre(resid))
        resid = resid + block.mlp.out(post)
        return model.unembed(resid[:, -1])[0, c]

    sims = []
    for i in range(len(abc)):
        g = torch.func.jacrev(logit)(emb[i], x[i], int(abc[i, 2]))
        sims.append(F.cosine_similarity(g[0], g[1], dim=0))
    return torch.stack(sims).mean()


def test_gradient_symmetricity_against_per_triple_jacobians():
    cfg = RunConfig(
        task=TaskConfig(p=7, format="pairs"),
        model=ModelConfig(kind="transformer", d_model=8, n_heads=2, d_head=4, d_mlp=16, attn_rate=0.6),
    )
    m = build_model(cfg.model, cfg.task, seed=1).double()
    got = gradient_symmetricity(m, n_samples=20, seed=3)
    abc = torch.randint(0, 7, (20, 3), generator=torch.Generator().manual_seed(3))
    ref = _jacobian_symmetricity(m, abc[:, :2], abc)
    assert abs(float(got[0]) - float(ref.detach())) < 1e-10
    # the MLPs add the operands' hidden vectors: their gradients are equal, symmetricity exactly 1
    mlp_cfg = RunConfig(task=TaskConfig(p=7, format="pairs"), model=ModelConfig(kind="mlp", d_model=6, d_mlp=5))
    assert abs(float(gradient_symmetricity(build_model(mlp_cfg.model, mlp_cfg.task, seed=0))[0]) - 1) < 1e-12


def _embedding_traj(W_E, p):
    cfg = RunConfig(task=TaskConfig(p=p, format="pairs"), model=ModelConfig(kind="mlp", d_model=W_E.shape[1], d_mlp=3))
    m = build_model(cfg.model, cfg.task, seed=0)
    params = {k: v.detach()[None].clone() for k, v in m.state_dict().items()}
    params["embed.W_E"] = W_E[None].float()
    return Trajectory(steps=torch.tensor([0]), params=params, config=cfg)


def test_circularity_planted():
    p = 13
    t = 2 * math.pi * torch.arange(p, dtype=torch.float64) / p
    circles = torch.stack([2 * torch.cos(3 * t), 2 * torch.sin(3 * t), torch.cos(5 * t), torch.sin(5 * t)], dim=1)
    assert abs(float(circularity(_embedding_traj(circles, p))[0]) - 1) < 1e-5
    # one component holding two waves at power 1 : 0.25 -> 0.8 of it at its strongest frequency
    mixed = (torch.cos(3 * t) + 0.5 * torch.cos(5 * t))[:, None]
    assert abs(float(circularity(_embedding_traj(mixed, p), n_components=1)[0]) - 0.8) < 1e-5
    noise = torch.randn(p, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert float(circularity(_embedding_traj(noise, p))[0]) < 0.7


def test_classification_rule():
    assert classify_algorithm(0.8, 0.5) == "clock"
    assert classify_algorithm(0.2, 0.995) == "pizza"
    assert classify_algorithm(0.7, 0.995) == "neither"
    assert classify_algorithm(0.2, 0.5) == "neither"
    assert classify_algorithm(0.8, 0.5, accuracy=0.5) == "neither"
    assert classify_algorithm(0.45, 0.99, distance_threshold=0.4) == "neither"


def test_signatures_over_a_trajectory_match_single_checkpoints():
    cfg = RunConfig(
        task=TaskConfig(p=7, format="pairs"),
        model=ModelConfig(kind="transformer", d_model=8, n_heads=2, d_head=4, d_mlp=16, attn_rate=0.5),
    )
    models = [build_model(cfg.model, cfg.task, seed=s) for s in (0, 1)]
    params = {k: torch.stack([m.state_dict()[k] for m in models]) for k in models[0].state_dict()}
    traj = Trajectory(steps=torch.tensor([0, 10]), params=params, config=cfg)
    sig = algorithm_signatures(traj, n_samples=10)
    for i, m in enumerate(models):
        assert abs(float(sig["distance_irrelevance"][i]) - float(distance_irrelevance(m)[0])) < 1e-12
        assert abs(float(sig["gradient_symmetricity"][i]) - float(gradient_symmetricity(m, n_samples=10)[0])) < 1e-12
    assert len(sig["algorithm"]) == 2


# -- importer -------------------------------------------------------------------------------------


def test_cli_analyze_their_file(tmp_path):
    state = _their_state(7)
    model_file, config_file = _write_theirs(tmp_path, state)
    res = CliRunner().invoke(app, ["analyze", str(model_file), "--config", str(config_file), "--quiet"])
    assert res.exit_code == 0, res.output
    for word in ("distance irrelevance 0.", "gradient symmetricity ", "circularity 0.", "algorithm: ", "all 49 pairs"):
        assert word in res.output
    run = import_zhong_checkpoint(model_file, config_file)  # the same pair again: the same run
    assert run.path == model_file.parent / "model_abc.mechgrok"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"act_fn": "Tanh"}, "act_fn"),
        ({"n_layers": 2}, "n_layers"),
        ({"diff_vocab": 1}, "diff_vocab"),
        ({"funcs": "lambda x: (x[0]*x[1])%7"}, "funcs"),
        ({"C": 9, "funcs": "lambda x: (x[0]+x[1])%9"}, "C=9"),
    ],
)
def test_importer_refuses_what_it_cannot_read(tmp_path, capsys, change, message):
    model_file, config_file = _write_theirs(tmp_path, _their_state(7), **change)
    with pytest.raises(StoreError, match=message):
        import_zhong_checkpoint(model_file, config_file)
    assert not (tmp_path / "model_abc.mechgrok").exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["analyze", str(model_file), "--config", str(config_file), "--quiet"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def test_importer_refuses_pickles_and_broken_files(tmp_path):
    model_file, config_file = _write_theirs(tmp_path, _their_state(7))
    state = _their_state(7)
    state["blocks.0.attn.W_O"] = state["blocks.0.attn.W_O"][:, :3]
    torch.save(state, model_file)
    with pytest.raises(StoreError, match="W_O has shape"):
        import_zhong_checkpoint(model_file, config_file)
    torch.save({"code": Path("x")}, model_file)  # a pickled object: refused by weights_only, nothing run
    with pytest.raises(StoreError, match="weights-only"):
        import_zhong_checkpoint(model_file, config_file)
    model_file.write_bytes(b"not a torch file")
    with pytest.raises(StoreError, match="weights-only"):
        import_zhong_checkpoint(model_file, config_file)
    config_file.write_text("{bad json")
    with pytest.raises(StoreError, match="invalid JSON"):
        import_zhong_checkpoint(model_file, config_file)


def test_clock_pizza_script_on_a_sweep(tmp_path, capsys):
    """analyses/clock_pizza.py over a tiny attention-rate sweep: one row per member, each the
    signatures of its last checkpoint, and the per-rate counts add up."""
    import runpy
    import sys

    main(
        [
            "sweep",
            "modadd-pizza",
            "--grid",
            "model.attn_rate=0,1",
            "--seeds",
            "2",
            "--set",
            "task.p=7",
            "--set",
            "model.d_model=8",
            "--set",
            "model.d_mlp=16",
            "--set",
            "model.n_heads=2",
            "--set",
            "model.d_head=4",
            "--set",
            "train.steps=20",
            "--set",
            "train.checkpoint_every=10",
            "--threads",
            "1",
            "--quiet",
            "--out",
            str(tmp_path / "sw"),
        ]
    )
    script = Path(__file__).resolve().parent.parent / "analyses" / "clock_pizza.py"
    old, sys.argv = (
        sys.argv,
        [str(script), str(tmp_path / "sw"), "--samples", "10", "--json", str(tmp_path / "rows.json")],
    )
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = old
    out = capsys.readouterr().out
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert sorted(r["attn_rate"] for r in rows) == [0.0, 0.0, 1.0, 1.0]
    for r in rows:
        from mechgrok import Run

        traj = Run.open(r["run"]).trajectory()
        assert r["step"] == 20
        sig = algorithm_signatures(traj.subset([len(traj) - 1]), n_samples=10)
        assert r["distance_irrelevance"] == float(sig["distance_irrelevance"][0])
        assert r["algorithm"] == sig["algorithm"][0]
    assert " 0.00   2 " in out and " 1.00   2 " in out

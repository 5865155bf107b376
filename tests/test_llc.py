"""The local learning coefficient: SGLD estimates against exactly known values, the vectorised pass
against the loop over checkpoints and chains, diagnostics and settings.

Exact values used (``t`` = n*beta, ``gamma`` the localisation, ``eps`` the step size):

* Quadratic ``K(w) = 1/2 sum_i h_i w_i^2`` (a regular model, ``d`` parameters): the localised
  posterior is Gaussian with precision ``a_i = t h_i + gamma``; SGLD (unadjusted Langevin) keeps
  it Gaussian with the stationary variance ``v_i = eps / (1 - (1 - eps a_i / 2)^2) = 1 / (a_i (1 -
  eps a_i / 4))``, so the estimate's expectation is ``t/2 sum_i h_i v_i`` exactly, which tends to
  ``d/2`` as ``gamma/t, eps t -> 0``.
* ``K(w) = w1^2 + w2^4`` with ``gamma = 0``: the tempered posterior factorises and is
  scale-free; ``E[t w1^2] = 1/2`` and ``E[t w2^4] = 1/4`` (integration by parts of ``x e^{-x^4}``:
  ``int x^4 e^{-x^4} = 1/4 int e^{-x^4}``) at every ``t``, so ``lambda = 3/4`` exactly.
* ``K(w) = w1^2 w2^2`` (``lambda = 1/2``, multiplicity 2): with ``u = sqrt(gamma) w`` the
  expectation depends on ``T = t / gamma^2`` only; the Gaussian integral over ``u2`` is exact, so
  ``E[t K] = T int e^{-u^2/2} (u^2/2) s^{-3/2} du / int e^{-u^2/2} s^{-1/2} du`` with ``s = T u^2
  + 1/2`` (one-dimensional quadrature). It tends to 1/2 like ``1/2 - 1/log T`` (the multiplicity's
  log-log term): 0.354 at T = 1e2, 0.390 at 1e3, 0.437 at 1e6.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch

import mechgrok as mg
from mechgrok import ConfigError, RunConfig
from mechgrok.models import build_model
from mechgrok.probes.llc import (
    LLCConfig,
    LLCResult,
    default_nbeta,
    llc,
    llc_calibration,
    llc_of_potential,
)
from mechgrok.store import Trajectory


def _origin(d: int) -> dict[str, torch.Tensor]:
    return {"w": torch.zeros(1, d, dtype=torch.float64)}


def _singular_reference(T: float) -> float:
    u = np.linspace(-12.0, 12.0, 400_001)
    s = T * u * u + 0.5
    base = np.exp(-u * u / 2) / np.sqrt(s)
    return float(T * np.sum(base * 0.5 * u * u / s) / np.sum(base))


H = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)


def _quadratic(params):
    w = params["w"]
    return 0.5 * (H * w * w).sum(-1)


def test_regular_quadratic_matches_exact_ula_value_and_d_over_2():
    t, gamma, eps = 100.0, 1.0, 1e-3
    cfg = LLCConfig(epsilon=eps, gamma=gamma, chains=100, burnin=300, draws=500, seed=1)
    res = llc_of_potential(_quadratic, _origin(3), t, cfg)
    a = t * H + gamma
    exact = float((t / 2 * H / (a * (1 - eps * a / 4))).sum())  # 1.586
    stderr = float(res.llc_std[0]) / math.sqrt(cfg.chains)
    # tolerance: 4 standard errors of the chains' mean (~0.014 each)
    assert abs(float(res.llc[0]) - exact) < 4 * stderr + 1e-3, (float(res.llc[0]), exact, stderr)
    # and the regular value d/2 = 1.5 within 0.1 (the exact value's offset is gamma/t and eps*t)
    assert abs(float(res.llc[0]) - 1.5) < 0.15
    assert not res.flagged.any()


def test_w1sq_plus_w2_4th_has_lambda_three_quarters():
    cfg = LLCConfig(epsilon=2e-4, gamma=0.0, chains=100, burnin=500, draws=2000, seed=2)
    res = llc_of_potential(lambda p: p["w"][:, 0] ** 2 + p["w"][:, 1] ** 4, _origin(2), 100.0, cfg)
    # stated tolerance 0.06: 3 standard errors (~0.02) plus the eps*t/4 = 0.5% ULA bias of w1
    assert abs(float(res.llc[0]) - 0.75) < 0.06, float(res.llc[0])


def test_w1sq_w2sq_matches_quadrature_and_reference_tends_to_half():
    T = 100.0
    cfg = LLCConfig(epsilon=1e-3, gamma=1.0, chains=50, burnin=1000, draws=2000, seed=3)
    res = llc_of_potential(lambda p: p["w"][:, 0] ** 2 * p["w"][:, 1] ** 2, _origin(2), T, cfg)
    ref = _singular_reference(T)
    assert abs(ref - 0.3542) < 1e-3
    stderr = float(res.llc_std[0]) / math.sqrt(cfg.chains)
    assert abs(float(res.llc[0]) - ref) < 4 * stderr + 0.01, (float(res.llc[0]), ref, stderr)
    # the exact finite-T values rise towards lambda = 1/2 (never past it)
    refs = [_singular_reference(x) for x in (1e2, 1e4, 1e6, 1e8)]
    assert all(a < b < 0.5 for a, b in itertools.pairwise(refs))
    assert abs(refs[-1] - 0.5) < 0.05


@pytest.mark.slow
def test_w1sq_w2sq_at_larger_nbeta():
    T = 1000.0
    cfg = LLCConfig(epsilon=1e-4, gamma=1.0, chains=100, burnin=10_000, draws=30_000, seed=4)
    res = llc_of_potential(lambda p: p["w"][:, 0] ** 2 * p["w"][:, 1] ** 2, _origin(2), T, cfg)
    assert abs(float(res.llc[0]) - _singular_reference(T)) < 0.03


def test_potential_batched_equals_looped():
    cfg = LLCConfig(epsilon=1e-3, gamma=1.0, chains=3, burnin=5, draws=20, seed=5)
    w = {"w": torch.tensor([[0.0, 0.0, 0.0], [0.1, -0.2, 0.3]], dtype=torch.float64)}
    a = llc_of_potential(_quadratic, w, 50.0, cfg)
    b = llc_of_potential(_quadratic, w, 50.0, cfg, vectorize=False)
    torch.testing.assert_close(a.trace, b.trace, rtol=0, atol=0)
    torch.testing.assert_close(a.chain_llc, b.chain_llc, rtol=0, atol=0)


def _trained(config: RunConfig, tmp_path) -> Trajectory:
    mg.train(config, out=tmp_path / config.name, progress=False)
    return mg.Run.open(tmp_path / config.name).trajectory()


@pytest.fixture
def modadd_traj(tiny_modadd, tmp_path) -> Trajectory:
    return _trained(tiny_modadd, tmp_path)


@pytest.mark.parametrize("batch_size", [None, 8])
def test_model_batched_equals_looped(modadd_traj, batch_size):
    cfg = LLCConfig(epsilon=1e-4, gamma=100.0, chains=2, burnin=3, draws=6, batch_size=batch_size)
    rows = [0, len(modadd_traj) // 2, len(modadd_traj) - 1]
    a = llc(modadd_traj, cfg, rows=rows)
    b = llc(modadd_traj, cfg, rows=rows, vectorize=False)
    # the fused kernel's matmuls over 6 rows vs 1 row round differently: float32 tolerance
    torch.testing.assert_close(a.trace, b.trace, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(a.llc, b.llc, rtol=1e-3, atol=1e-3)
    # chunking the rows differently changes nothing either (each chunk replays the chain streams)
    c = llc(modadd_traj, cfg, rows=rows, budget=1)
    torch.testing.assert_close(a.trace, c.trace, rtol=1e-4, atol=1e-6)
    assert a.steps.tolist() == modadd_traj.steps[rows].tolist()


def test_model_init_loss_is_the_training_loss(modadd_traj, tiny_modadd):
    res = llc(modadd_traj, LLCConfig(chains=1, burnin=0, draws=2), rows=[len(modadd_traj) - 1])
    model = modadd_traj.model(len(modadd_traj) - 1)
    data = mg.make_dataset(tiny_modadd.task)
    with torch.no_grad():
        loss, _ = mg.loss_and_accuracy(model(data.train_x), data.train_y)
    assert abs(float(res.init_loss[0]) - float(loss)) < 1e-5
    # the first trace entry is the loss at w* itself (before the first update)
    assert abs(float(res.trace[0, 0, 0]) - float(res.init_loss[0])) < 1e-9
    assert res.n == data.train_y.shape[0]
    assert res.nbeta == pytest.approx(res.n / math.log(res.n))


def test_vmap_transformer_batched_equals_looped(tmp_path):
    config = RunConfig(
        name="tiny-tf",
        task=mg.TaskConfig(kind="modular", p=5, pairs="ordered", format="equals", train_fraction=0.6),
        model=mg.ModelConfig(kind="transformer", d_model=8, n_heads=2, d_head=4, d_mlp=16),
        train=mg.TrainConfig(steps=4, checkpoint_every=2, log_checkpoints=0),
    )
    traj = _trained(config, tmp_path)
    cfg = LLCConfig(epsilon=1e-4, chains=2, burnin=1, draws=3)
    a = llc(traj, cfg)
    b = llc(traj, cfg, vectorize=False)
    torch.testing.assert_close(a.trace, b.trace, rtol=1e-4, atol=1e-6)


def test_diagnostics_flag_divergence_and_non_minima(tiny_modadd):
    # at initialisation the model is far from a minimum: SGLD's drift lowers the loss
    model = build_model(tiny_modadd.model, tiny_modadd.task, seed=0)
    params = {k: v.detach()[None] for k, v in model.state_dict().items()}
    traj = Trajectory(torch.zeros(1, dtype=torch.int64), params, tiny_modadd)
    res = llc(traj, LLCConfig(epsilon=1e-3, gamma=1.0, chains=2, burnin=0, draws=50, nbeta=1000.0))
    assert res.negative.all() and not res.diverged.any() and bool(res.flagged[0])
    assert (res.chain_llc < 0).all()
    # a step far too large for the curvature blows up
    res = llc(traj, LLCConfig(epsilon=1.0, gamma=100.0, chains=2, burnin=0, draws=20, nbeta=1000.0))
    assert res.diverged.all() and not res.negative.any()


def test_calibration_grid(modadd_traj):
    cal = llc_calibration(
        modadd_traj, epsilons=[1e-5, 1e-4, 1.0], gammas=[10.0, 100.0], config=LLCConfig(chains=2, burnin=5, draws=10)
    )
    assert cal.llc.shape == (1, 3, 2) and cal.flagged.shape == (1, 3, 2)
    assert cal.step == int(modadd_traj.steps[-1])
    assert cal.flagged[0, 2].all()  # eps = 1 diverges
    assert not cal.stable[0, 2].any()
    # each cell is the same estimate as a single run at that setting
    one = llc(
        modadd_traj, LLCConfig(chains=2, burnin=5, draws=10, epsilon=1e-4, gamma=100.0), rows=[len(modadd_traj) - 1]
    )
    torch.testing.assert_close(cal.llc[0, 1, 1], one.llc[0], rtol=1e-4, atol=1e-6)


def test_config_validation_names_the_field():
    with pytest.raises(ConfigError, match="llc.epsilon"):
        LLCConfig(epsilon=0)
    with pytest.raises(ConfigError, match="llc.gamma"):
        LLCConfig(gamma=-1)
    with pytest.raises(ConfigError, match="llc.chains"):
        LLCConfig(chains=0)
    with pytest.raises(ConfigError, match="llc.batch_size"):
        LLCConfig(batch_size=2.5)
    with pytest.raises(ConfigError, match="llc.engine"):
        LLCConfig(engine="gpu")
    with pytest.raises(ConfigError, match="llc.device"):
        LLCConfig(device="nonsense")
    assert default_nbeta(100) == pytest.approx(100 / math.log(100))
    assert LLCConfig(burnin=10, draws=5, steps_between_draws=3).n_steps == 10 + 4 * 3 + 1


def test_lockstep_slices_and_calls_match_one_call(modadd_traj):
    """Small budgets split the rows into several objective calls per step (lockstep) and several
    sampler calls: the same streams, so the same estimates as one call over every row."""
    cfg = LLCConfig(epsilon=1e-4, chains=2, burnin=2, draws=4)
    whole = llc(modadd_traj, cfg)
    sliced = llc(modadd_traj, cfg, budget=1)  # one checkpoint's chains per objective call
    torch.testing.assert_close(sliced.trace, whole.trace, rtol=1e-4, atol=1e-6)
    import mechgrok.probes.llc as llc_module

    objective = llc_module._ModelObjective(modadd_traj.config, cfg.engine, cfg.device, cfg.dtype)
    w_star = {k: objective.cast(modadd_traj.params[k]) for k in objective.names}
    K = len(modadd_traj)
    full = lambda x: torch.full((K,), float(x), dtype=torch.float64)
    args = (objective, w_star, full(cfg.epsilon), full(cfg.gamma), full(whole.nbeta), objective.n, cfg, 1, True)
    _, trace, _ = llc_module._run_rows(*args, state_budget=1)  # one checkpoint per sampler call
    torch.testing.assert_close(trace.view_as(whole.trace), whole.trace, rtol=1e-4, atol=1e-6)


def test_float32_chains_follow_the_float64_streams(modadd_traj):
    """LLCConfig.dtype: float32 chains of a float64 run draw the same normals as the run's own
    float64 chains, so the estimates differ by rounding only."""
    config = modadd_traj.config
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, dtype="float64"))
    traj = Trajectory(modadd_traj.steps, {k: v.double() for k, v in modadd_traj.params.items()}, config)
    cfg = LLCConfig(epsilon=1e-4, chains=2, burnin=2, draws=4)
    a, b = llc(traj, cfg), llc(traj, dataclasses.replace(cfg, dtype="model"))
    assert a.trace.dtype == b.trace.dtype == torch.float64
    assert not torch.equal(a.trace, b.trace)  # float32 vs float64 arithmetic
    torch.testing.assert_close(a.llc, b.llc, rtol=1e-3, atol=1e-2)
    with pytest.raises(ConfigError, match="llc.dtype"):
        LLCConfig(dtype="half")


def test_chunks_of_checkpoints_concatenate_to_the_whole(modadd_traj):
    cfg = LLCConfig(epsilon=1e-4, chains=2, burnin=2, draws=4)
    whole = llc(modadd_traj, cfg)
    k = len(modadd_traj) // 2
    parts = LLCResult.concat(
        [llc(modadd_traj.subset(list(range(k))), cfg), llc(modadd_traj.subset(list(range(k, len(modadd_traj)))), cfg)]
    )
    torch.testing.assert_close(parts.trace, whole.trace, rtol=1e-4, atol=1e-6)
    assert parts.steps.tolist() == whole.steps.tolist()
    assert set(whole.tensors()) == {
        "llc",
        "llc_std",
        "llc_chains",
        "llc_init_loss",
        "llc_trace",
        "llc_negative",
        "llc_diverged",
    }
    assert all(v.shape[0] == len(modadd_traj) for v in whole.tensors().values())


def test_llc_curve_script(tmp_path, capsys):
    import runpy
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "analyses" / "llc_curve.py"
    argv = [
        str(script),
        str(tmp_path / "run"),
        "--preset",
        "parity",
        "--set",
        "task.n_bits=8",
        "--set",
        "task.relevant_bits=1,5",
        "--set",
        "task.n_train=60",
        "--set",
        "task.n_test=100",
        "--set",
        "model.d_mlp=16",
        "--set",
        "train.steps=100",
        "--set",
        "train.checkpoint_every=25",
        "--set",
        "train.log_checkpoints=4",
        "--max-checkpoints",
        "5",
        "--chains",
        "2",
        "--burnin",
        "2",
        "--draws",
        "5",
        "--calibrate",
    ]
    old = sys.argv
    sys.argv = argv
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = old
    out = capsys.readouterr().out
    assert "calibration at step 100" in out and "chains in" in out and "peak LLC" in out
    assert (tmp_path / "run" / "llc_curve.html").read_text().count("Plotly.newPlot(") == 4


# ----------------------------------------------------------------------------------------------
# where it shows up: analyze, the CLI, reports, sweeps, the top-level API


def test_top_level_api():
    assert mg.llc is llc and mg.LLCConfig is LLCConfig and mg.llc_calibration is llc_calibration
    from mechgrok.report import llc_figure, llc_traces_figure

    fig = llc_figure(
        [0, 10, 100],
        torch.tensor([1.0, 5.0, 2.0]),
        torch.tensor([0.1, 0.2, 0.1]),
        flagged=torch.tensor([True, False, False]),
    )
    assert list(fig.data[1].y) == [5.0, 2.0]  # step 0 is off the log axis
    fig = llc_traces_figure([0, 10], torch.zeros(2, 3, 7), torch.zeros(2), nbeta=10.0, burnin=2)
    assert len(fig.data) == 2 * 3


def test_analyze_with_llc_stores_one_row_per_checkpoint(tiny_modadd, tmp_path):
    mg.train(tiny_modadd, out=tmp_path / "run", progress=False)
    cfg = LLCConfig(chains=2, burnin=2, draws=4)
    a = mg.analyze(tmp_path / "run", llc=cfg, chunk_size=2)  # chunks of 2 checkpoints: same numbers
    assert a.tensors["llc/llc"].shape == a.steps.shape
    assert a.tensors["llc/llc_trace"].shape == (a.steps.shape[0], 2, cfg.n_steps)
    direct = llc(mg.Run.open(tmp_path / "run").trajectory(), cfg)
    torch.testing.assert_close(a.tensors["llc/llc"], direct.llc, rtol=1e-4, atol=1e-6)
    loaded = mg.load_analysis(tmp_path / "run")
    torch.testing.assert_close(loaded.tensors["llc/llc"], a.tensors["llc/llc"])
    assert loaded.records["options"]["llc"]["chains"] == 2
    assert loaded.records["llc"]["nbeta"] == pytest.approx(direct.nbeta)
    from mechgrok.report import run_sections

    titles = [s.title for s in run_sections(mg.Run.open(tmp_path / "run"), loaded)]
    assert "Local learning coefficient" in titles and "LLC chains" in titles
    # without --llc nothing of it is computed
    assert not any("llc" in k for k in mg.analyze(tmp_path / "run", save=False).tensors)


def test_cli_analyze_llc_and_bad_settings(tiny_parity, tmp_path, capsys):
    from mechgrok import cli

    mg.train(tiny_parity, out=tmp_path / "run", progress=False)
    with pytest.raises(SystemExit) as e:
        cli.main(["analyze", str(tmp_path / "run"), "--llc-epsilon", "-1", "--quiet"])
    assert e.value.code == 2 and "llc.epsilon" in capsys.readouterr().err
    assert not (tmp_path / "run" / "analysis").exists()  # refused before any work
    cli.main(
        ["analyze", str(tmp_path / "run"), "--llc-chains", "2", "--llc-burnin", "1", "--llc-draws", "3", "--quiet"]
    )
    out = capsys.readouterr().out
    assert "local learning coefficient: peak" in out
    assert "llc/llc" in mg.load_analysis(tmp_path / "run").tensors


def test_sweep_records_final_llc(tiny_parity, tmp_path):
    from mechgrok.sweep import EngineConfig, SweepSpec, run_sweep

    base = tiny_parity.with_overrides({"train.steps": 60, "train.eval_every": 5, "train.checkpoint_every": 30})
    spec = SweepSpec.from_cli(base, ["weight_decay=0.01,1"], seeds=1)
    cfg = LLCConfig(chains=2, burnin=1, draws=3)
    sweep = run_sweep(spec, tmp_path / "sw", engine=EngineConfig(log_every=5), progress=False, llc=cfg)
    rows = sweep.result_rows()
    assert len(rows) == 2
    for row in rows:
        run = sweep.run(row["member"])
        alone = llc(run.trajectory([run.steps[-1]]), cfg)  # members stacked in one pass == each alone
        assert row["final_llc"] == pytest.approx(float(alone.llc[0]), rel=1e-4, abs=1e-6)
        assert row["final_llc_flagged"] == bool(alone.flagged[0])
    header = (tmp_path / "sw" / "results.csv").read_text().splitlines()[0]
    assert "final_llc" in header.split(",")


@pytest.mark.integration
def test_cli_sweep_llc_column(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [
        sys.executable,
        "-m",
        "mechgrok.cli",
        "sweep",
        "parity",
        "--grid",
        "weight_decay=0.1,1",
        "--set",
        "task.n_bits=8",
        "--set",
        "task.relevant_bits=1,5",
        "--set",
        "task.n_train=60",
        "--set",
        "task.n_test=100",
        "--set",
        "model.d_mlp=16",
        "--set",
        "train.steps=40",
        "--set",
        "train.checkpoint_every=20",
        "--out",
        str(tmp_path / "sw"),
        "--quiet",
        "--threads",
        "1",
        "--llc-chains",
        "2",
        "--llc-draws",
        "3",
    ]
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = (tmp_path / "sw" / "results.csv").read_text().splitlines()
    col = lines[0].split(",").index("final_llc")
    assert len(lines) == 3 and all(line.split(",")[col] for line in lines[1:])


@pytest.mark.parametrize(
    "model_over",
    [{}, {"tied_embed": False}, {"bias": True}, {"kind": "cossin_mlp", "d_mlp": 6}],
    ids=["tied", "untied", "bias", "cossin"],
)
@pytest.mark.parametrize("minibatch", [False, True])
def test_sampler_kernel_equals_autograd_on_the_hooked_model(tiny_modadd, model_over, minibatch):
    """The sampler's loss and gradient (operand gathers, in-place float32/64 soft-max) against
    float64 autograd through the real model, row by row, for full batches and per-row minibatches."""
    from torch.func import functional_call

    from mechgrok.probes.llc import _ModelObjective

    config = dataclasses.replace(tiny_modadd, model=dataclasses.replace(tiny_modadd.model, **model_over))
    obj = _ModelObjective(config, "auto", dtype="model")
    assert obj.model.sampler
    models = [build_model(config.model, config.task, seed=s) for s in range(3)]
    params = {k: torch.stack([dict(m.named_parameters())[k].detach() for m in models]) for k in obj.names}
    gen = torch.Generator().manual_seed(0)
    idx = torch.stack([torch.randperm(obj.n, generator=gen)[:5] for _ in models]) if minibatch else None
    loss, grads = obj(params, idx)
    for r, m in enumerate(models):
        ref = m.double()
        x, y = (obj.x, obj.y) if idx is None else (obj.x[idx[r]], obj.y[idx[r]])
        leaves = {k: v.detach().requires_grad_(True) for k, v in ref.named_parameters()}
        l64 = torch.nn.functional.cross_entropy(functional_call(ref, leaves, (x,)).double(), y)
        g64 = torch.autograd.grad(l64, list(leaves.values()))
        assert float(loss[r]) == pytest.approx(l64.item(), rel=1e-5, abs=1e-6)
        for (k, _), g in zip(leaves.items(), g64):
            torch.testing.assert_close(grads[k][r].double(), g, rtol=1e-4, atol=1e-6)


def test_sampler_loss_grad_equals_the_training_loss_grad():
    from mechgrok.sweep._kernels import ce_loss_grad, ce_loss_grad_sampler

    gen = torch.Generator().manual_seed(1)
    logits = 20 * torch.randn(3, 40, 11, generator=gen)
    y = torch.randint(0, 11, (3, 40), generator=gen)
    loss, _, g = ce_loss_grad(logits, y, None, torch.full((3,), 40))
    for work in (torch.float32, torch.float64):
        l2, g2 = ce_loss_grad_sampler(logits.clone(), y, 1.0, work)
        torch.testing.assert_close(l2, loss, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(g2, g, rtol=1e-5, atol=1e-7)

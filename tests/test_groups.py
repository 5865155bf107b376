"""Finite groups, their computed irreps (orthogonality relations, dimensions), group tasks, and the
irrep probes against the Fourier probes (C_p) and planted models."""

from __future__ import annotations

import math

import pytest
import torch

from mechgrok import ModelConfig, OptimConfig, RunConfig, TaskConfig, TrainConfig
from mechgrok.config import ConfigError
from mechgrok.groups import finite_group, group_order, partitions
from mechgrok.models import build_model
from mechgrok.probes._common import as_trajectory
from mechgrok.probes._modular import modular_sweep
from mechgrok.probes.irreps import (
    irrep_progress_measures,
    irrep_sweep,
    key_irreps,
    planted_group_mlp,
)
from mechgrok.probes.synthetic import planted_modadd_mlp
from mechgrok.tasks import make_dataset

SPECS = ["c2", "c7", "c8", "d3", "d4", "d5", "d6", "s2", "s3", "s4", "s5", "a3", "a4", "a5"]


def _hook_lengths(lam):
    conj = [sum(1 for part in lam if part > i) for i in range(lam[0])]
    return math.prod(lam[i] - j + conj[j] - i - 1 for i in range(len(lam)) for j in range(lam[i]))


@pytest.mark.parametrize("spec", SPECS)
def test_group_axioms_and_order(spec):
    g = finite_group(spec)
    T = g.table
    assert g.order == group_order(spec)
    # Latin square, associative, identity and inverses
    assert all(sorted(row.tolist()) == list(range(g.order)) for row in T)
    assert all(sorted(col.tolist()) == list(range(g.order)) for col in T.T)
    a, b, c = torch.meshgrid(*(torch.arange(g.order),) * 3, indexing="ij")
    assert torch.equal(T[T[a, b], c], T[a, T[b, c]])
    e = g.identity
    assert torch.equal(T[e], torch.arange(g.order)) and torch.equal(T[:, e], torch.arange(g.order))
    assert bool((T[torch.arange(g.order), g.inverse] == e).all())


@pytest.mark.parametrize("spec", SPECS)
def test_irreps_are_orthogonal_homomorphisms(spec):
    g = finite_group(spec)
    for r in g.irreps():
        M = r.matrices
        assert M.dtype == torch.float64 and M.shape == (g.order, r.dim, r.dim)
        # rho(a) rho(b) = rho(a b) and rho(g) orthogonal
        assert torch.allclose(torch.einsum("aij,bjk->abik", M, M), M[g.table], atol=1e-12)
        assert torch.allclose(M @ M.transpose(1, 2), torch.eye(r.dim, dtype=torch.float64).expand_as(M), atol=1e-12)


@pytest.mark.parametrize("spec", SPECS)
def test_character_orthogonality_and_dimensions(spec):
    g = finite_group(spec)
    irreps = g.irreps()
    chars = torch.stack([r.character for r in irreps])  # [R, order]
    gram = chars @ chars.T / g.order
    # <chi, chi> = 1 for real type (absolutely irreducible), 2 for a complex pair seen over R
    want = torch.diag(torch.tensor([1.0 if r.real_type else 2.0 for r in irreps], dtype=torch.float64))
    assert torch.allclose(gram, want, atol=1e-10)
    # sum of d^2 over complex irreps (a complex-type real irrep of dim d is two of dim d / 2) = |G|
    total = sum(r.dim**2 if r.real_type else 2 * (r.dim // 2) ** 2 for r in irreps)
    assert total == g.order
    assert irreps[0].name == "trivial" or irreps[0].name == f"({spec[1:]})"
    assert torch.equal(irreps[0].character, torch.ones(g.order, dtype=torch.float64))
    # Schur orthogonality of matrix coefficients for real-type irreps: sum_g rho_ij rho_kl = |G|/d
    for r in irreps:
        if r.real_type:
            C = r.matrices.reshape(g.order, -1)
            assert torch.allclose(C.T @ C, torch.eye(r.dim**2, dtype=torch.float64) * g.order / r.dim, atol=1e-10)
    U, owner = g.basis()
    assert torch.allclose(U.T @ U, torch.eye(g.order, dtype=torch.float64), atol=1e-10)
    assert owner.shape == (g.order,)


def test_symmetric_group_irreps_come_from_partitions():
    for n in range(2, 6):
        g = finite_group(f"s{n}")
        lams = partitions(n)
        assert [r.name for r in g.irreps()] == ["(" + ",".join(map(str, lam)) + ")" for lam in lams]
        # hook length formula
        assert [r.dim for r in g.irreps()] == [math.factorial(n) // _hook_lengths(lam) for lam in lams]
    assert [r.dim for r in finite_group("s5").irreps()] == [1, 4, 5, 6, 5, 4, 1]
    assert [(r.name, r.dim) for r in finite_group("a5").irreps()] == [
        ("(5)", 1),
        ("(4,1)", 4),
        ("(3,2)", 5),
        ("(3,1,1)+", 3),
        ("(3,1,1)-", 3),
    ]
    assert [(r.dim, r.real_type) for r in finite_group("a4").irreps()] == [(1, True), (3, True), (2, False)]
    sign = finite_group("s4").irreps()[-1].character
    parity = torch.tensor(
        [sum(p[i] > p[j] for i in range(4) for j in range(i + 1, 4)) % 2 for p in finite_group("s4").elements],
        dtype=torch.float64,
    )
    assert torch.equal(sign, (-1.0) ** parity)


def test_group_spec_errors_name_the_field():
    for bad in ("s6", "x3", "d2", "a2", "", "s"):
        with pytest.raises(ConfigError, match=r"^task\.group: "):
            TaskConfig(kind="group", group=bad)
    with pytest.raises(ConfigError, match=r"^task\.format: "):
        TaskConfig(kind="group", group="s3", format="sequence")
    with pytest.raises(ConfigError, match=r"^model\.tied_embed: "):
        RunConfig(task=TaskConfig(kind="group", group="s3"), model=ModelConfig(kind="mlp", tied_embed=True))
    with pytest.raises(ConfigError, match=r"^model\.kind: "):
        RunConfig(task=TaskConfig(kind="group", group="s3"), model=ModelConfig(kind="cossin_mlp"))


def test_group_task_dataset_and_json_round_trip():
    task = TaskConfig(kind="group", group="S4", format="pairs", train_fraction=0.5)
    assert task.p == 24 and task.group == "s4" and task.n_examples == 576
    cfg = RunConfig(task=task, model=ModelConfig(kind="mlp", d_model=8, d_mlp=8))
    assert RunConfig.from_json(cfg.to_json()) == cfg
    data = make_dataset(task)
    g = finite_group("s4")
    assert data.train_x.shape == (288, 2) and data.test_x.shape == (288, 2)
    a, b = data.train_ab[:, 0], data.train_ab[:, 1]
    assert torch.equal(data.train_y, g.table[a, b])
    assert torch.equal(data.train_x[:, 1], b + 24)  # the right operand's own token rows
    # the MLP tells a * b from b * a (S_4 is not abelian)
    model = build_model(cfg.model, task, seed=0)
    x = torch.tensor([[1, 2 + 24], [2, 1 + 24]])
    out = model(x)
    assert not torch.allclose(out[0], out[1])


@pytest.mark.parametrize("p", [7, 8, 13])
def test_group_probe_on_cp_equals_fourier_probe(p):
    """On C_p every irrep quantity equals its Fourier counterpart (trained + planted models)."""
    task = TaskConfig(kind="modular", p=p, format="pairs", train_fraction=0.5)
    data = make_dataset(task)
    freqs = [2, 3] if p != 8 else [1, 3]
    model = planted_modadd_mlp(p, freqs, task=task)
    traj = as_trajectory(model, task)
    noisy = type(traj)(
        torch.arange(3),
        {
            k: torch.stack([v[0], v[0] + 0.05 * torch.randn_like(v[0]), torch.randn_like(v[0])])
            for k, v in traj.params.items()
        },
        traj.config,
    )
    for tr in (traj, noisy):
        f = modular_sweep(tr, data, ("fourier", "logits", "progress"))
        g = irrep_sweep(tr, data)
        pairs = [
            ("embed_freq_norms", "embed_irrep_norms"),
            ("logit_freq_norms", "logit_irrep_norms"),
            ("logit_freq_frac", "logit_irrep_frac"),
            ("restricted_loss", "restricted_loss"),
            ("excluded_loss", "excluded_loss"),
            ("neuron_frac_explained", "neuron_frac_explained"),
            ("sparsity", "sparsity"),
            ("sparsity_logits", "sparsity_logits"),
            ("train_loss", "train_loss"),
            ("test_acc", "test_acc"),
        ]
        for fk, gk in pairs:
            assert torch.allclose(f[fk].double(), g[gk].double(), rtol=1e-9, atol=1e-12), fk
        assert torch.equal(f["key_freq_mask"], g["key_irrep_mask"])
        assert torch.equal(f["neuron_dominant_freq"], g["neuron_dominant_irrep"])
        assert torch.equal(f["key_frequencies"], g["key_irreps"])
    assert key_irreps(traj) == [f"freq {k}" for k in freqs]


@pytest.mark.parametrize(
    "spec, planted",
    [
        ("s4", ["(3,1)"]),
        ("s4", ["(2,2)", "(2,1,1)"]),
        ("d5", ["rot 2"]),
        ("d6", ["rot 1", "sign"]),
        ("a5", ["(3,1,1)+"]),
        ("s3", ["(2,1)"]),
    ],
)
def test_planted_group_models_are_recovered_exactly(spec, planted):
    model = planted_group_mlp(spec, planted)
    task = TaskConfig(kind="group", group=spec, format="pairs", train_fraction=0.5)
    traj = as_trajectory(model, task)
    assert key_irreps(traj) == sorted(planted, key=[r.name for r in finite_group(spec).irreps()].index)
    res = irrep_sweep(traj, None, ("logits",))
    names = [r.name for r in finite_group(spec).irreps()[1:]]
    others = [i for i, n in enumerate(names) if n not in planted]
    # every other irrep carries nothing of the logits; the planted ones all of their variance
    assert all(float(res["logit_irrep_frac"][0, i]) < 1e-10 for i in others)
    assert abs(float(res["logit_irrep_frac"][0].sum()) - 1) < 1e-6
    pm = irrep_progress_measures(traj, make_dataset(task))
    assert torch.allclose(pm["restricted_loss"], pm["train_loss"], rtol=1e-6)


def test_group_task_trains_and_probe_reads_the_run(tmp_path):
    cfg = RunConfig(
        name="tiny-s3",
        task=TaskConfig(kind="group", group="s3", format="pairs", train_fraction=0.6),
        model=ModelConfig(kind="mlp", d_model=16, d_mlp=16),
        optim=OptimConfig(lr=1e-2, weight_decay=0.1),
        train=TrainConfig(steps=40, checkpoint_every=20, log_checkpoints=2, resume_every=40),
    )
    from mechgrok.store import Run
    from mechgrok.train import train

    train(cfg, tmp_path / "run", progress=False)
    traj = Run.open(tmp_path / "run").trajectory()
    res = irrep_sweep(traj, make_dataset(cfg.task))
    assert res["train_acc"][-1] > 0.9
    assert res["logit_irrep_norms"].shape == (len(traj), 2)
    # the batched grid forward equals the live model on the group MLP's separate token rows
    model = traj.model(len(traj) - 1)
    x = make_dataset(cfg.task)
    logits = model(x.train_x)
    assert float((logits.argmax(-1) == x.train_y).double().mean()) == pytest.approx(float(res["train_acc"][-1]))


def test_group_run_analysis_and_report(tmp_path):
    """The pipeline on a trained group run: irrep tensors, key irreps in the records and summary,
    and the report's irrep-spectrum heatmap with the event lines."""
    from mechgrok.analysis import analyze
    from mechgrok.report import irrep_spectrum_figure, write_run_report
    from mechgrok.train import train

    cfg = RunConfig(
        name="tiny-d4",
        task=TaskConfig(kind="group", group="d4", format="pairs", train_fraction=0.7),
        model=ModelConfig(kind="mlp", d_model=16, d_mlp=32),
        optim=OptimConfig(lr=1e-2, weight_decay=0.1),
        train=TrainConfig(steps=60, checkpoint_every=20, log_checkpoints=3, resume_every=60),
    )
    train(cfg, tmp_path / "run", progress=False)
    res = analyze(tmp_path / "run", progress=False)
    assert res.task == "group" and res.records["group"]["order"] == 8
    assert res["irreps/logit_irrep_norms"].shape == (len(res.steps), 4)
    assert "key irreps:" in res.summary.lower() and "group D4" in res.summary
    fig = irrep_spectrum_figure(
        res.steps,
        {"logits": res["irreps/logit_irrep_norms"]},
        [r["name"] for r in res.records["group"]["irreps"]],
        ["rot 1"],
        events={"memorised_step": 20, "generalised_step": 40},
    )
    assert len(fig.data) == 1 and "★rot 1" in fig.layout.yaxis.ticktext
    assert len(fig.layout.shapes) == 2  # the two event lines
    out = write_run_report(tmp_path / "run", tmp_path / "report.html")
    assert "Irrep spectrum over training" in out.read_text()


def test_group_presets_and_public_api():
    import mechgrok as mg

    for name, spec, order in (("group-s4-mlp", "s4", 24), ("group-d30-mlp", "d30", 60), ("group-s5-mlp", "s5", 120)):
        cfg = mg.preset(name)
        assert cfg.task.kind == "group" and cfg.task.group == spec and cfg.task.p == order
        assert cfg.model.kind == "mlp" and not cfg.model.tied_embed
        assert RunConfig.from_json(cfg.to_json()) == cfg
    for name in (
        "finite_group",
        "FiniteGroup",
        "key_irreps",
        "irreps_over_training",
        "irrep_progress_measures",
        "import_chughtai_checkpoint",
    ):
        assert name in mg.__all__, name


def test_batched_engine_trains_group_tasks_like_the_trainer():
    """The sweep engine's fused MLP reads the right operand's own token rows (p + b) too."""
    from mechgrok.sweep import train_batch
    from mechgrok.train import train

    cfg = RunConfig(
        name="tb",
        task=TaskConfig(kind="group", group="s3", format="pairs", train_fraction=0.6),
        model=ModelConfig(kind="mlp", d_model=16, d_mlp=16),
        optim=OptimConfig(lr=1e-2, weight_decay=0.1),
        train=TrainConfig(steps=30, checkpoint_every=10, log_checkpoints=0, resume_every=30),
    )
    cfgs = [cfg.with_overrides({"train.seed": s}) for s in (0, 1)]
    for batched, ref in zip(train_batch(cfgs, progress=False), [train(c, progress=False) for c in cfgs]):
        a, b = batched.model.state_dict(), ref.model.state_dict()
        for k in b:
            assert torch.allclose(a[k], b[k], atol=1e-5), k


def test_group_irreps_seeds_script(tmp_path, capsys, monkeypatch):
    """analyses/group_irreps_seeds.py on two tiny seeds: trains them at once, prints each seed's key
    irreps and the counts, writes the first seed's report."""
    import runpy
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "analyses" / "group_irreps_seeds.py"
    monkeypatch.setattr(
        sys,
        "argv",
        [
            str(script),
            str(tmp_path / "seeds"),
            "--preset",
            "group-s4-mlp",
            "--seeds",
            "2",
            "--set",
            "train.steps=100",
            "--set",
            "model.d_model=32",
            "--set",
            "model.d_mlp=32",
        ],
    )
    runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    assert out.count("key irreps:") == 2 and "how often each irrep is key" in out
    assert (tmp_path / "seeds" / "group-s4-mlp-seed0" / "report.html").exists()


def test_key_irrep_cut_ignores_gaps_between_negligible_irreps():
    """A D_30 spectrum (a trained seed's shares): 8 irreps carry the logits, the rest are below
    1e-2 of them; a ratio between two negligible energies (1e-3 / 1e-6) must not be the cut."""
    from mechgrok.probes.irreps import key_irrep_mask

    share = torch.tensor(
        [
            0.171,
            0.142,
            0.131,
            0.112,
            0.109,
            0.093,
            0.067,
            0.041,
            0.007,
            0.002,
            0.002,
            0.001,
            1e-6,
            1e-6,
            1e-6,
            1e-6,
            1e-6,
        ],
        dtype=torch.float64,
    )
    mask = key_irrep_mask(share[None], torch.ones(1, dtype=torch.float64), "d30")
    assert mask[0].tolist() == [True] * 8 + [False] * 9
    # S_4's three-of-four key set is allowed (the top-half rule of Z_p would cut after two)
    s4 = key_irrep_mask(
        torch.tensor([[0.44, 0.25, 1e-7, 0.21]], dtype=torch.float64), torch.ones(1, dtype=torch.float64), "s4"
    )
    assert s4[0].tolist() == [True, True, False, True]


def test_transformer_on_a_group_task(tmp_path):
    """`a b =` tokens: the transformer trains on S_3 and the irrep probe's batched forward agrees
    with the live model."""
    from mechgrok.store import Run
    from mechgrok.train import train

    cfg = RunConfig(
        name="tr",
        task=TaskConfig(kind="group", group="s3", format="equals", train_fraction=0.7),
        model=ModelConfig(kind="transformer", d_model=16, d_mlp=32, n_heads=2, d_head=8),
        optim=OptimConfig(lr=1e-2, weight_decay=0.1),
        train=TrainConfig(steps=40, checkpoint_every=20, log_checkpoints=0, resume_every=40),
    )
    train(cfg, tmp_path / "r", progress=False)
    traj = Run.open(tmp_path / "r").trajectory()
    data = make_dataset(cfg.task)
    res = irrep_sweep(traj, data)
    out = traj.model(len(traj) - 1)(data.train_x)
    acc = float((out.argmax(-1) == data.train_y).double().mean())
    assert float(res["train_acc"][-1]) == pytest.approx(acc) and res["logit_irrep_norms"].shape == (len(traj), 2)

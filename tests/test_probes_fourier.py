"""Fourier probes against ground truth: the basis, float64 reference projections, planted models."""

from __future__ import annotations

import math

import pytest
import torch

from mechgrok import TaskConfig, build_model, preset
from mechgrok.probes import (
    fourier_basis,
    fourier_over_training,
    frequency_norms,
    gini,
    key_frequencies,
    key_frequency_mask,
    neuron_circles,
    neuron_spectra,
)
from mechgrok.probes._batch import grid_inputs, live_grid_forward, modular_grid_forward
from mechgrok.probes._common import as_trajectory
from mechgrok.probes.fourier import frac_explained_by_frequency, frequency_of_row, neuron_frequency_energy
from mechgrok.probes.synthetic import cossin_solution, interpolated_trajectory, planted_modadd_mlp


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _tiny(name: str, **overrides):
    return preset(name).with_overrides(overrides)


# -- basis ------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [5, 6, 7, 8, 12, 13])
def test_fourier_basis_is_orthonormal_float64(p):
    basis, names = fourier_basis(p)
    assert basis.dtype == torch.float64 and basis.shape == (p, p) and len(names) == p
    torch.testing.assert_close(basis @ basis.T, torch.eye(p, dtype=torch.float64), atol=1e-12, rtol=0)
    assert names[0] == "const" and names[1] == "cos 1" and names[2] == "sin 1"
    if p % 2 == 0:  # Nyquist: only a cos row, cos(pi x) / sqrt(p)
        assert names[-1] == f"cos {p // 2}" and f"sin {p // 2}" not in names
        torch.testing.assert_close(basis[-1], torch.cos(math.pi * torch.arange(p, dtype=torch.float64)) / math.sqrt(p))
    freq = frequency_of_row(p)
    assert freq.tolist() == [0] + [int(n.split()[1]) for n in names[1:]]


def test_frequency_norms_of_planted_waves():
    p = 13
    x = torch.arange(p, dtype=torch.float64)
    w = lambda k: 2 * math.pi * k * x / p
    emb = torch.stack([3 * torch.cos(w(2) + 0.4), 2 * torch.sin(w(5)), torch.ones(p)], dim=-1)  # [p, 3]
    norms = frequency_norms(emb[None].float(), dim=1, batch_dims=1)[0]
    expect = torch.zeros(p // 2, dtype=torch.float64)
    expect[1], expect[4] = 3 * math.sqrt(p / 2), 2 * math.sqrt(p / 2)  # amplitude * sqrt(p / 2)
    torch.testing.assert_close(norms, expect, atol=1e-5, rtol=1e-6)


def test_neuron_energy_matches_float64_reference_projection():
    """The FFT-based 2D energies equal an explicit projection on the real 2D Fourier basis."""
    for p in (7, 8):
        acts = torch.randn(2, p, p, 3, dtype=torch.float64)
        energy = neuron_frequency_energy(acts)  # [2, 3, K+1, K+1]
        basis, _ = fourier_basis(p)
        coef = torch.einsum("fa,gb,nabm->nmfg", basis, basis, acts)  # reference, float64
        freq = frequency_of_row(p)
        K = p // 2
        ref = torch.zeros(2, 3, K + 1, K + 1, dtype=torch.float64)
        for i in range(p):
            for j in range(p):
                ref[:, :, freq[i], freq[j]] += coef[:, :, i, j] ** 2
        torch.testing.assert_close(energy, ref, atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(energy.sum((-1, -2)), acts.pow(2).sum((1, 2)))


def test_neuron_spectra_of_a_planted_model():
    p = 11
    model = planted_modadd_mlp(p, [3])
    post = neuron_spectra(model)
    pre = neuron_spectra(model, which="pre")
    assert post.shape == pre.shape == (1, 8, p // 2 + 1, p // 2 + 1)
    # pre = cos(w a - phi) + cos(w b - phi): all of it in (3, const) and (const, 3)
    torch.testing.assert_close(pre[0, :, 3, 0] + pre[0, :, 0, 3], pre[0].sum((-1, -2)), atol=1e-6, rtol=1e-6)
    frac = frac_explained_by_frequency(post)[0]
    assert (frac.argmax(-1) == 2).all()
    with pytest.raises(ValueError, match="which"):
        neuron_spectra(model, which="mid")


def test_frac_explained_of_a_pure_frequency_neuron():
    p, k = 11, 3
    a = torch.arange(p, dtype=torch.float64)
    w = 2 * math.pi * k / p
    table = (
        torch.cos(w * a)[:, None] + torch.sin(w * a)[None, :] + torch.cos(w * a)[:, None] * torch.cos(w * a)[None, :]
    )
    frac = frac_explained_by_frequency(neuron_frequency_energy(table[:, :, None]))[0]
    assert frac.argmax().item() == k - 1
    assert frac[k - 1].item() == pytest.approx(1.0, abs=1e-12)


def test_gini():
    assert gini(torch.ones(6)).item() == pytest.approx(0.0, abs=1e-12)
    one_hot = torch.zeros(6)
    one_hot[2] = 5.0
    assert gini(one_hot).item() == pytest.approx(1 - 1 / 6)
    assert gini(torch.zeros(4)).item() == 0.0
    assert gini(torch.tensor([[1.0, 1.0], [0.0, 2.0]])).tolist() == pytest.approx([0.0, 0.5])


# -- key-frequency cut -------------------------------------------------------------------------


def test_key_frequency_cut_rules():
    spec = torch.tensor([0.01, 5.0, 0.02, 0.01, 4.0, 0.03, 0.015, 0.01])  # norms; energies squared
    assert key_frequencies(spec) == [2, 5]
    assert key_frequencies(torch.ones(8) + 0.05 * torch.arange(8)) == []  # flat: no gap, no key
    assert key_frequencies(torch.tensor([1.0, 0.0, 0.0, 0.0])) == [1]
    assert key_frequencies(torch.zeros(5)) == []
    # a peak that explains too little of the energy is not a key set
    spread = torch.cat([torch.tensor([3.0]), torch.ones(20)])
    assert key_frequencies(spread) == []
    mask = key_frequency_mask(torch.stack([spec.pow(2), torch.ones(8)]))
    assert mask.tolist()[0] == [False, True, False, False, True, False, False, False]
    assert not mask[1].any()


# -- planted models ----------------------------------------------------------------------------


@pytest.mark.parametrize("p,freqs", [(13, [2, 5]), (11, [3]), (13, [1, 4, 6])])
def test_planted_mlp_has_exactly_its_key_frequencies(p, freqs):
    model = planted_modadd_mlp(p, freqs)
    x = grid_inputs(as_trajectory(model).config)
    assert (model(x).argmax(-1) == (x[:, 0] + x[:, 1]) % p).all()  # it really computes (a + b) mod p
    assert key_frequencies(model) == freqs
    f = fourier_over_training(model)
    emb = f["embed_freq_norms"][0]
    on = torch.tensor([k - 1 for k in freqs])
    assert emb[on].min() > 1.0
    off = torch.ones(p // 2, dtype=torch.bool)
    off[on] = False
    assert emb[off].abs().max() < 1e-5  # float64 projection of float32 weights: no leakage
    assert set(f["neuron_dominant_freq"][0].tolist()) == set(freqs)
    assert f["neuron_frac_explained"][0].min() > 0.9
    assert f["key_freq_mask"][0, on].all() and not f["key_freq_mask"][0, off].any()
    assert f["sparsity"][0].item() == pytest.approx(1 - len(freqs) / (p // 2), abs=1e-5)  # k equal of K
    circles = neuron_circles(model)
    assert circles["phase_spread"][0].item() == pytest.approx(1.0, abs=1e-6)
    assert circles["norm_cv"][0].item() == pytest.approx(0.0, abs=1e-6)


def test_random_init_has_no_key_frequencies():
    cfg = _tiny("modadd-mlp24", **{"task.p": 13, "model.d_model": 32})
    for seed in range(3):
        assert key_frequencies(build_model(cfg.model, cfg.task, seed=seed), cfg.task) == []
    cfg = _tiny(
        "modadd-transformer",
        **{"task.p": 11, "model.d_model": 16, "model.d_mlp": 32, "model.n_heads": 2, "model.d_head": 8},
    )
    assert key_frequencies(build_model(cfg.model, cfg.task, seed=0), cfg.task) == []


def test_noisy_to_periodic_over_a_trajectory():
    p, freqs = 13, [3, 4]
    end = planted_modadd_mlp(p, freqs)
    noise = _tiny("modadd-mlp24", **{"task.p": p, "model.d_model": 4, "model.d_mlp": 16})
    start = build_model(noise.model, TaskConfig(kind="modular", p=p), seed=1)
    cfg = as_trajectory(end).config
    traj = interpolated_trajectory(start, end, cfg, n=6)
    f = fourier_over_training(traj)
    assert f["key_freq_mask"].shape == (6, p // 2) and f["key_freq_mask"].dtype == torch.bool
    assert not f["key_freq_mask"][0].any()
    assert f["key_freq_mask"][-1].nonzero()[:, 0].add(1).tolist() == freqs
    assert f["sparsity"][-1] > f["sparsity"][0]
    assert f["neuron_dominant_freq"].dtype == torch.int64
    assert key_frequencies(traj) == freqs and key_frequencies(traj, row=0) == []


# -- cos/sin model and circles ----------------------------------------------------------------


def test_cossin_solution_sits_evenly_on_a_circle():
    p = 13
    model = cossin_solution(p, frequency=2)
    x = grid_inputs(as_trajectory(model).config)
    assert (model(x).argmax(-1) == (x[:, 0] + x[:, 1]) % p).all()
    c = neuron_circles(model)
    assert c["freq"][0].tolist() == [2] * 5
    torch.testing.assert_close(c["norm"][0], torch.ones(5, dtype=torch.float64), atol=1e-6, rtol=0)
    expect = torch.remainder(2 * math.pi * torch.arange(5, dtype=torch.float64) / 5 + math.pi, 2 * math.pi) - math.pi
    torch.testing.assert_close(
        torch.remainder(c["phase"][0] - expect + math.pi, 2 * math.pi) - math.pi,
        torch.zeros(5, dtype=torch.float64),
        atol=1e-6,
        rtol=0,
    )
    assert c["phase_spread"][0].item() == pytest.approx(1.0, abs=1e-6)
    assert c["norm_cv"][0].item() == pytest.approx(0.0, abs=1e-6)


def test_clustered_or_unequal_neurons_score_low():
    clustered = cossin_solution(13, phases=[0.0, 0.1, 0.2, 0.3, 0.4])
    c = neuron_circles(clustered)
    assert c["phase_spread"][0] < 0.2
    even = cossin_solution(13)
    with torch.no_grad():
        even.blocks[0].mlp.W_in[:, 0] *= 3.0  # one neuron three times longer
    c = neuron_circles(even)
    assert c["phase_spread"][0].item() == pytest.approx(1.0, abs=1e-6)
    assert c["norm_cv"][0] > 0.5


def test_circles_from_pre_activations_match_cossin_weights():
    """The generic read-out (operand-a wave of the pre-activation) agrees with the cos/sin model's
    input weights, which the cos/sin path reads directly."""
    from mechgrok.probes._modular import circle_coefficients

    model = cossin_solution(11, frequency=3, phases=[0.3, 1.9, 2.2, 4.0, 5.5], norm=1.7)
    traj = as_trajectory(model)
    pre = modular_grid_forward(traj.params, traj.config)["pre"]
    coef = circle_coefficients(pre)[0, 2]  # frequency 3 -> [m, 2]
    W_in = traj.params["blocks.0.mlp.W_in"][0].double()
    torch.testing.assert_close(coef, W_in.T, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("p", [5, 6, 11, 12])
def test_circle_coefficients_are_float64_amplitudes(p):
    """circle_coefficients reads the waves through fourier_basis: planted amplitudes come back to
    float64 precision for odd and even p (an even p's Nyquist wave has no sine part)."""
    from mechgrok.probes._modular import circle_coefficients

    a = torch.arange(p, dtype=torch.float64)
    amp = torch.randn(p // 2, 3, 2, dtype=torch.float64)  # [K, m, (c, s)]
    if p % 2 == 0:
        amp[-1, :, 1] = 0.0
    w = 2 * torch.pi * torch.arange(1, p // 2 + 1, dtype=torch.float64)[:, None] * a / p  # [K, a]
    g = (
        0.7
        + torch.einsum("ka,km->am", torch.cos(w), amp[..., 0])
        + torch.einsum("ka,km->am", torch.sin(w), amp[..., 1])
    )
    pre = g[None, :, None, :].expand(1, p, p, 3)  # the same over b
    torch.testing.assert_close(circle_coefficients(pre)[0], amp, atol=1e-12, rtol=0)


# -- batched forward vs hooked live models -----------------------------------------------------


@pytest.mark.parametrize(
    "name,overrides",
    [
        ("modadd-mlp24", {"task.p": 7, "model.d_model": 8, "model.d_mlp": 6}),
        (
            "modadd-mlp24",
            {"task.p": 7, "model.d_model": 8, "model.d_mlp": 6, "tied_embed": "false", "model.bias": "true"},
        ),
        ("modadd-cossin5", {"task.p": 7, "model.frequency": 2}),
        (
            "modadd-transformer",
            {"task.p": 7, "model.d_model": 8, "model.d_mlp": 12, "model.n_heads": 2, "model.d_head": 4},
        ),
    ],
)
def test_batched_grid_forward_matches_run_with_cache(name, overrides):
    from mechgrok import Trajectory

    cfg = _tiny(name, **overrides)
    models = [build_model(cfg.model, cfg.task, seed=s) for s in range(3)]
    for m in models:
        for prm in m.parameters():
            if prm.ndim == 1:
                torch.nn.init.normal_(prm)  # non-zero biases
    params = {k: torch.stack([m.state_dict()[k] for m in models]) for k in models[0].state_dict()}
    traj = Trajectory(torch.arange(3), params, cfg)
    fast = modular_grid_forward(params, cfg)
    slow = live_grid_forward(traj, range(3))
    for key in ("pre", "post", "logits"):
        torch.testing.assert_close(fast[key], slow[key], atol=2e-5, rtol=1e-5)
    before = {k: v.clone() for k, v in params.items()}
    fourier_over_training(traj)
    assert all(torch.equal(before[k], traj.params[k]) for k in before)  # probes never edit weights


def test_recurrent_models_use_the_live_fallback():
    cfg = _tiny("rnn-mod91", **{"task.p": 5, "model.d_model": 8})
    model = build_model(cfg.model, cfg.task, seed=0)
    f = fourier_over_training(model, task=cfg.task)
    assert f["neuron_dominant_freq"].shape == (1, 8)
    assert f["embed_freq_norms"].shape == (1, 2) and f["logit_freq_norms"].shape == (1, 2)
    with pytest.raises(ValueError, match="MLP layer"):
        neuron_circles(model, task=cfg.task)
    assert model._forward_hooks == {} and all(not h.fwd_hooks for h in model.hook_dict.values())


def test_errors_are_one_line():
    cfg = preset("parity").with_overrides({"task.n_bits": 6, "task.n_train": 20, "task.n_test": 20})
    with pytest.raises(ValueError, match="modular") as info:
        fourier_over_training(build_model(cfg.model, cfg.task), task=cfg.task)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="1-D"):
        key_frequencies(torch.ones(2, 3))
    with pytest.raises(ValueError, match="expected"):
        fourier_over_training("not a model")  # type: ignore[arg-type]

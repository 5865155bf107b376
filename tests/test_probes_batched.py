"""The batched, vectorised probe bodies against float64 per-checkpoint references.

The probes run every checkpoint at once with shortcuts that must not change a result: neuron
variance fractions from a basis matmul instead of the 2D FFT, logits only on the inputs a probe
reads, one log-sum-exp per input, flip sensitivity in cache-sized blocks of strings, the prune-now
accuracy over distinct relevant-bit patterns. Each is compared here with a plain reference: one
live model per checkpoint in float64, the FFT energies, ``F.cross_entropy``, least-squares
projections.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from mechgrok import ModelConfig, RunConfig, TaskConfig, Trajectory, build_model, make_dataset, preset
from mechgrok.probes import bit_dependence, prune_now_accuracy
from mechgrok.probes import bits as bits_module
from mechgrok.probes._batch import grid_inputs, hidden_hook_name
from mechgrok.probes._modular import _neuron_frac_explained, modular_sweep
from mechgrok.probes._spectral import (
    fourier_basis,
    frac_explained_by_frequency,
    frequency_norms,
    neuron_frequency_energy,
)
from mechgrok.tasks import modular_table


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# -- neuron variance fractions ------------------------------------------------------------------


@pytest.mark.parametrize("p", [5, 6, 7, 8, 12, 13])
def test_neuron_fractions_match_the_2d_fft(p):
    acts = torch.randn(3, p, p, 5, dtype=torch.float64).relu()
    acts[..., 0] = 0.0  # a dead neuron: no variance, fraction 0 everywhere
    a = torch.arange(p, dtype=torch.float64)
    acts[..., 1] = torch.cos(2 * math.pi * 2 * (a[:, None] + a[None, :]) / p)  # pure frequency 2 (k, k)
    ref = frac_explained_by_frequency(neuron_frequency_energy(acts))
    fast = _neuron_frac_explained(acts)
    assert fast.dtype == torch.float64 and fast.shape == ref.shape == (3, 5, p // 2)
    torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-13)
    assert torch.equal(fast[:, 0], torch.zeros(3, p // 2, dtype=torch.float64))
    torch.testing.assert_close(fast[:, 1, 1], torch.ones(3, dtype=torch.float64))


def test_fourier_projections_are_float64_whatever_the_input_dtype():
    """The numerics rule: Fourier projections run in float64 even on float32 weights (a float32
    projection leaks ~1e-7 of every frequency into the others)."""
    p = 13
    a = torch.arange(p, dtype=torch.float64)
    wave = torch.cos(2 * math.pi * 3 * a / p)
    x32 = torch.stack([wave, 2 * wave], -1).float()[None]  # [1, p, 2]: frequency 3 only
    norms = frequency_norms(x32, dim=1, batch_dims=1)
    assert norms.dtype == torch.float64
    basis, _ = fourier_basis(p)
    ref = (basis @ x32[0].double()).pow(2).sum(-1)  # per basis row, float64
    ref = torch.stack([ref[2 * k - 1 : 2 * k + 1].sum() for k in range(1, p // 2 + 1)]).sqrt()
    torch.testing.assert_close(norms[0], ref, rtol=1e-12, atol=1e-15)
    # the off-frequency norms are the float32 rounding of the wave itself (~1e-8), not a float32
    # projection's leak on top of it
    basis32 = basis.float()
    leak32 = (basis32 @ x32[0]).pow(2).sum(-1)[1:].double().sqrt()
    assert not torch.allclose(leak32[::2][:2], ref[:2], rtol=1e-3)
    acts = torch.randn(2, p, p, 3).relu()  # float32 activations
    assert _neuron_frac_explained(acts).dtype == torch.float64
    torch.testing.assert_close(_neuron_frac_explained(acts), _neuron_frac_explained(acts.double()), rtol=0, atol=0)


# -- the modular sweep against one float64 live model per checkpoint ---------------------------


def _trajectory(cfg: RunConfig, n: int = 3) -> Trajectory:
    models = [build_model(cfg.model, cfg.task, seed=s) for s in range(n)]
    for m in models:
        for prm in m.parameters():
            if prm.ndim == 1:
                torch.nn.init.normal_(prm)  # non-zero biases
    params = {k: torch.stack([m.state_dict()[k] for m in models]) for k in models[0].state_dict()}
    return Trajectory(torch.arange(n) * 10, params, cfg)


def _reference(traj: Trajectory, data, key: list[int]) -> dict[str, torch.Tensor]:
    """Per checkpoint, float64 throughout: full-grid logits and hidden activations of a live
    model, FFT neuron energies, least-squares logit projections, ``F.cross_entropy``."""
    cfg = traj.config
    p = cfg.task.p
    a, b, y = modular_table(cfg.task)
    idx_S = a * p + b
    ys = y.double()
    cols = {
        k: torch.stack([torch.cos(2 * math.pi * k * ys / p), torch.sin(2 * math.pi * k * ys / p)], -1)
        for k in range(1, p // 2 + 1)
    }
    Xk = torch.cat([cols[k] for k in key], -1)
    out: dict[str, list] = {}
    for i in range(len(traj)):
        model = traj.model(i).double()
        with torch.no_grad():
            logits, cache = model.run_with_cache(grid_inputs(cfg), names_filter=lambda nm: nm == hidden_hook_name(cfg))
        logits = logits.double().reshape(p * p, -1)[:, :p]
        post = cache[hidden_hook_name(cfg)]
        post = (post[:, -1] if post.ndim == 3 else post).reshape(p, p, -1).double()
        frac = frac_explained_by_frequency(neuron_frequency_energy(post))  # [m, K]
        out.setdefault("neuron_frac_explained", []).append(frac.max(-1).values)
        L = logits[idx_S]
        energy = []
        for k in range(1, p // 2 + 1):
            X = cols[k]
            proj = X @ torch.linalg.lstsq(X, L).solution
            energy.append(proj.pow(2).sum())
        out.setdefault("logit_freq_norms", []).append((torch.stack(energy) / len(y)).sqrt())
        variance = (L - L.mean(0)).pow(2).sum()
        out.setdefault("logit_freq_frac", []).append(torch.stack(energy) / variance)
        # the key-frequency part is a function of the answer, fitted on the table and subtracted
        # at each train input's answer (also for inputs outside the table)
        coef = torch.linalg.lstsq(Xk, L).solution
        ty = data.train_y.double()
        Xk_train = torch.cat(
            [torch.stack([torch.cos(2 * math.pi * k * ty / p), torch.sin(2 * math.pi * k * ty / p)], -1) for k in key],
            -1,
        )
        tr = data.train_ab[:, 0] * p + data.train_ab[:, 1]
        te = data.test_ab[:, 0] * p + data.test_ab[:, 1]
        out.setdefault("excluded_loss", []).append(F.cross_entropy(logits[tr] - Xk_train @ coef, data.train_y))
        for split, rows, labels in (("train", tr, data.train_y), ("test", te, data.test_y)):
            out.setdefault(f"{split}_loss", []).append(F.cross_entropy(logits[rows], labels))
            out.setdefault(f"{split}_acc", []).append((logits[rows].argmax(-1) == labels).double().mean())
        W_E = traj.params["embed.W_E"][i, :p].double() if "embed.W_E" in traj.params else None
        if W_E is not None:
            basis, _ = fourier_basis(p)
            e = (basis @ W_E).pow(2).sum(-1)  # per basis row
            fold = torch.stack([e[1 + 2 * (k - 1) : 1 + 2 * k].sum() for k in range(1, p // 2 + 1)])
            out.setdefault("embed_freq_norms", []).append(fold.sqrt())
    return {k: torch.stack(v) for k, v in out.items()}


def _split_outside_the_table(data):
    """The split with each train pair (a, b), a < b, swapped to (b, a): inputs the unordered table
    does not hold (as in an imported run whose split differs), so logits are needed beyond it."""
    ab = data.train_ab.clone()
    swap = ab[:, 0] < ab[:, 1]
    ab[swap] = ab[swap].flip(-1)
    return dataclasses.replace(data, train_ab=ab, train_x=ab.clone())


@pytest.mark.parametrize(
    "name,overrides,outside",
    [
        ("modadd-mlp24", {"task.p": 7, "model.d_model": 8, "model.d_mlp": 6}, False),  # unordered pairs
        ("modadd-mlp24", {"task.p": 7, "model.d_model": 8, "model.d_mlp": 6}, True),
        (
            "modadd-mlp24",
            {
                "task.p": 8,
                "task.pairs": "ordered",
                "model.d_model": 8,
                "model.d_mlp": 6,
                "model.tied_embed": False,
                "model.bias": True,
            },
            False,
        ),  # Nyquist frequency
        (
            "modadd-mlp24",
            {
                "task.p": 7,
                "task.op": "sub",
                "task.pairs": "ordered",
                "model.d_model": 8,
                "model.d_mlp": 5,
                "model.dtype": "float32",
            },
            False,
        ),
        (
            "modadd-transformer",
            {"task.p": 7, "model.d_model": 8, "model.d_mlp": 12, "model.n_heads": 2, "model.d_head": 4},
            False,
        ),
    ],
)
def test_modular_sweep_matches_a_float64_per_checkpoint_reference(name, overrides, outside):
    cfg = preset(name).with_overrides(overrides)
    traj = _trajectory(cfg)
    data = make_dataset(cfg.task)
    if outside:
        data = _split_outside_the_table(data)
    key = [1, 3]
    res = modular_sweep(traj, data, ("fourier", "logits", "progress"), key_freqs=key, budget=2**12)
    ref = _reference(traj, data, key)
    tol = {"rtol": 1e-9, "atol": 1e-12} if cfg.model.dtype == "float64" else {"rtol": 2e-5, "atol": 1e-6}
    for k, v in ref.items():
        torch.testing.assert_close(res[k], v, **tol, msg=lambda m, k=k: f"{k}: {m}")
    # chunked the same as unchunked (the budget above forces one checkpoint per chunk)
    whole = modular_sweep(traj, data, ("fourier", "logits", "progress"), key_freqs=key)
    for k in ref:
        torch.testing.assert_close(res[k], whole[k], **tol)


# -- parity: blocked flip sensitivity and prune-now patterns -----------------------------------


@pytest.fixture
def parity_data():
    task = TaskConfig(kind="parity", n_bits=8, relevant_bits=(1, 4, 6), n_train=120, n_test=100, seed=3)
    return make_dataset(task)


def _parity_traj(data, n_out: int, n: int = 4, d_mlp: int = 7, bias: bool = True) -> Trajectory:
    cfg = RunConfig(task=data.task, model=ModelConfig(kind="parity_mlp", d_mlp=d_mlp, bias=bias, n_out=n_out))
    return _trajectory(cfg, n)


@pytest.mark.parametrize("n_out,bias", [(1, True), (2, True), (2, False)])
def test_flip_sensitivity_in_blocks_matches_a_per_model_loop(parity_data, n_out, bias, monkeypatch):
    # blocks of 3 strings: 41 strings end in a partial block
    monkeypatch.setattr(bits_module, "_FLIP_BLOCK", 3 * 8 * 7)
    traj = _parity_traj(parity_data, n_out, bias=bias)
    b = bit_dependence(traj, parity_data, n_eval=41)
    x = parity_data.test_x[:41]
    for i in range(len(traj)):
        model = traj.model(i).double()
        with torch.no_grad():

            def decision(inputs):
                out = model(inputs.double())
                return out[:, 0] if n_out == 1 else out[:, 1] - out[:, 0]

            pred = decision(x) > 0
            for bit in range(8):
                flipped = x.clone()
                flipped[:, bit] = 1 - flipped[:, bit]
                ref = ((decision(flipped) > 0) != pred).double().mean()
                assert b["flip_sensitivity"][i, bit].item() == pytest.approx(ref.item())


@pytest.mark.parametrize("n_out", [1, 2])
def test_prune_now_over_patterns_matches_a_pruned_live_copy(parity_data, n_out):
    traj = _parity_traj(parity_data, n_out, n=5)
    for relevant in ([1, 4, 6], [2], []):
        mask = torch.zeros(8, dtype=torch.bool)
        mask[relevant] = True
        acc = prune_now_accuracy(traj, parity_data, relevant=mask)
        for i in range(len(traj)):
            model = traj.model(i)
            with torch.no_grad():
                model.blocks[0].mlp.W_in[~mask] = 0
                out = model(parity_data.test_x)
                z = out[:, 0] if n_out == 1 else out[:, 1] - out[:, 0]
                ref = ((z > 0).long() == parity_data.test_y).double().mean()
            assert acc[i].item() == pytest.approx(ref.item()), (relevant, i)
    empty = dataclasses.replace(parity_data, test_x=parity_data.test_x[:0], test_y=parity_data.test_y[:0])
    assert torch.isnan(prune_now_accuracy(traj, empty)).all()  # a mean over no strings

"""Models with known mechanisms, built analytically (ground truth for the probes and their tests).

* :func:`planted_modadd_mlp` - PAIR's MLP implementing Nanda et al.'s algorithm with chosen key
  frequencies: for each frequency k the embedding holds (cos w a, sin w a) (w = 2 pi k / p), and
  ``neurons_per_freq`` neurons with phases phi_j = 2 pi j / N read ``cos(w a - phi_j) +
  cos(w b - phi_j)``. Their ReLUs, read out along (cos 2 phi_j, sin 2 phi_j) against the tied
  unembedding, sum to ``N |r| / (3 pi) cos(w (a + b - c))`` with r = 2 cos(w (a - b) / 2) (the
  second Fourier coefficient of ReLU(cos) is 1 / (3 pi)), up to aliased harmonics of order N;
  so the logits peak at c = (a + b) mod p and the key frequencies are exactly the planted ones;
* :func:`cossin_solution` - the same construction on the fixed (cos, sin) embedding: PAIR's
  5-neuron solution, neurons with equal norms evenly spaced on a circle;
* :func:`planted_parity_mlp` - a ParityMLP computing the parity of the relevant bits exactly from
  ReLU "staircase" neurons, optionally with planted weights on irrelevant bits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..config import ModelConfig, RunConfig, TaskConfig
from ..models import build_model
from ..store import Trajectory

__all__ = ["planted_modadd_mlp", "cossin_solution", "planted_parity_mlp", "interpolated_trajectory"]


def planted_modadd_mlp(
    p: int, freqs: Sequence[int], neurons_per_freq: int = 8, scale: float = 1.0, *, task: TaskConfig | None = None
):
    """A tied-embedding ModAddMLP computing (a + b) mod p with exactly the key frequencies ``freqs``.

    ``d_model = 2 * len(freqs)``, ``d_mlp = neurons_per_freq * len(freqs)``; returns the live model.
    """
    freqs = [int(k) for k in freqs]
    if not freqs or any(not 1 <= k < p / 2 for k in freqs) or len(set(freqs)) != len(freqs):
        raise ValueError(f"freqs: need distinct frequencies in [1, {(p - 1) // 2}], got {freqs}")
    n = neurons_per_freq
    task = task or TaskConfig(kind="modular", p=p, format="pairs")
    model = build_model(ModelConfig(kind="mlp", d_model=2 * len(freqs), d_mlp=n * len(freqs), tied_embed=True), task)
    a = torch.arange(p, dtype=torch.float64)
    phi = 2 * math.pi * torch.arange(n, dtype=torch.float64) / n
    W_E = torch.zeros(p, 2 * len(freqs), dtype=torch.float64)
    W_in = torch.zeros(2 * len(freqs), n * len(freqs), dtype=torch.float64)
    W_out = torch.zeros(n * len(freqs), 2 * len(freqs), dtype=torch.float64)
    for i, k in enumerate(freqs):
        w = 2 * math.pi * k / p
        W_E[:, 2 * i] = torch.cos(w * a)
        W_E[:, 2 * i + 1] = torch.sin(w * a)
        cols = slice(i * n, (i + 1) * n)
        W_in[2 * i, cols] = torch.cos(phi)
        W_in[2 * i + 1, cols] = torch.sin(phi)
        W_out[cols, 2 * i] = torch.cos(2 * phi)
        W_out[cols, 2 * i + 1] = torch.sin(2 * phi)
    state = {"embed.W_E": W_E, "blocks.0.mlp.W_in": W_in * scale, "blocks.0.mlp.W_out": W_out * scale}
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval()


def cossin_solution(
    p: int, frequency: int = 1, n_neurons: int = 5, *, norm: float = 1.0, phases: Sequence[float] | None = None
):
    """A CosSinMLP solving (a + b) mod p with neurons evenly spaced on a circle (PAIR).

    ``phases`` (radians) overrides the even spacing 2 pi j / n_neurons (to build uneven ones).
    """
    task = TaskConfig(kind="modular", p=p, format="pairs")
    model = build_model(ModelConfig(kind="cossin_mlp", d_mlp=n_neurons, frequency=frequency), task)
    phi = (
        torch.tensor(list(phases), dtype=torch.float64)
        if phases is not None
        else 2 * math.pi * torch.arange(n_neurons, dtype=torch.float64) / n_neurons
    )
    if phi.shape[0] != n_neurons:
        raise ValueError(f"phases: need {n_neurons} values, got {phi.shape[0]}")
    W_in = torch.stack([torch.cos(phi), torch.sin(phi)]) * norm  # [2, m]: (weight on cos, on sin)
    W_out = torch.stack([torch.cos(2 * phi), torch.sin(2 * phi)], dim=-1)  # [m, 2]
    model.load_state_dict({"blocks.0.mlp.W_in": W_in.float(), "blocks.0.mlp.W_out": W_out.float()})
    return model.eval()


def planted_parity_mlp(
    n_bits: int,
    relevant: Sequence[int],
    *,
    irrelevant_weights: dict[tuple[int, int], float] | None = None,
    n_out: int = 1,
    d_mlp: int | None = None,
):
    """A ParityMLP whose prediction is exactly the parity of ``relevant`` bits.

    With s = sum of the relevant bits (0..r), neuron t (t = 0..r-1) computes ReLU(s - t) and the
    decision logit is ``sum_t c_t ReLU(s - t) - 1/2`` with c_0 = 1 and c_t = 2 (-1)^t for t >= 1,
    which is 1/2 for odd s and -1/2 for even s. ``irrelevant_weights`` plants extra first-layer
    weights ``{(bit, neuron): value}``; extra neurons (``d_mlp`` > r) are zero.
    """
    relevant = [int(b) for b in relevant]
    r = len(relevant)
    m = d_mlp or r
    if m < r:
        raise ValueError(f"d_mlp: need at least {r} neurons for {r} relevant bits, got {m}")
    task = TaskConfig(kind="parity", n_bits=n_bits, relevant_bits=tuple(relevant), n_train=1, n_test=1)
    model = build_model(ModelConfig(kind="parity_mlp", d_mlp=m, bias=True, n_out=n_out), task)
    W_in = torch.zeros(n_bits, m)
    b_in = torch.zeros(m)
    coef = torch.zeros(m)
    for t in range(r):
        W_in[relevant, t] = 1.0
        b_in[t] = -float(t)
        coef[t] = 1.0 if t == 0 else 2.0 * (-1) ** t
    for (bit, neuron), value in (irrelevant_weights or {}).items():
        W_in[bit, neuron] = value
    if n_out == 1:
        W_out, b_out = coef[:, None], torch.tensor([-0.5])
    else:  # logit(1) - logit(0) = the decision logit
        W_out, b_out = torch.stack([-coef / 2, coef / 2], dim=-1), torch.tensor([0.25, -0.25])
    model.load_state_dict(
        {"blocks.0.mlp.W_in": W_in, "blocks.0.mlp.b_in": b_in, "blocks.0.mlp.W_out": W_out, "blocks.0.mlp.b_out": b_out}
    )
    return model.eval()


def interpolated_trajectory(
    start, end, config: RunConfig, n: int = 5, steps: Sequence[int] | None = None
) -> Trajectory:
    """A trajectory moving linearly from model ``start``'s weights to ``end``'s in ``n`` rows."""
    s0, s1 = start.state_dict(), end.state_dict()
    t = torch.linspace(0, 1, n)
    params = {k: torch.stack([(1 - ti) * s0[k] + ti * s1[k] for ti in t]) for k in s0}
    steps_t = torch.tensor(list(steps) if steps is not None else [100 * i for i in range(n)], dtype=torch.int64)
    return Trajectory(steps_t, params, config)

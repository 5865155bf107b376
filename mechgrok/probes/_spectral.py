"""Spectral primitives over Z_p (the real Fourier basis, per-frequency norms, Gini, the key-frequency
cut, 2D neuron energies), all in float64; the quantities are described in
:mod:`mechgrok.probes.fourier`, which re-exports them. They depend on nothing else in ``probes``, so
both the batched modular sweep (``_modular``) and the public probes build on them without a cycle.
"""

from __future__ import annotations

import functools
import math

import torch

__all__ = [
    "fourier_basis",
    "frac_explained_by_frequency",
    "frequency_norms",
    "frequency_of_row",
    "gini",
    "key_frequency_mask",
    "neuron_frequency_energy",
]


def fourier_basis(p: int) -> tuple[torch.Tensor, list[str]]:
    """Orthonormal real Fourier basis of Z_p: ``basis [p, p]`` float64 (rows) and row names.

    Rows: the constant 1/sqrt(p), then cos k, sin k (each sqrt(2/p) cos/sin(2 pi k x / p)) for
    k = 1 .. (p - 1) // 2, plus the Nyquist row cos(pi x)/sqrt(p) when p is even.
    """
    if p < 2:
        raise ValueError(f"fourier_basis: p must be >= 2, got {p}")
    basis, names = _fourier_basis(int(p))
    return basis.clone(), list(names)  # copies: a caller may edit what it gets


@functools.lru_cache(maxsize=16)
def _fourier_basis(p: int) -> tuple[torch.Tensor, tuple[str, ...]]:
    # built once per p: the batched probes ask for it for every chunk of checkpoints, and its
    # 2 p trigonometric rows cost more than a small chunk's projections
    x = torch.arange(p, dtype=torch.float64)
    rows = [torch.full((p,), 1 / math.sqrt(p), dtype=torch.float64)]
    names = ["const"]
    for k in range(1, p // 2 + 1):
        w = 2 * math.pi * k * x / p
        if 2 * k == p:
            rows.append(torch.cos(w) / math.sqrt(p))
            names.append(f"cos {k}")
        else:
            rows += [torch.cos(w) * math.sqrt(2 / p), torch.sin(w) * math.sqrt(2 / p)]
            names += [f"cos {k}", f"sin {k}"]
    return torch.stack(rows), tuple(names)


def frequency_of_row(p: int) -> torch.Tensor:
    """Frequency (0 for the constant) of each row of :func:`fourier_basis` ``[p]`` int64."""
    freq = [0]
    for k in range(1, p // 2 + 1):
        freq += [k] if 2 * k == p else [k, k]
    return torch.tensor(freq, dtype=torch.int64)


def _fold_matrix(p: int) -> torch.Tensor:
    """One-hot ``[p, p // 2]``: basis row -> frequency column (the constant row maps nowhere)."""
    freq = frequency_of_row(p)
    fold = torch.zeros(p, p // 2, dtype=torch.float64)
    rows = torch.nonzero(freq > 0, as_tuple=False)[:, 0]
    fold[rows, freq[rows] - 1] = 1.0
    return fold


def frequency_norms(x: torch.Tensor, dim: int, batch_dims: int = 0) -> torch.Tensor:
    """Per-frequency norms of ``x`` along its Z_p axis ``dim`` (length p), in float64.

    The first ``batch_dims`` axes are kept; every other axis is summed over. E.g. embeddings
    ``[n, p, d]`` with ``dim=1, batch_dims=1`` give ``[n, p // 2]``: for each checkpoint and
    frequency k, the norm of the cos k and sin k coefficients over all d columns.
    """
    x = x.double()
    dim = dim % x.ndim
    if dim < batch_dims:
        raise ValueError(f"frequency_norms: dim {dim} is one of the {batch_dims} batch axes")
    batch = x.shape[:batch_dims]
    p = x.shape[dim]
    # [*batch, p, rest]: for embeddings [n, p, d] a view, so the basis multiplies from the left
    # without copying, and the squares are summed over the rest before folding to frequencies
    x = x.movedim(dim, batch_dims).reshape(*batch, p, -1)
    basis, _ = fourier_basis(p)
    coef = torch.matmul(basis, x)  # [*batch, p (basis row), rest]
    energy = coef.pow_(2).sum(-1)  # [*batch, p]
    return (energy @ _fold_matrix(p)).sqrt()


def gini(x: torch.Tensor) -> torch.Tensor:
    """Gini coefficient along the last axis of non-negative ``x`` (Hurley & Rickard's form).

    ``1 - 2 sum_k (x_(k) / |x|_1) (K - k + 1/2) / K`` over values sorted ascending: 0 when all
    equal, 1 - 1/K when one value holds everything; 0 for an all-zero row.
    """
    x = x.double().abs()
    K = x.shape[-1]
    xs, _ = torch.sort(x, dim=-1)
    total = xs.sum(-1, keepdim=True)
    k = torch.arange(1, K + 1, dtype=torch.float64)
    weights = (K - k + 0.5) / K
    g = 1 - 2 * ((xs / total.clamp_min(1e-300)) * weights).sum(-1)
    return torch.where(total[..., 0] > 0, g, torch.zeros_like(g))


def key_frequency_mask(
    energy: torch.Tensor,
    *,
    total: torch.Tensor | None = None,
    min_gap: float = 4.0,
    min_explained: float = 0.5,
    max_frac: float = 0.5,
) -> torch.Tensor:
    """The key-frequency cut of per-frequency energies ``[..., K]`` (squared norms) -> bool mask.

    Energies are sorted in decreasing order; for each cut m (1 <= m <= max(1, ceil(max_frac * K)),
    m < K) the gap is e_(m) / e_(m+1). The cut with the largest gap is taken if that gap is at least
    ``min_gap`` and the top m frequencies hold at least ``min_explained`` of ``total`` (``[...]``;
    default the sum of the energies - for logits, the variance of the whole logit table, so key
    frequencies must carry most of the logits, not just most of their periodic part); otherwise
    no frequency is key. With K = 1 the only frequency is key if it passes ``min_explained``.
    """
    e = energy.double().clamp_min(0)
    K = e.shape[-1]
    total = e.sum(-1) if total is None else torch.as_tensor(total, dtype=torch.float64).expand(e.shape[:-1])
    if K == 1:
        return ((total > 0) & (e[..., 0] >= min_explained * total))[..., None]
    es, order = torch.sort(e, dim=-1, descending=True)
    m_max = min(K - 1, max(1, math.ceil(max_frac * K)))
    floor = total[..., None] * 1e-30 + 1e-300
    gaps = es[..., :m_max] / es[..., 1 : m_max + 1].clamp_min(0).maximum(floor)  # [..., m_max]
    gap, m_idx = gaps.max(dim=-1)  # cut after position m_idx (m = m_idx + 1)
    explained = es.cumsum(-1).gather(-1, m_idx[..., None])[..., 0] / total.clamp_min(1e-300)
    ok = (gap >= min_gap) & (explained >= min_explained) & (total > 0)
    rank = torch.arange(K).expand_as(e)
    top_sorted = (rank <= m_idx[..., None]) & ok[..., None]
    mask = torch.zeros_like(top_sorted)
    mask.scatter_(-1, order, top_sorted)
    return mask


def neuron_frequency_energy(acts: torch.Tensor) -> torch.Tensor:
    """2D Fourier energy of activations over the operand grid.

    ``acts [..., p, p, m]`` (axis -3 = a, -2 = b) -> ``energy [..., m, K + 1, K + 1]`` float64 where
    ``energy[..., j, ka, kb]`` is the squared norm of neuron j's activation table in the
    components of frequency ka along a and kb along b (0 = constant), in the orthonormal 2D basis
    (so the entries sum to the table's squared norm). Uses a float64 real FFT.
    """
    x = acts.double().movedim(-1, -3)  # [..., m, p, p]
    p = x.shape[-1]
    spec = torch.fft.rfft2(x, norm="ortho")  # [..., m, p(u), p//2+1 (v)]
    spec = spec.real.pow(2) + spec.imag.pow(2)
    v = torch.arange(spec.shape[-1])
    w = torch.where((v == 0) | (2 * v == p), 1.0, 2.0).to(torch.float64)  # v and -v both counted
    u = torch.arange(p)
    fold = torch.zeros(p, p // 2 + 1, dtype=torch.float64)
    fold[u, torch.minimum(u, p - u)] = 1.0  # u and -u fold onto one frequency
    return fold.T @ (spec * w)  # [..., K+1 (ka), p//2+1 (kb)]


def frac_explained_by_frequency(energy: torch.Tensor) -> torch.Tensor:
    """``[..., m, K+1, K+1]`` -> ``[..., m, K]``: fraction of each neuron's variance in
    (k, const) + (const, k) + (k, k) components, k = 1..K (0 where the variance is 0)."""
    K = energy.shape[-1] - 1
    k = torch.arange(1, K + 1)
    part = energy[..., k, 0] + energy[..., 0, k] + energy[..., k, k]
    var = energy.sum((-1, -2)) - energy[..., 0, 0]
    return torch.where(var[..., None] > 0, part / var[..., None].clamp_min(1e-300), torch.zeros_like(part))

"""Neuron circles: each hidden neuron as a point in the (cos, sin) plane of its frequency.

A neuron whose input is a wave ``r cos(w a - phi)`` of operand a (w = 2 pi k / p) is drawn at
``(r cos phi, r sin phi)``: ``norm`` r, ``phase`` phi. For the cos/sin model this is exactly its
input weights (``W_in[:, j]`` = (weight on cos, weight on sin)); for other models the wave is read
from the pre-activation averaged over operand b, at the neuron's dominant frequency (see
:mod:`mechgrok.probes.fourier`). A dead neuron (no variance) has frequency 0 and norm 0.

Per checkpoint (PAIR: after training all neurons have similar norms and sit evenly on a circle):

* ``norm_cv`` - coefficient of variation (std / mean, population std) of all neurons' norms;
* ``phase_spread`` in [0, 1] - evenness of the phases. Neurons are grouped by frequency, keeping
  those whose norm is at least ``min_norm_frac`` (10%) of the largest; in a group of m >= 2
  neurons with sorted phases, the circular gaps g_i (summing to 2 pi) give
  ``1 - sum_i |g_i - 2 pi / m| / (4 pi (m - 1) / m)``: 1 for a perfectly even spacing, 0 when all
  phases coincide. Groups are averaged weighted by size; NaN if no group has two neurons.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import TaskConfig
from ..store import Run, Trajectory
from ._batch import DEFAULT_BUDGET
from ._common import as_trajectory
from ._modular import modular_sweep

__all__ = ["neuron_circles", "phase_spread", "norm_cv"]


def phase_spread(
    phase: torch.Tensor, freq: torch.Tensor, norm: torch.Tensor, min_norm_frac: float = 0.1
) -> torch.Tensor:
    """Evenness of neuron phases ``[n, m]`` -> ``[n]`` (definition in the module docstring)."""
    phase = torch.remainder(phase.double(), 2 * math.pi)
    active = (norm >= min_norm_frac * norm.amax(-1, keepdim=True)) & (norm > 0) & (freq > 0)
    n, m = phase.shape
    total = torch.zeros(n, dtype=torch.float64)
    weight = torch.zeros(n, dtype=torch.float64)
    for k in torch.unique(freq[active]).tolist():
        member = active & (freq == k)
        count = member.sum(-1)  # [n]
        ok = count >= 2
        if not bool(ok.any()):
            continue
        sorted_ph, _ = torch.sort(torch.where(member, phase, torch.full_like(phase, math.inf)), dim=-1)
        idx = torch.arange(m).expand(n, m)
        c = count[:, None].clamp_min(1)
        nxt = torch.where(idx + 1 < c, sorted_ph.roll(-1, dims=-1), sorted_ph[:, :1] + 2 * math.pi)
        gaps = torch.where(idx < c, nxt - sorted_ph, torch.zeros_like(sorted_ph))
        even = 2 * math.pi / c
        dev = torch.where(idx < c, (gaps - even).abs(), torch.zeros_like(gaps)).sum(-1)
        cf = count.double()
        score = 1 - dev / (4 * math.pi * (cf - 1) / cf).clamp_min(1e-12)
        total += torch.where(ok, score * cf, torch.zeros_like(score))
        weight += torch.where(ok, cf, torch.zeros_like(cf))
    return torch.where(weight > 0, total / weight.clamp_min(1), torch.full_like(total, math.nan))


def norm_cv(norm: torch.Tensor) -> torch.Tensor:
    """Coefficient of variation (population std / mean) of norms ``[n, m]`` -> ``[n]``."""
    norm = norm.double()
    mean = norm.mean(-1)
    return torch.where(mean > 0, norm.std(-1, unbiased=False) / mean.clamp_min(1e-300), torch.full_like(mean, math.nan))


def neuron_circles(
    traj: Trajectory | Run | nn.Module,
    *,
    task: TaskConfig | None = None,
    min_norm_frac: float = 0.1,
    budget: int = DEFAULT_BUDGET,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """Neuron circles for every checkpoint of a modular run with an MLP layer.

    Returns ``freq [n, d_mlp]`` int64, ``norm``, ``phase`` (radians, atan2 in (-pi, pi]), ``cos``,
    ``sin`` (each ``[n, d_mlp]``: cos = norm cos(phase), sin = norm sin(phase)), ``phase_spread
    [n]`` and ``norm_cv [n]`` (module docstring).
    """
    traj = as_trajectory(traj, task)
    if traj.config.model.kind not in ("mlp", "cossin_mlp", "transformer"):
        raise ValueError(f"neuron_circles: needs a model with an MLP layer, got {traj.config.model.kind!r}")
    res = modular_sweep(traj, None, ("circles",), budget=budget, progress=progress)
    return circles_from_coefficients(res["circle_freq"], res["circle_cos"], res["circle_sin"], min_norm_frac)


def circles_from_coefficients(
    freq: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, min_norm_frac: float = 0.1
) -> dict[str, torch.Tensor]:
    """The :func:`neuron_circles` dict from per-neuron frequencies and (cos, sin) amplitudes."""
    norm = torch.sqrt(cos.pow(2) + sin.pow(2))
    phase = torch.atan2(sin, cos)
    return {
        "freq": freq,
        "norm": norm,
        "phase": phase,
        "cos": cos,
        "sin": sin,
        "phase_spread": phase_spread(phase, freq, norm, min_norm_frac),
        "norm_cv": norm_cv(norm),
    }

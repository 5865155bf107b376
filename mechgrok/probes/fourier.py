"""Fourier probes for modular arithmetic over Z_p.

Everything is projected onto the real Fourier basis of Z_p (:func:`fourier_basis`) in float64:
float32 projections of near-periodic weights leak ~1e-7 of every frequency into every other one,
which is enough to blur sparsity and key-frequency cuts late in training.

Quantities (frequencies are k = 1 .. p // 2; per-frequency arrays have p // 2 columns, column
k - 1 for frequency k; for even p the last column is the Nyquist frequency p / 2):

* **embedding spectrum** - per-frequency norm of the embedding ``W_E[:p]`` projected on the basis
  along the token axis (for the cos/sin model, whose embedding is fixed, of its effective input
  weights ``W_E @ W_in``): the "noisy, then periodic" picture;
* **neuron spectrum** - the 2D Fourier transform of each hidden neuron's activation over all p^2
  inputs (a, b). The variance explained by frequency k is the energy in the components
  (k, const), (const, k) and (k, k) (terms cos/sin(w a), cos/sin(w b) and their products, w =
  2 pi k / p) divided by the variance (total energy minus the constant term). The dominant
  frequency maximises it (0 for a neuron with zero variance);
* **logit spectrum** - following Nanda et al., for every output logit c the logit table over the
  task's inputs is projected onto the 2D span of cos(w y) and sin(w y), y = (a op b) mod p the
  correct answer (for addition: cos(w (a + b)), sin(w (a + b))). ``logit_freq_norms[k]`` is the
  root-mean-square over inputs of the norm over outputs of that projection;
* **sparsity** - Gini coefficient of per-frequency norms (Hurley & Rickard form, 0 = all equal,
  1 - 1/K = one frequency), as in Nanda et al.;
* **key frequencies** - a principled cut of the logit spectrum (:func:`key_frequency_mask`): sort
  the per-frequency energies, cut at the largest ratio between consecutive energies among the top
  half, and accept the top set only if that ratio is at least ``min_gap`` (4, i.e. 2x in norm)
  and the set explains at least ``min_explained`` (50%) of the variance of the whole logit table
  (over inputs, for every output). No count is fixed in advance; a noise spectrum has no large
  gap, and periodic components that do not yet carry the logits (early in circuit formation)
  explain too little, so neither gives a key frequency. ``logit_freq_frac`` is each
  frequency's share of that variance.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..config import TaskConfig
from ..store import Run, Trajectory
from ._batch import DEFAULT_BUDGET, grid_forward, grid_row_cost, row_chunks
from ._common import as_trajectory
from ._modular import modular_sweep

# the spectral primitives live in _spectral (which _modular's batched sweep also uses, so that
# this module can import the sweep without a cycle); they stay public under this module's name
from ._spectral import (
    fourier_basis,
    frac_explained_by_frequency,  # noqa: F401 (re-exported, not in __all__)
    frequency_norms,
    frequency_of_row,
    gini,
    key_frequency_mask,
    neuron_frequency_energy,
)

# what fourier_over_training returns (and an analysis stores as ``fourier/<key>``)
FOURIER_KEYS = (
    "embed_freq_norms",
    "neuron_dominant_freq",
    "neuron_frac_explained",
    "logit_freq_norms",
    "logit_freq_frac",
    "sparsity",
    "sparsity_logits",
    "key_freq_mask",
    "input_freq_norms",
)

__all__ = [
    "fourier_basis",
    "frequency_of_row",
    "frequency_norms",
    "gini",
    "key_frequency_mask",
    "key_frequencies",
    "neuron_frequency_energy",
    "neuron_spectra",
    "fourier_over_training",
]


def key_frequencies(
    source: Trajectory | Run | nn.Module | torch.Tensor | Sequence[float],
    task: TaskConfig | None = None,
    *,
    row: int = -1,
    min_gap: float = 4.0,
    min_explained: float = 0.5,
) -> list[int]:
    """The key frequencies of a model: the principled cut (:func:`key_frequency_mask`) of its
    logit spectrum against the variance of its logit table (module docstring).

    ``source`` is a :class:`Trajectory` / :class:`Run` (checkpoint ``row``, default the last),
    a live mechgrok modular model (``task`` defaults to addition in the model's input format), or a
    1-D tensor of per-frequency norms (column k - 1 = frequency k) to cut directly (then
    ``min_explained`` is relative to the spectrum's own total).
    """
    if isinstance(source, (torch.Tensor, list, tuple)):
        norms = torch.as_tensor(source, dtype=torch.float64)
        if norms.ndim != 1:
            raise ValueError(
                f"key_frequencies: expected a 1-D tensor of per-frequency norms, got shape {list(norms.shape)}"
            )
        mask = key_frequency_mask(norms.pow(2), min_gap=min_gap, min_explained=min_explained)
        return [int(k) + 1 for k in torch.nonzero(mask, as_tuple=False)[:, 0]]
    traj = as_trajectory(source, task)
    one = traj.subset([row % len(traj)])
    res = modular_sweep(one, None, parts=("logits",), min_gap=min_gap, min_explained=min_explained)
    return [int(k) + 1 for k in torch.nonzero(res["key_freq_mask"][0], as_tuple=False)[:, 0]]


def neuron_spectra(
    traj: Trajectory | Run | nn.Module,
    *,
    which: str = "post",
    task: TaskConfig | None = None,
    budget: int = DEFAULT_BUDGET,
) -> torch.Tensor:
    """2D Fourier energies of every hidden neuron's activation table over all p^2 inputs.

    ``which``: ``"post"`` (after the ReLU) or ``"pre"``. Returns ``[n, d_mlp, K + 1, K + 1]``
    float64 (:func:`neuron_frequency_energy`; entry [.., j, ka, kb] = energy of neuron j in
    frequency ka along a and kb along b, 0 = constant).
    """
    if which not in ("pre", "post"):
        raise ValueError(f"which: must be 'pre' or 'post', got {which!r}")
    traj = as_trajectory(traj, task)
    if traj.config.task.kind != "modular":
        raise ValueError(f"neuron_spectra: need a modular-arithmetic run, got task {traj.config.task.kind!r}")
    if which == "pre" and traj.config.model.kind not in ("mlp", "cossin_mlp", "transformer"):
        raise ValueError(f"neuron_spectra: model {traj.config.model.kind!r} has no MLP pre-activations")
    out = []
    for rows in row_chunks(len(traj), grid_row_cost(traj.config), budget):
        out.append(neuron_frequency_energy(grid_forward(traj, rows, need_logits=False)[which]))
    return torch.cat(out)


def fourier_over_training(
    traj: Trajectory | Run | nn.Module,
    *,
    task: TaskConfig | None = None,
    min_gap: float = 4.0,
    min_explained: float = 0.5,
    budget: int = DEFAULT_BUDGET,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """Fourier probes for every checkpoint of a modular-arithmetic run (module docstring).

    Returns (leading axis = checkpoints):

    * ``embed_freq_norms [n, p//2]`` - embedding spectrum;
    * ``neuron_dominant_freq [n, d_mlp]`` int64, ``neuron_frac_explained [n, d_mlp]`` - per hidden
      neuron (RNN / LSTM: units of the final hidden state);
    * ``logit_freq_norms [n, p//2]`` - logit spectrum; ``logit_freq_frac [n, p//2]`` - each
      frequency's share of the logit table's variance;
    * ``sparsity [n]`` - Gini of ``embed_freq_norms``; ``sparsity_logits [n]`` - of the logit one;
    * ``key_freq_mask [n, p//2]`` bool - key-frequency cut of each checkpoint's logit spectrum;
    * ``input_freq_norms [n, p//2]`` (MLP models) - spectrum of the neurons' input weights
      ``W_E @ W_in``.
    """
    traj = as_trajectory(traj, task)
    res = modular_sweep(
        traj,
        None,
        parts=("fourier", "logits"),
        min_gap=min_gap,
        min_explained=min_explained,
        budget=budget,
        progress=progress,
    )
    return {k: res[k] for k in FOURIER_KEYS if k in res}

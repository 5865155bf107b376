"""Nanda et al.'s progress measures for any modular-arithmetic model in the toolkit.

Per checkpoint, from the logits over the task's whole table (all of its (a, b) pairs):

* ``restricted_loss`` - keep only the key frequencies: for every output logit c, the logit table
  is replaced by its least-squares projection onto span{1, cos(w_k y), sin(w_k y) : k key}
  (y = the correct answer, w_k = 2 pi k / p; for addition cos(w_k (a + b))), and the loss is
  evaluated on the whole table. Keeping the constant is Nanda et al.'s "bias correction";
* ``excluded_loss`` - remove the key frequencies: subtract the projection onto
  span{cos(w_k y), sin(w_k y) : k key} and evaluate on the training set;
* ``train_loss`` / ``test_loss`` (and ``train_acc`` / ``test_acc``) - the checkpoint's own
  losses on the run's split, recomputed from the logits;
* ``sum_sq_weights`` - total sum of squared parameters.

The key frequencies are those of the last checkpoint unless given (Nanda et al. fix them from the
trained model). Losses use the float64 log-softmax of :func:`mechgrok.train.loss_and_accuracy`.

Events (:func:`modular_events`):

* ``key_freq_step`` - first checkpoint from which on every final key frequency is in the
  checkpoint's key-frequency cut;
* ``restricted_drop_step`` - first checkpoint from which on the restricted loss stays below the
  geometric mean of its maximum and its final value (None unless it falls at least 2x);
* ``excluded_rise_step`` - first checkpoint where the excluded loss exceeds both chance (log p,
  the loss of uniform logits) and ``rise_factor`` (10) times the train loss: without the key
  frequencies the network fits its own training set worse than guessing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .._util import first_step
from ..store import Run, Trajectory
from ..tasks import Dataset
from ._batch import DEFAULT_BUDGET
from ._common import as_trajectory, first_stable_step
from ._modular import modular_sweep
from .events import ModularEvents

__all__ = ["progress_measures", "modular_events"]

# what progress_measures returns (and an analysis stores as ``progress/<key>``)
PROGRESS_KEYS = (
    "restricted_loss",
    "excluded_loss",
    "train_loss",
    "test_loss",
    "train_acc",
    "test_acc",
    "sum_sq_weights",
)


def progress_measures(
    traj: Trajectory | Run | nn.Module,
    data: Dataset,
    *,
    key_freqs: Sequence[int] | None = None,
    budget: int = DEFAULT_BUDGET,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """Progress measures for every checkpoint (module docstring).

    Returns ``restricted_loss``, ``excluded_loss``, ``train_loss``, ``test_loss``, ``train_acc``,
    ``test_acc`` and ``sum_sq_weights``, each ``[n]`` float64. ``key_freqs`` defaults to
    :func:`~mechgrok.probes.fourier.key_frequencies` of the last checkpoint.
    """
    traj = as_trajectory(traj, data.task)
    res = modular_sweep(traj, data, ("progress",), key_freqs=key_freqs, budget=budget, progress=progress)
    return {k: res[k] for k in PROGRESS_KEYS}


def modular_events(
    steps: torch.Tensor | Sequence[int],
    progress: dict[str, torch.Tensor],
    key_freq_mask: torch.Tensor | None = None,
    key_freqs: Sequence[int] | None = None,
    *,
    rise_factor: float = 10.0,
    p: int | None = None,
) -> ModularEvents:
    """Events of a modular run from :func:`progress_measures` (and the per-checkpoint
    ``key_freq_mask`` of :func:`~mechgrok.probes.fourier.fourier_over_training`); ``p`` (the
    modulus) sets the chance level log p, default: no chance condition."""
    steps = torch.as_tensor(steps)
    if key_freqs is None:
        if "key_frequencies" not in progress:
            raise ValueError("modular_events: pass key_freqs (the frequencies the progress measures used)")
        key_freqs = [int(k) for k in progress["key_frequencies"]]
    key_freqs = [int(k) for k in key_freqs]
    key_freq_step = None
    if key_freq_mask is not None and key_freqs:
        cols = torch.tensor([k - 1 for k in key_freqs])
        key_freq_step = first_stable_step(steps, key_freq_mask[:, cols].all(-1))
    r = progress["restricted_loss"]
    high, low = float(r.max()), float(r[-1])
    drop_step = None
    if math.isfinite(high) and high > 0 and low <= high / 2:
        threshold = math.sqrt(high * max(low, 1e-300))
        drop_step = first_stable_step(steps, r <= threshold)
    ex, tr = progress["excluded_loss"], progress["train_loss"]
    chance = math.log(p) if p else 0.0
    rise_step = first_step(steps, (ex >= rise_factor * tr) & (ex > chance)) if key_freqs else None
    return ModularEvents(
        key_frequencies=key_freqs,
        key_freq_step=key_freq_step,
        restricted_drop_step=drop_step,
        excluded_rise_step=rise_step,
        rise_factor=rise_factor,
    )

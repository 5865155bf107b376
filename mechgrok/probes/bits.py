"""Bit-dependence probes for sparse parity: which input bits a network still reads, per checkpoint.

All quantities are computed for every checkpoint at once (batched over the trajectory's leading
axis) from the first-layer weights ``blocks.0.mlp.W_in [n_bits, d_mlp]`` (row i = every neuron's
weight on bit i) and forward passes on held-out strings.

Definitions (``z`` is the decision logit: the single logit, or logit(1) - logit(0) for two; the
prediction is ``z > 0``):

* ``weight_norm[i]``      - Euclidean norm over neurons of bit i's first-layer weights;
* ``max_abs_weight[i]``   - the largest |weight| on bit i over neurons;
* ``grad_attr[i]``        - mean over held-out strings of |dz / dx_i| (input-gradient attribution);
* ``flip_sensitivity[i]`` - fraction of held-out strings whose prediction changes when bit i is
  flipped;
* ``relevant[i]``         - whether bit i is one of the bits whose parity is the label (solved from
  the training data over GF(2), falling back to the task config).

Pruning rule (:func:`parity_events`): an irrelevant bit counts as *read* while any of its
first-layer weights is larger than ``prune_threshold`` (default 0.1) times the largest first-layer
weight on a relevant bit at that checkpoint. ``pruned_step`` is the first checkpoint from which on
no irrelevant bit is read (the condition holds at that checkpoint and every later one).
``sensitivity_zero_step`` is the first checkpoint from which on every irrelevant bit's flip
sensitivity is at most ``sensitivity_tol`` (default 0.01). Requiring the condition to hold until
the end keeps a momentary dip from counting as the event.

Causal check (:func:`prune_now_accuracy`): every checkpoint's test accuracy after zeroing all
first-layer weights on irrelevant bits (on a copy); ``prune_now_step`` is the first checkpoint at
or after memorisation where that reaches 99%.
"""

from __future__ import annotations

import numpy as np
import torch

from .._util import first_step
from ..store import Trajectory
from ..tasks import Dataset
from ._batch import (
    DEFAULT_BUDGET,
    decision_bias,
    decision_readout,
    parity_pre,
    row_chunks,
)
from ._common import as_trajectory, first_stable_step
from .events import ParityEvents

__all__ = [
    "bit_dependence",
    "prune_now_accuracy",
    "parity_events",
    "irrelevant_series",
    "infer_relevant_bits",
    "relevant_mask",
]

# elements of the per-block flipped pre-activations in bit_dependence (float32: 1 MB, fits L2)
_FLIP_BLOCK = 2**18


def infer_relevant_bits(bits: torch.Tensor, labels: torch.Tensor) -> tuple[int, ...] | None:
    """The bit set S with ``labels == sum(bits[:, S]) mod 2`` for every row, or None.

    Solved exactly by Gaussian elimination over GF(2); None when no parity fits the labels or the
    strings do not determine S uniquely (fewer independent strings than bits).
    """
    x = (bits.detach().cpu().numpy().astype(np.int64) % 2).astype(bool)
    y = (labels.detach().cpu().numpy().astype(np.int64) % 2).astype(bool)
    n_rows, n_bits = x.shape
    aug = np.concatenate([x, y[:, None]], axis=1)
    pivots: list[int] = []
    row = 0
    for col in range(n_bits):
        hits = np.flatnonzero(aug[row:, col])
        if hits.size == 0:
            continue
        r = row + int(hits[0])
        if r != row:
            aug[[row, r]] = aug[[r, row]]
        others = np.flatnonzero(aug[:, col])
        others = others[others != row]
        aug[others] ^= aug[row]
        pivots.append(col)
        row += 1
        if row == n_rows:
            break
    if len(pivots) < n_bits:
        return None  # underdetermined
    if aug[row:, n_bits].any():
        return None  # inconsistent: the labels are not a parity of the bits
    return tuple(sorted(pivots[i] for i in range(len(pivots)) if aug[i, n_bits]))


def relevant_mask(data: Dataset) -> torch.Tensor:
    """Bool ``[n_bits]``: the relevant bits, found from the training data (GF(2) solve) and
    falling back to ``data.task.relevant_bits`` when the data does not determine them."""
    n_bits = data.train_ab.shape[1]
    found = infer_relevant_bits(data.train_ab, data.train_y)
    bits = found if found else data.task.relevant_bits
    mask = torch.zeros(n_bits, dtype=torch.bool)
    mask[list(bits)] = True
    return mask


def _check_parity(traj: Trajectory, data: Dataset) -> None:
    if traj.config.model.kind != "parity_mlp" or data.task.kind != "parity":
        raise ValueError(
            f"bit probes: need a parity_mlp on a parity task, got model {traj.config.model.kind!r} "
            f"on task {data.task.kind!r}"
        )


@torch.no_grad()
def bit_dependence(
    traj: Trajectory | torch.nn.Module,
    data: Dataset,
    *,
    n_eval: int = 512,
    budget: int = DEFAULT_BUDGET,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """Per checkpoint, per input bit: how much the network depends on that bit.

    Returns ``weight_norm``, ``max_abs_weight``, ``grad_attr``, ``flip_sensitivity`` (each
    ``[n, n_bits]``, float64) and ``relevant [n_bits]`` (bool); see the module docstring.
    Held-out strings are the first ``n_eval`` of ``data.test_x``. A live model is treated as a
    one-checkpoint trajectory.
    """
    traj = as_trajectory(traj, data.task)
    _check_parity(traj, data)
    W_in = traj.params["blocks.0.mlp.W_in"]  # [n, bits, m]
    n, n_bits, m = W_in.shape
    x = data.test_x[:n_eval].to(W_in.dtype)  # [B, bits]
    sign = 1.0 - 2.0 * x  # flipping bit i adds sign[:, i] * W_in[i]
    B = x.shape[0]
    grad_attr = torch.empty(n, n_bits, dtype=torch.float64)
    flip = torch.empty(n, n_bits, dtype=torch.float64)
    # The flipped pre-activations [B, bits, m] per checkpoint are the big tensor (8 MB for the
    # parity preset). They are built one checkpoint and one block of strings at a time into a
    # reused buffer of ~1 MB that stays in L2: a fresh [chunk, B, bits, m] tensor per chunk cost
    # page faults and cache misses and made this probe 5-10x slower on one thread.
    block = max(1, min(B, _FLIP_BLOCK // max(n_bits * m, 1)))
    buf = torch.empty(block, n_bits, m, dtype=W_in.dtype)
    from tqdm.auto import tqdm

    chunks = list(row_chunks(n, B * max(n_bits, m), min(budget, 2**20)))
    for rows in tqdm(chunks, disable=not progress, desc="bit probes", unit="chunk", leave=False):
        params = {k: v[rows] for k, v in traj.params.items()}
        W = W_in[rows]  # [c, bits, m]
        c = W.shape[0]
        pre = parity_pre(params, x)  # [c, B, m]
        v = decision_readout(params)  # [c, m]
        bias = decision_bias(params)  # [c]
        # dz/dx_i = sum_j v_j 1[pre_j > 0] W_in[i, j]
        grad = torch.bmm((pre > 0).to(pre.dtype) * v[:, None, :], W.transpose(1, 2))  # [c, B, bits]
        grad_attr[rows] = grad.abs().double().mean(1)
        z = torch.bmm(pre.relu(), v[:, :, None])[..., 0] + bias[:, None]  # [c, B]
        z_flip = torch.empty(c, B, n_bits, dtype=pre.dtype)  # without the bias
        for i in range(c):
            for s in range(0, B, block):
                e = min(B, s + block)
                pf = buf[: e - s]  # [b, bits, m]
                torch.addcmul(pre[i, s:e, None, :], sign[s:e, :, None], W[i, None], out=pf)
                torch.mv(pf.relu_().view(-1, m), v[i], out=z_flip[i, s:e].view(-1))
        z_flip += bias[:, None, None]
        flip[rows] = ((z_flip > 0) != (z > 0)[:, :, None]).double().mean(1)
    return {
        "weight_norm": W_in.double().norm(dim=-1),
        "max_abs_weight": W_in.double().abs().amax(dim=-1),
        "grad_attr": grad_attr,
        "flip_sensitivity": flip,
        "relevant": relevant_mask(data),
    }


@torch.no_grad()
def prune_now_accuracy(
    traj: Trajectory | torch.nn.Module,
    data: Dataset,
    *,
    relevant: torch.Tensor | None = None,
    budget: int = DEFAULT_BUDGET,
) -> torch.Tensor:
    """Causal check: test accuracy ``[n]`` of each checkpoint after zeroing every first-layer
    weight on an irrelevant bit (on a copy; the trajectory is not modified).

    If a checkpoint taken after memorisation and before generalisation scores ~100% here, pruning
    the irrelevant bits is all that separated it from generalising.
    """
    traj = as_trajectory(traj, data.task)
    _check_parity(traj, data)
    rel = relevant_mask(data) if relevant is None else relevant.to(torch.bool)
    W_in = traj.params["blocks.0.mlp.W_in"]
    n, _, m = W_in.shape
    # zeroing the irrelevant rows of W_in == reading only the relevant bits: a pruned copy that
    # also skips the zero rows' arithmetic. The pruned network then sees only the relevant bits,
    # so it has at most 2^|relevant| distinct inputs (8 for 3 bits, against 5,000 test strings):
    # each distinct pattern is evaluated once and weighted by how many test strings of each label
    # carry it, which gives the same accuracy.
    x_rel = data.test_x[:, rel]  # [B, relevant]
    B = x_rel.shape[0]
    if B and x_rel.shape[1]:
        patterns, which = torch.unique(x_rel, dim=0, return_inverse=True)  # [u, relevant], [B]
    else:  # no relevant bit (or no string): every string is the one empty pattern
        patterns, which = x_rel[:1], torch.zeros(B, dtype=torch.int64)
    u = patterns.shape[0]
    label1 = torch.zeros(u, dtype=torch.float64).index_add_(0, which, (data.test_y == 1).double())
    label0 = torch.zeros(u, dtype=torch.float64).index_add_(0, which, (data.test_y == 0).double())
    x = patterns.to(W_in.dtype)
    acc = torch.empty(n, dtype=torch.float64)
    for rows in row_chunks(n, max(u, 1) * m, budget):
        params = {k: v[rows] for k, v in traj.params.items()}
        params["blocks.0.mlp.W_in"] = params["blocks.0.mlp.W_in"][:, rel]
        pre = parity_pre(params, x)  # [c, u, m]
        z = torch.bmm(pre.relu_(), decision_readout(params)[:, :, None])[..., 0] + decision_bias(params)[:, None]
        acc[rows] = torch.where(z > 0, label1, label0).sum(-1) / B  # 0 / 0 = NaN without strings, as a mean
    return acc


def irrelevant_series(bits: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-checkpoint series the pruning events are read from (each ``[n]``, float64):

    * ``irrelevant_weight_ratio`` - largest |first-layer weight| on any irrelevant bit divided by
      the largest one on a relevant bit;
    * ``irrelevant_sensitivity``  - largest flip sensitivity over the irrelevant bits;
    * ``irrelevant_grad_attr``    - largest gradient attribution over the irrelevant bits divided
      by the mean over the relevant bits.
    """
    rel = bits["relevant"].to(torch.bool)
    if rel.all() or not rel.any():
        raise ValueError("parity events: need both relevant and irrelevant bits")
    wmax = bits["max_abs_weight"]
    grad = bits["grad_attr"]
    return {
        "irrelevant_weight_ratio": wmax[:, ~rel].amax(-1) / wmax[:, rel].amax(-1).clamp_min(1e-30),
        "irrelevant_sensitivity": bits["flip_sensitivity"][:, ~rel].amax(-1),
        "irrelevant_grad_attr": grad[:, ~rel].amax(-1) / grad[:, rel].mean(-1).clamp_min(1e-30),
    }


def parity_events(
    bits: dict[str, torch.Tensor],
    steps: torch.Tensor | list[int],
    *,
    generalised_step: int | None = None,
    prune_threshold: float = 0.1,
    sensitivity_tol: float = 0.01,
    prune_now_acc: torch.Tensor | None = None,
    memorised_step: int | None = None,
    acc_threshold: float = 0.99,
) -> ParityEvents:
    """Pruning events of a parity run from :func:`bit_dependence` output (rules in the module
    docstring).

    Returns a :class:`~mechgrok.probes.events.ParityEvents`: ``pruned_step`` and
    ``sensitivity_zero_step`` (None if never), the thresholds used, and, when ``generalised_step``
    is given, ``prune_lag`` =
    generalised_step - pruned_step and ``sensitivity_lag`` likewise. With ``prune_now_acc`` (from
    :func:`prune_now_accuracy`), ``prune_now_step`` is the first checkpoint at or after
    ``memorised_step`` whose pruned copy reaches ``acc_threshold`` test accuracy.
    """
    steps_t = torch.as_tensor(steps)
    series = irrelevant_series(bits)
    ratio, sens = series["irrelevant_weight_ratio"], series["irrelevant_sensitivity"]
    pruned = first_stable_step(steps_t, ratio <= prune_threshold)
    sens_zero = first_stable_step(steps_t, sens <= sensitivity_tol)
    out = ParityEvents(
        pruned_step=pruned,
        sensitivity_zero_step=sens_zero,
        prune_threshold=prune_threshold,
        sensitivity_tol=sensitivity_tol,
    )
    if generalised_step is not None:
        out.prune_lag = None if pruned is None else generalised_step - pruned
        out.sensitivity_lag = None if sens_zero is None else generalised_step - sens_zero
    if prune_now_acc is not None:
        ok = prune_now_acc >= acc_threshold
        if memorised_step is not None:
            ok &= steps_t >= memorised_step
        out.prune_now_step = first_step(steps_t, ok)
    return out

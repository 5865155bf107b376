"""Numerical stability over training (Prieto et al. 2025, "Grokking at the edge of numerical
stability"): the softmax-collapse fraction, the alignment of the loss gradient with the weights
(naive loss minimisation) and the logit norm, at every checkpoint.

All three are read in the run's own loss (``optim.loss``, ``optim.loss_dtype``,
``optim.loss_reduction``) on its full training set, so a collapse the run suffered is the one
reported here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..metrics import example_nll, loss_divisor
from ..store import Run, Trajectory
from ..tasks import Dataset, make_dataset
from ._common import as_trajectory

__all__ = ["stability_over_training"]


def _example_losses(logits: torch.Tensor, y: torch.Tensor, loss: str, dtype: str) -> torch.Tensor:
    if logits.shape[-1] == 1:  # BCE is always float64 (metrics.loss_and_accuracy)
        return F.binary_cross_entropy_with_logits(logits[..., 0].double(), y.double(), reduction="none")
    return example_nll(logits, y, loss, dtype)


def stability_over_training(traj: Trajectory | Run | torch.nn.Module, data: Dataset | None = None) -> dict:
    """Per checkpoint, on the training set:

    - ``collapse_fraction [n]``: training samples whose loss is exactly zero in the run's loss
      precision, so the gradient of their label's logit is exactly zero (softmax collapse: the
      label's probability rounded to 1; Prieto et al.'s measure). The other logits' gradients are
      then below the float's resolution of 1 (e.g. exp(-margin) < 6e-8 in float32), but not
      always exactly zero;
    - ``zero_grad_fraction [n]``: samples whose whole loss gradient w.r.t. their logits is exactly
      zero (every other probability underflowed too: a float32 margin of ~104);
    - ``alignment [n]`` and ``alignment_per_tensor {name: [n]}``: cosine between -grad and w (all
      parameters together, and per tensor; 0 for a zero tensor or gradient, e.g. biases at
      initialisation - no direction to align, and NaN would make stored analyses unequal to
      themselves), the gradient of the
      run's mean loss without L1 - positive and growing is naive loss minimisation, scaling the
      weights up;
    - ``logit_norm [n]``: the mean over training samples of the L2 norm of their logit vector.

    ``data`` overrides the dataset generated from the run's task. Returns plain tensors (float64)
    and ``steps``.
    """
    traj = as_trajectory(traj)
    cfg = traj.config
    oc = cfg.optim
    data = data if data is not None else make_dataset(cfg.task)
    x, y = data.train_x, data.train_y
    n = len(traj)
    collapse = torch.zeros(n, dtype=torch.float64)
    zero_grad = torch.zeros(n, dtype=torch.float64)
    align = torch.zeros(n, dtype=torch.float64)
    lnorm = torch.zeros(n, dtype=torch.float64)
    per_tensor: dict[str, torch.Tensor] = {}
    for i in range(n):
        model = traj.model(i)
        params = dict(model.named_parameters())
        logits = model(x)
        nll = _example_losses(logits, y, oc.loss, oc.loss_dtype)
        (g_logits,) = torch.autograd.grad(nll.sum(), logits, retain_graph=True)  # row i: sample i's gradient only
        collapse[i] = (nll.detach() == 0).double().mean()
        zero_grad[i] = (g_logits == 0).all(-1).double().mean()
        lnorm[i] = logits.detach().double().norm(dim=-1).mean()
        mean = nll.mean().double() / loss_divisor(logits.shape[-1], oc.loss_reduction)
        grads = torch.autograd.grad(mean, list(params.values()), allow_unused=True)
        dot = sq_w = sq_g = 0.0
        for (name, w), g in zip(params.items(), grads):
            w64 = w.detach().double().reshape(-1)
            g64 = g.double().reshape(-1) if g is not None else torch.zeros_like(w64)
            d, ww, gg = float(-(g64 @ w64)), float(w64 @ w64), float(g64 @ g64)
            dot, sq_w, sq_g = dot + d, sq_w + ww, sq_g + gg
            col = per_tensor.setdefault(name, torch.zeros(n, dtype=torch.float64))
            if ww > 0 and gg > 0:
                col[i] = d / (ww * gg) ** 0.5
        align[i] = dot / (sq_w * sq_g) ** 0.5 if sq_w > 0 and sq_g > 0 else 0.0
    return {
        "steps": traj.steps.clone(),
        "collapse_fraction": collapse,
        "zero_grad_fraction": zero_grad,
        "alignment": align,
        "alignment_per_tensor": per_tensor,
        "logit_norm": lnorm,
    }

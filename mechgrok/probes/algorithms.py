"""Clock or pizza: Zhong et al. 2023's signatures of the algorithm a modular-addition network uses.

"The Clock and the Pizza" (code: github.com/fjzzq2002/pizza) tells two algorithms for
(a + b) mod p apart. The **clock** (Nanda et al.) multiplies the operands' waves, so its correct
logit is the same for every input with the same answer; the **pizza** adds the operands'
embeddings before a nonlinearity, so its correct logit scales with |cos(pi k (a - b) / p)| and its
gradients are symmetric in a and b. The signatures, per checkpoint (all in float64):

* :func:`distance_irrelevance` - their ``distance_irrelevancy``: lay the correct logits out as
  ``Q[s, d]`` with s = (a + b) mod p, d = (a - b) mod p; the mean over d of the standard deviation
  over s, divided by the standard deviation of all of Q (numpy's ``std``, ddof 0). Near 1: the
  logit ignores the distance a - b (clock); near 0: it is a function of the distance (pizza).
* :func:`gradient_symmetricity` - for random triples (a, b, c), the cosine similarity between
  the gradients of the logit of c with respect to the embeddings of a and of b (the vectors the
  model's ``hook_embed`` carries), averaged over the triples. Near 1: pizza; clearly below 1: clock.
* :func:`circularity` - for the top ``n_components`` principal components of the (centred) token
  embedding, the fraction of each component's power (its DFT over the p tokens) at its single
  strongest frequency k (counting k and p - k together), averaged: 1 when each component is one
  cos / sin wave, i.e. the embedding lies on circles of a few key frequencies.
* :func:`classify_algorithm` - clock / pizza / neither from the first two (rule in its docstring).

Thresholds and sample sizes are arguments. Every function takes a Trajectory, a Run or a live
model (one row) and works for any modular model whose inputs are ``[a, b]`` tokens through
``hook_embed`` (the transformer in either input format, the MLPs).
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn

from ..store import Run, Trajectory
from ..tasks import encode_pairs
from ._batch import grid_inputs
from ._common import as_trajectory

__all__ = [
    "ALGORITHMS",
    "algorithm_signatures",
    "circularity",
    "classify_algorithm",
    "distance_irrelevance",
    "gradient_symmetricity",
]

ALGORITHMS = ("clock", "pizza", "neither")
"""What :func:`classify_algorithm` returns."""

SYMMETRY_THRESHOLD = 0.98
"""Gradient symmetricity at or above which the gradients count as symmetric (pizza)."""
DISTANCE_THRESHOLD = 0.5
"""Distance irrelevance at or above which the correct logit counts as distance-free (clock)."""
MIN_ACCURACY = 0.99
"""Accuracy on all p^2 pairs below which a network has learned neither algorithm."""


def _modular(traj: Trajectory) -> int:
    task = traj.config.task
    # a model trained on unordered pairs (PAIR's MLPs) is still a function of every (a, b): the
    # signatures read it on the full p x p grid
    if task.kind != "modular" or task.op != "add":
        raise ValueError("clock/pizza probes: need a modular addition task")
    return task.p


def _operand_positions(traj: Trajectory) -> tuple[int, int]:
    """Positions of a and b in the model's input (``hook_embed``'s second axis)."""
    fmt = traj.config.task.format
    return (1, 3) if fmt == "sequence" else (0, 1)


@torch.no_grad()
def _correct_logits(traj: Trajectory) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Q [n, p, p], accuracy [n])``: the logit of (a + b) mod p at every (a, b), float64."""
    p = _modular(traj)
    x = grid_inputs(traj.config)
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    y = ((a + b) % p).flatten()
    qs, accs = [], []
    for i in range(len(traj)):
        logits = traj.model(i).double()(x)  # [p^2, p]
        qs.append(logits.gather(1, y[:, None]).view(p, p))
        accs.append((logits.argmax(-1) == y).double().mean())
    return torch.stack(qs), torch.stack(accs)


def _distance_irrelevance_of(q: torch.Tensor) -> torch.Tensor:
    """From correct logits ``q [n, a, b]``: mean_d std_s Q[s, d] / std Q (ddof 0)."""
    n, p, _ = q.shape
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    table = torch.empty_like(q)
    # (a, b) -> (s, d) is a bijection for odd p; for even p a table cell is written twice and
    # some stay unset, so the layout is defined only for odd p (their p = 59)
    table[:, (a + b) % p, (a - b) % p] = q
    within = table.std(dim=1, unbiased=False).mean(dim=1)  # std over sums s, mean over distances d
    return within / q.reshape(n, -1).std(dim=1, unbiased=False)


def distance_irrelevance(obj: Trajectory | Run | nn.Module) -> torch.Tensor:
    """Per checkpoint ``[n]``: how little the correct logit depends on the distance a - b
    (module docstring; Zhong et al.'s ``distance_irrelevancy``). Needs an odd p."""
    traj = as_trajectory(obj)
    if _modular(traj) % 2 == 0:
        raise ValueError("distance_irrelevance: needs an odd p ((a + b, a - b) must index every pair once)")
    q, _ = _correct_logits(traj)
    return _distance_irrelevance_of(q)


def _fresh_leaf(emb: torch.Tensor, hook: object, leaves: list[torch.Tensor]) -> torch.Tensor:
    """A hook: ``emb`` replaced by a new leaf tensor (kept in ``leaves``) to take gradients at."""
    fresh = emb.detach().clone().requires_grad_(True)
    leaves.append(fresh)
    return fresh


def gradient_symmetricity(obj: Trajectory | Run | nn.Module, n_samples: int = 100, seed: int = 0) -> torch.Tensor:
    """Per checkpoint ``[n]``: the mean cosine similarity of d logit_c / d E_a and d logit_c / d E_b
    over ``n_samples`` triples (a, b, c) drawn uniformly with a generator seeded by ``seed`` (the
    same triples at every checkpoint). The gradients are taken at the model's ``hook_embed``
    (the token embeddings before positional embeddings are added), in float64, on a copy of the
    weights; the hook lives only during the call."""
    if n_samples < 1:
        raise ValueError(f"gradient_symmetricity: n_samples must be >= 1, got {n_samples}")
    traj = as_trajectory(obj)
    p = _modular(traj)
    g = torch.Generator().manual_seed(seed)
    abc = torch.randint(0, p, (n_samples, 3), generator=g)
    x = encode_pairs(abc[:, 0], abc[:, 1], traj.config.task)
    pos_a, pos_b = _operand_positions(traj)
    out = []
    for i in range(len(traj)):
        model = traj.model(i).double()
        leaves: list[torch.Tensor] = []
        with torch.enable_grad(), model.hooks(fwd_hooks=[("hook_embed", partial(_fresh_leaf, leaves=leaves))]):
            logits = model(x)
            picked = logits.gather(1, abc[:, 2:3]).sum()  # each logit depends on its own row only
            (grad,) = torch.autograd.grad(picked, leaves[0])
        ga, gb = grad[:, pos_a], grad[:, pos_b]  # [n_samples, d]
        cos = (ga * gb).sum(-1) / (ga.norm(dim=-1) * gb.norm(dim=-1)).clamp_min(1e-300)
        out.append(cos.mean())
    return torch.stack(out).detach()


def circularity(obj: Trajectory | Run | nn.Module, n_components: int = 4) -> torch.Tensor:
    """Per checkpoint ``[n]``: the mean, over the top ``n_components`` principal components of
    the token embedding ``W_E[:p]`` (centred over tokens), of the fraction of the component's
    power at its strongest frequency (k and p - k together). 1: every component is one wave."""
    traj = as_trajectory(obj)
    p = _modular(traj)
    if n_components < 1:
        raise ValueError(f"circularity: n_components must be >= 1, got {n_components}")
    if "embed.W_E" in traj.params:
        W_E = traj.params["embed.W_E"][:, :p].double()  # [n, p, d]
    else:  # the fixed (cos, sin) embedding of cossin_mlp
        W_E = torch.stack([traj.model(i).W_E.double()[:p] for i in range(len(traj))])
    X = W_E - W_E.mean(dim=1, keepdim=True)
    U, S, _ = torch.linalg.svd(X, full_matrices=False)  # scores of PC i: U[:, :, i] S[i]
    k = min(n_components, S.shape[-1])
    scores = U[..., :k] * S[:, None, :k]  # [n, p, k]
    power = torch.fft.fft(scores, dim=1).abs() ** 2  # [n, p(freq), k]
    half = power[:, 1 : p // 2 + 1].clone()
    if p % 2 == 0:  # the Nyquist frequency p/2 has no partner
        half[:, :-1] += power[:, p // 2 + 1 :].flip(1)
    else:
        half += power[:, (p + 1) // 2 :].flip(1)
    total = power[:, 1:].sum(dim=1).clamp_min(1e-300)  # frequency 0 is empty after centring
    return (half.max(dim=1).values / total).mean(dim=1)


def classify_algorithm(
    distance_irrelevance: float,
    gradient_symmetricity: float,
    accuracy: float = 1.0,
    *,
    distance_threshold: float = DISTANCE_THRESHOLD,
    symmetry_threshold: float = SYMMETRY_THRESHOLD,
    min_accuracy: float = MIN_ACCURACY,
) -> str:
    """``clock``, ``pizza`` or ``neither``.

    The rule (thresholds from the spread of Zhong et al.'s published runs, ``result/*.csv``):
    a network below ``min_accuracy`` on all p^2 pairs is ``neither``; ``clock`` when its correct
    logit ignores the distance (distance irrelevance >= ``distance_threshold``) and its gradients
    are not symmetric (symmetricity < ``symmetry_threshold``); ``pizza`` when the logit depends on
    the distance (< ``distance_threshold``) and the gradients are symmetric (>=
    ``symmetry_threshold``); ``neither`` for the mixed cases (non-circular or mixed algorithms).
    """
    if not accuracy >= min_accuracy:
        return "neither"
    distance_free = distance_irrelevance >= distance_threshold
    symmetric = gradient_symmetricity >= symmetry_threshold
    if distance_free and not symmetric:
        return "clock"
    if not distance_free and symmetric:
        return "pizza"
    return "neither"


def algorithm_signatures(
    obj: Trajectory | Run | nn.Module,
    *,
    n_samples: int = 100,
    seed: int = 0,
    n_components: int = 4,
    **thresholds: float,
) -> dict[str, object]:
    """All signatures per checkpoint: ``steps``, ``accuracy`` (all p^2 pairs), ``distance_irrelevance``,
    ``gradient_symmetricity``, ``circularity`` (tensors ``[n]``) and ``algorithm`` (a list of
    :func:`classify_algorithm` labels; ``thresholds`` are its keyword arguments)."""
    traj = as_trajectory(obj)
    q, acc = _correct_logits(traj)
    dist = _distance_irrelevance_of(q) if traj.config.task.p % 2 else torch.full_like(acc, math.nan)
    sym = gradient_symmetricity(traj, n_samples=n_samples, seed=seed)
    circ = circularity(traj, n_components=n_components)
    labels = [classify_algorithm(float(d), float(s), float(a), **thresholds) for d, s, a in zip(dist, sym, acc)]
    return {
        "steps": traj.steps.clone(),
        "accuracy": acc,
        "distance_irrelevance": dist,
        "gradient_symmetricity": sym,
        "circularity": circ,
        "algorithm": labels,
    }

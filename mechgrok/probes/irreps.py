"""Representation-theory probes for group tasks: the group Fourier transform of a network.

The Fourier probes' quantities (:mod:`mechgrok.probes.fourier`), with the frequencies of Z_p
replaced by the real irreps of the task's group (:mod:`mechgrok.groups`), everything in float64.
Per-irrep arrays have one column per non-trivial irrep, in :meth:`FiniteGroup.irreps` order
(column r - 1 for irrep r; the trivial irrep plays the constant's part). On C_p these columns are
the frequencies 1 .. p // 2 and every quantity equals its Fourier counterpart (a test); a modular
addition run is analysed as C_p.

* **embedding spectrum** - per-irrep norm of the element embeddings projected on the irrep basis
  (:meth:`FiniteGroup.basis`) along the element axis; the group MLP reads a and b through
  separate rows (token b = p + b), so both embeddings, side by side, are the function of g;
* **neuron spectrum** - per hidden neuron, the fraction of the variance of its activation table
  over all (a, b) in the (rho, trivial), (trivial, rho) and (rho, rho) blocks of the 2D group
  Fourier transform (the Fourier probe's (k, const), (const, k), (k, k));
* **logit spectrum** - every output logit c's table over the task's inputs projected (least
  squares) onto the functions of the answer z = a * b in irrep rho's isotypic space, the span of
  its matrix coefficients rho_ij(z) (Chughtai et al.'s tr(rho(a) rho(b) rho(c)^-1) lives there);
* **key irreps** - the key-frequency cut (:func:`~mechgrok.probes.fourier.key_frequency_mask`)
  of the logit spectrum against the logit table's variance: no count fixed in advance. For C_n
  the cut looks for the gap among the top half (as the Fourier probe does: Z_p has ~p/2
  frequencies and a handful are key); a non-abelian group has few irreps (S_5: 6 non-trivial)
  and a network may use most of them (an S_4 MLP keeps (3,1), (2,2) and the sign, dropping
  (2,1,1)), so there the gap may fall anywhere (``max_frac`` 1) - but energies below
  ``NEGLIGIBLE`` of the logit variance count as that floor in the gap search, so the ratio of two
  negligible irreps (1e-3 against 1e-6 of the variance) is never the cut;
* **restricted / excluded loss** - as Nanda et al.'s, with the key irreps' isotypic spaces in
  place of the key frequencies' (cos, sin) pairs.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from ..config import RunConfig, TaskConfig
from ..groups import FiniteGroup, finite_group
from ..store import Run, Trajectory
from ..tasks import Dataset, modular_table
from ._batch import DEFAULT_BUDGET, grid_forward, grid_row_cost, row_chunks
from ._common import as_trajectory
from ._modular import _logsumexp_argmax, sum_sq_weights
from ._spectral import gini, key_frequency_mask
from .progress import PROGRESS_KEYS

__all__ = [
    "irrep_names",
    "irrep_progress_measures",
    "irrep_sweep",
    "irreps_over_training",
    "key_irreps",
    "planted_group_mlp",
    "task_group",
]

PARTS = ("spectra", "logits", "progress")

NEGLIGIBLE = 1e-3
"""Non-abelian groups: the floor (share of the logit variance) of the energies the key-irrep
cut compares (module docstring)."""


def task_group(config: RunConfig | TaskConfig) -> FiniteGroup:
    """The group whose table a task is: its ``group``, or C_p for (a + b) mod p."""
    task = config.task if isinstance(config, RunConfig) else config
    if task.kind == "group":
        return finite_group(task.group)
    if task.kind == "modular" and task.op == "add":
        return finite_group(f"c{task.p}")
    raise ValueError(
        f"irrep probes: need a group task or (a + b) mod p, got task {task.kind!r}"
        + (f" op {task.op!r}" if task.kind == "modular" else "")
    )


def irrep_names(group: FiniteGroup) -> list[str]:
    """Names of the per-irrep columns (every irrep but the trivial one)."""
    return [r.name for r in group.irreps()[1:]]


@functools.lru_cache(maxsize=8)
def _blocks(spec: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
    U, owner = finite_group(spec).basis()
    n_irreps = int(owner.max()) + 1
    return U, [torch.nonzero(owner == r, as_tuple=False)[:, 0] for r in range(n_irreps)]


class _AnswerSpace:
    """Least-squares projections of logit tables onto functions of the answer z (per irrep)."""

    def __init__(self, y: torch.Tensor, group: FiniteGroup):
        self.order = group.order
        self.U, self.cols = _blocks(group.spec)
        self.y = y
        self.counts = torch.bincount(y, minlength=self.order).double()
        self.G = self.U.T @ (self.counts[:, None] * self.U)  # Gram matrix over the inputs
        self.n_inputs = int(y.shape[0])
        self.ginv = [torch.linalg.pinv(self.G[c][:, c]) for c in self.cols]
        self._pinv: dict[tuple, torch.Tensor] = {}

    def inner(self, logits: torch.Tensor) -> torch.Tensor:
        n, _, o = logits.shape
        by_answer = torch.zeros(n, self.order, o, dtype=torch.float64).index_add_(1, self.y, logits.double())
        return torch.einsum("sj,nso->njo", self.U, by_answer)

    def energy(self, R: torch.Tensor) -> torch.Tensor:
        """``[n, irreps - 1]``: squared norm of the projection on each non-trivial irrep's space."""
        out = [
            torch.einsum("nio,ij,njo->n", R[:, c], gi, R[:, c]).clamp_min(0)
            for c, gi in zip(self.cols[1:], self.ginv[1:])
        ]
        return torch.stack(out, -1) if out else torch.zeros(R.shape[0], 0, dtype=torch.float64)

    def projection(self, R: torch.Tensor, irreps: Sequence[int], constant: bool) -> torch.Tensor:
        """Per-answer logits ``[n, order, out]`` of the joint projection (irreps by index)."""
        cols = ([self.cols[0]] if constant else []) + [self.cols[r] for r in irreps]
        if not cols:
            return torch.zeros(R.shape[0], self.order, R.shape[2], dtype=torch.float64)
        c = torch.cat(cols)
        key = tuple(c.tolist())
        if key not in self._pinv:
            self._pinv[key] = torch.linalg.pinv(self.G[c][:, c])
        coef = torch.einsum("ij,njo->nio", self._pinv[key], R[:, c])
        return torch.einsum("sj,njo->nso", self.U[:, c], coef)


def _embedding(traj: Trajectory) -> torch.Tensor:
    """Element embeddings ``[n, order, d]`` (the group MLP: left and right rows side by side)."""
    p = traj.config.task.p
    W_E = traj.params["embed.W_E"]
    if traj.config.task.format == "pairs" and W_E.shape[1] == 2 * p:
        return torch.cat([W_E[:, :p], W_E[:, p : 2 * p]], -1)
    return W_E[:, :p]


def _irrep_norms(x: torch.Tensor, spec: str) -> torch.Tensor:
    """``x [n, order, d]`` -> per non-trivial irrep norms ``[n, irreps - 1]``."""
    U, cols = _blocks(spec)
    coef = torch.einsum("gj,ngd->njd", U, x.double()).pow(2).sum(-1)  # [n, j]
    return torch.stack([coef[:, c].sum(-1) for c in cols[1:]], -1).sqrt()


def _neuron_fracs(post: torch.Tensor, spec: str) -> torch.Tensor:
    """``post [c, a, b, m]`` -> fraction of each neuron's variance per non-trivial irrep ``[c, m, R - 1]``."""
    U, cols = _blocks(spec)
    C = torch.einsum("ai,nabm,bj->nmij", U, post.double(), U)  # 2D group Fourier coefficients
    E = C.pow(2)
    const = cols[0]
    var = E.sum((-1, -2)) - E[..., const][..., const, :].sum((-1, -2))
    parts = []
    for c in cols[1:]:
        part = (
            E[..., c, :][..., const].sum((-1, -2))
            + E[..., const, :][..., c].sum((-1, -2))
            + E[..., c, :][..., c].sum((-1, -2))
        )
        parts.append(part)
    part = torch.stack(parts, -1)
    return torch.where(var[..., None] > 0, part / var[..., None].clamp_min(1e-300), torch.zeros_like(part))


def key_irrep_mask(
    energy: torch.Tensor,
    variance: torch.Tensor,
    spec: str,
    *,
    min_gap: float = 4.0,
    min_explained: float = 0.5,
    max_frac: float | None = None,
) -> torch.Tensor:
    """The key-irrep cut of per-irrep logit energies ``[n, irreps - 1]`` against the logit
    variance ``[n]`` (module docstring): for C_n the Fourier probe's cut exactly; otherwise the
    gap may fall anywhere, among energies floored at ``NEGLIGIBLE`` of the variance."""
    if max_frac is None:
        max_frac = 0.5 if spec[0] == "c" else 1.0
    cut = energy if spec[0] == "c" else torch.maximum(energy, NEGLIGIBLE * variance[:, None])
    return key_frequency_mask(cut, total=variance, min_gap=min_gap, min_explained=min_explained, max_frac=max_frac)


def irrep_sweep(
    traj: Trajectory,
    data: Dataset | None,
    parts: Iterable[str] = PARTS,
    *,
    key_irreps: Sequence[int] | None = None,
    min_gap: float = 4.0,
    min_explained: float = 0.5,
    max_frac: float | None = None,
    budget: int = DEFAULT_BUDGET,
) -> dict[str, torch.Tensor]:
    """Every irrep probe for every checkpoint (module docstring). Keys: ``embed_irrep_norms``,
    ``sparsity``, ``neuron_dominant_irrep`` (1-based column + 1, 0 = no variance),
    ``neuron_frac_explained`` (``spectra``); ``logit_irrep_norms``, ``logit_irrep_frac``,
    ``key_irrep_mask``, ``sparsity_logits`` (``logits``); ``restricted_loss``, ``excluded_loss``,
    ``train_loss``, ``test_loss``, ``train_acc``, ``test_acc``, ``sum_sq_weights``,
    ``key_irreps`` (``progress``, which needs ``data``). Irreps are numbered as columns + 1 (1 =
    the first non-trivial irrep), like frequencies. ``max_frac``: how far down the sorted
    spectrum the cut may fall (default 0.5 for cyclic groups, 1 otherwise; module docstring)."""
    parts = set(parts)
    if parts - set(PARTS):
        raise ValueError(f"irrep_sweep: unknown parts {sorted(parts - set(PARTS))}")
    config = traj.config
    group = task_group(config)
    spec, p, n = group.spec, config.task.p, len(traj)
    n_cols = len(group.irreps()) - 1
    if max_frac is None:
        max_frac = 0.5 if spec[0] == "c" else 1.0
    out: dict[str, torch.Tensor] = {}
    if "spectra" in parts:
        out["embed_irrep_norms"] = _irrep_norms(_embedding(traj), spec)
        out["sparsity"] = gini(out["embed_irrep_norms"])
    if "progress" in parts:
        if data is None:
            raise ValueError("irrep progress measures: need the run's dataset (train / test split)")
        if key_irreps is None:
            last = irrep_sweep(
                traj.subset([n - 1]), None, ("logits",), min_gap=min_gap, min_explained=min_explained, max_frac=max_frac
            )
            key_irreps = [int(k) + 1 for k in torch.nonzero(last["key_irrep_mask"][0], as_tuple=False)[:, 0]]
        key_irreps = sorted({int(k) for k in key_irreps})
        if any(not 1 <= k <= n_cols for k in key_irreps):
            raise ValueError(f"key_irreps: irreps must be in [1, {n_cols}], got {key_irreps}")
        out["sum_sq_weights"] = sum_sq_weights(traj)
    need_logits = "logits" in parts or "progress" in parts
    if not (need_logits or "spectra" in parts):
        return out
    a_t, b_t, y_t = modular_table(config.task)
    space = _AnswerSpace(y_t, group) if need_logits else None
    wanted = [a_t * p + b_t]
    if "progress" in parts:
        wanted += [data.train_ab[:, 0] * p + data.train_ab[:, 1], data.test_ab[:, 0] * p + data.test_ab[:, 1]]
    logit_rows, inverse = torch.unique(torch.cat(wanted), return_inverse=True)
    pos_S, pos_train, pos_test = (list(inverse.split([len(w) for w in wanted])) + [None, None])[:3]
    buffers: dict[str, list[torch.Tensor]] = {}
    for rows in row_chunks(n, grid_row_cost(config), budget):
        fw = grid_forward(traj, rows, need_logits=need_logits, logit_rows=logit_rows)
        if "spectra" in parts and "post" in fw:
            frac = _neuron_fracs(fw["post"], spec)
            best, arg = frac.max(-1) if n_cols else (frac.sum(-1), torch.zeros(frac.shape[:-1], dtype=torch.int64))
            buffers.setdefault("neuron_frac_explained", []).append(best)
            buffers.setdefault("neuron_dominant_irrep", []).append(
                torch.where(best > 0, arg + 1, torch.zeros_like(arg))
            )
        if need_logits:
            L = fw["logits"][..., :p].double()
            L_S = L[:, pos_S]
            R = space.inner(L_S)
            buffers.setdefault("_energy", []).append(space.energy(R))
            buffers.setdefault("_variance", []).append((L_S - L_S.mean(1, keepdim=True)).pow(2).sum((1, 2)))
            if "progress" in parts:
                restricted = space.projection(R, key_irreps, constant=True)
                per_answer = -restricted.log_softmax(-1).diagonal(dim1=1, dim2=2)
                buffers.setdefault("restricted_loss", []).append(per_answer @ space.counts / space.n_inputs)
                key_part = space.projection(R, key_irreps, constant=False)
                ex_logits = L[:, pos_train] - key_part[:, data.train_y]
                ex_right = L[:, pos_train, data.train_y] - key_part[:, data.train_y, data.train_y]
                buffers.setdefault("excluded_loss", []).append((torch.logsumexp(ex_logits, -1) - ex_right).mean(-1))
                lse, pred = _logsumexp_argmax(L)
                for split, pos, y in (("train", pos_train, data.train_y), ("test", pos_test, data.test_y)):
                    buffers.setdefault(f"{split}_loss", []).append((lse[:, pos] - L[:, pos, y]).mean(-1))
                    buffers.setdefault(f"{split}_acc", []).append((pred[:, pos] == y).double().mean(-1))
    for key, values in buffers.items():
        out[key] = torch.cat(values)
    if need_logits:
        energy, variance = out.pop("_energy"), out.pop("_variance")
        out["logit_irrep_norms"] = (energy / space.n_inputs).sqrt()
        out["logit_irrep_frac"] = energy / variance.clamp_min(1e-300)[:, None]
        out["key_irrep_mask"] = key_irrep_mask(
            energy, variance, spec, min_gap=min_gap, min_explained=min_explained, max_frac=max_frac
        )
        out["sparsity_logits"] = gini(out["logit_irrep_norms"])
    if "progress" in parts:
        out["key_irreps"] = torch.tensor(key_irreps, dtype=torch.int64)
    return out


def irreps_over_training(
    traj: Trajectory | Run | nn.Module,
    *,
    task: TaskConfig | None = None,
    min_gap: float = 4.0,
    min_explained: float = 0.5,
    budget: int = DEFAULT_BUDGET,
) -> dict[str, torch.Tensor]:
    """Irrep spectra of every checkpoint (embedding, neurons, logits, key-irrep mask, sparsity)."""
    traj = as_trajectory(traj, task)
    return irrep_sweep(traj, None, ("spectra", "logits"), min_gap=min_gap, min_explained=min_explained, budget=budget)


def key_irreps(
    source: Trajectory | Run | nn.Module,
    task: TaskConfig | None = None,
    *,
    row: int = -1,
    min_gap: float = 4.0,
    min_explained: float = 0.5,
) -> list[str]:
    """Names of the key irreps of checkpoint ``row`` (default the last): the cut of its logit
    spectrum, no count fixed in advance."""
    traj = as_trajectory(source, task)
    res = irrep_sweep(traj.subset([row % len(traj)]), None, ("logits",), min_gap=min_gap, min_explained=min_explained)
    names = irrep_names(task_group(traj.config))
    return [names[int(k)] for k in torch.nonzero(res["key_irrep_mask"][0], as_tuple=False)[:, 0]]


def irrep_progress_measures(
    traj: Trajectory | Run | nn.Module,
    data: Dataset,
    *,
    key_irreps: Sequence[int] | None = None,
    budget: int = DEFAULT_BUDGET,
) -> dict[str, torch.Tensor]:
    """Restricted / excluded loss (and the checkpoint's own losses) with respect to the key irreps
    (column numbers + 1, default those of the last checkpoint), every checkpoint."""
    traj = as_trajectory(traj, data.task)
    res = irrep_sweep(traj, data, ("progress",), key_irreps=key_irreps, budget=budget)
    return {k: res[k] for k in (*PROGRESS_KEYS, "key_irreps")}


def planted_group_mlp(spec: str, irreps: Sequence[str], scale: float = 1.0):
    """A group MLP (task ``group=spec``, pairs) whose logits are built from the named irreps only.

    A lookup construction, exact in any dtype: one hidden neuron per input (a, b) fires 1 =
    ReLU([a] + [b] - 1) (the bias is -1), and reads out ``scale * sum_rho d_rho tr(rho(a b)
    rho(c)^T)`` to output c, a function of the answer z = a * b in the named irreps' isotypic
    spaces; so those irreps, and no others, carry the logit table. The argmax is a * b when the
    named irreps together are faithful (e.g. S_4's ``(3,1)``). Returns the live model.
    """
    from ..config import ModelConfig
    from ..models import build_model

    group = finite_group(spec)
    by_name = {r.name: r for r in group.irreps()}
    bad = [name for name in irreps if name not in by_name or name == "trivial"]
    if bad or not irreps:
        raise ValueError(
            f"irreps: need non-trivial irreps of {group.name} ({', '.join(list(by_name)[1:])}), got {list(irreps)}"
        )
    G = group.order
    task = TaskConfig(kind="group", group=spec, format="pairs")
    model = build_model(ModelConfig(kind="mlp", d_model=2 * G, d_mlp=G * G, tied_embed=False, bias=True), task)
    f = torch.zeros(G, G, dtype=torch.float64)  # f[z, c]
    for name in irreps:
        M = by_name[name].matrices
        f += by_name[name].dim * torch.einsum("zij,cij->zc", M, M)
    a, b = torch.meshgrid(torch.arange(G), torch.arange(G), indexing="ij")
    a, b = a.flatten(), b.flatten()
    W_in = torch.zeros(2 * G, G * G, dtype=torch.float64)
    W_in[a, torch.arange(G * G)] = 1.0
    W_in[G + b, torch.arange(G * G)] = 1.0
    W_out = torch.zeros(G * G, 2 * G, dtype=torch.float64)
    W_out[:, :G] = scale * f[group.table[a, b]]
    W_U = torch.zeros(2 * G, G, dtype=torch.float64)
    W_U[:G] = torch.eye(G, dtype=torch.float64)
    state = dict(model.state_dict())
    state.update(
        {
            "embed.W_E": torch.eye(2 * G, dtype=torch.float64),
            "blocks.0.mlp.W_in": W_in,
            "blocks.0.mlp.b_in": -torch.ones(G * G, dtype=torch.float64),
            "blocks.0.mlp.W_out": W_out,
            "blocks.0.mlp.b_out": torch.zeros(2 * G, dtype=torch.float64),
            "unembed.W_U": W_U,
        }
    )
    model.load_state_dict(state)  # copied into the model's own (float32) parameters
    return model.eval()

"""One pass over a modular run's checkpoints computing every grid-based probe (private).

The Fourier, progress-measure and neuron-circle probes all need the same forward pass over the
p x p operand grid; :func:`modular_sweep` runs it once per chunk of checkpoints and reduces each
chunk to small per-checkpoint tensors before moving on, so memory stays bounded and 1,000
checkpoints of a small model take seconds. The public functions in :mod:`.fourier`,
:mod:`.progress` and :mod:`.circles` are thin wrappers choosing ``parts``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterable, Sequence

import torch

from ..models import cossin_embedding
from ..store import Trajectory
from ..tasks import Dataset, modular_table
from ._batch import DEFAULT_BUDGET, grid_forward, grid_row_cost, row_chunks
from ._spectral import fourier_basis, frequency_norms, frequency_of_row, gini, key_frequency_mask

PARTS = ("fourier", "logits", "progress", "circles")


class _LabelSpace:
    """Projections of logit tables onto functions of the correct answer y (Nanda et al.).

    For each output c, the logits over the task's inputs are projected onto span{cos(w y), sin(w y)}
    (w = 2 pi k / p). Such a function depends on the input only through y, so sums over inputs
    collapse to sums over the p answers weighted by how many inputs have that answer; the
    projection is an exact least-squares one (a Gram matrix), which also covers tables where the
    answers are not uniformly distributed (unordered pairs, division).
    """

    def __init__(self, y: torch.Tensor, p: int):
        self.p = p
        self._pinv: dict[tuple, torch.Tensor] = {}
        self.y = y
        basis, _ = fourier_basis(p)
        self.U = basis.T.contiguous()  # [answer s, column j]: column j = basis row j as a function of y
        self.col_freq = frequency_of_row(p)
        counts = torch.bincount(y, minlength=p).double()
        self.counts = counts
        self.G = self.U.T @ (counts[:, None] * self.U)  # [j, j] Gram matrix over the inputs
        self.n_inputs = int(y.shape[0])
        self.freq_cols = [torch.nonzero(self.col_freq == k, as_tuple=False)[:, 0] for k in range(1, p // 2 + 1)]
        # per-frequency (cos, sin) column pairs and the inverse of their 2x2 Gram blocks, padded
        # for the Nyquist frequency (a cos column only) so all frequencies batch together
        K = p // 2
        self.pair_cols = torch.zeros(K, 2, dtype=torch.int64)
        self.pair_ginv = torch.zeros(K, 2, 2, dtype=torch.float64)
        for i, c in enumerate(self.freq_cols):
            self.pair_cols[i, : len(c)] = c
            self.pair_ginv[i, : len(c), : len(c)] = torch.linalg.pinv(self.G[c][:, c])

    def inner(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits [n, inputs, out]`` (rows in ``y`` order) -> ``R [n, j, out]`` = U^T (sum by answer)."""
        n, _, o = logits.shape
        by_answer = torch.zeros(n, self.p, o, dtype=torch.float64).index_add_(1, self.y, logits.double())
        return torch.einsum("sj,nso->njo", self.U, by_answer)

    def freq_energy(self, R: torch.Tensor) -> torch.Tensor:
        """Squared norm ``[n, K]`` of the projection onto each frequency's 2D span (all outputs)."""
        Rk = R[:, self.pair_cols]  # [n, K, 2, out] (padding rows meet zero Gram entries)
        GR = torch.einsum("kij,nkjo->nkio", self.pair_ginv, Rk)
        return (Rk * GR).sum((-1, -2)).clamp_min(0)

    def projection(self, R: torch.Tensor, freqs: Sequence[int], constant: bool) -> torch.Tensor:
        """Per-answer logits ``[n, p, out]`` of the joint projection onto the given frequencies'
        directions (and the constant); the projected logits of an input are row y of it."""
        cols = [self.freq_cols[k - 1] for k in freqs]
        if constant:
            cols = [torch.tensor([0])] + cols
        if not cols:
            return torch.zeros(R.shape[0], self.p, R.shape[2], dtype=torch.float64)
        c = torch.cat(cols)
        key = (tuple(c.tolist()), constant)
        if key not in self._pinv:  # the same frequencies for every chunk of checkpoints
            self._pinv[key] = torch.linalg.pinv(self.G[c][:, c])
        coef = torch.einsum("ij,njo->nio", self._pinv[key], R[:, c])
        return torch.einsum("sj,njo->nso", self.U[:, c], coef)


def embed_matrix(traj: Trajectory) -> torch.Tensor:
    """The number tokens' embedding ``[n, p, d]`` (the cos/sin model: ``W_E @ W_in``)."""
    config = traj.config
    p = config.task.p
    if config.model.kind == "cossin_mlp":
        W_in = traj.params["blocks.0.mlp.W_in"]
        W_E = cossin_embedding(p, config.model.frequency, config.model.embed_norm, torch.float64).to(W_in)
        return torch.einsum("ad,ndm->nam", W_E, W_in)
    return traj.params["embed.W_E"][:, :p]


def circle_coefficients(pre: torch.Tensor) -> torch.Tensor:
    """Amplitudes of the operand-a wave of each neuron's pre-activation.

    ``pre [n, p, p, m]`` -> ``[n, K, m, 2]``: for frequency k the (c, s) with
    mean_b pre[a, b] = const + c cos(w a) + s sin(w a) + other frequencies (w = 2 pi k / p), i.e.
    the neuron's input wave r cos(w a - phi) with r = |(c, s)|, phi = atan2(s, c).
    """
    g = pre.double().mean(dim=2)  # [n, a, m]
    p = g.shape[1]
    K, n_sin = p // 2, (p - 1) // 2  # an even p's Nyquist frequency K has a cos row only
    basis, _ = fourier_basis(p)  # rows: const, cos 1, sin 1, ..., [cos K]; unit norm
    proj = torch.einsum("ra,nam->nrm", basis, g)  # [n, row, m]
    # a unit row is cos(w a) / ||cos(w .)||, and the wave's amplitude is g . cos / ||cos||^2:
    # the projection times 1 / ||cos|| = sqrt(2 / p) (1 / sqrt(p) for the Nyquist row)
    scale = torch.full((K, 1), math.sqrt(2 / p), dtype=torch.float64)
    if p % 2 == 0:
        scale[-1] = 1 / math.sqrt(p)
    cos_c = proj[:, 1 : 2 * K : 2] * scale  # [n, K, m]
    sin_c = torch.zeros_like(cos_c)
    sin_c[:, :n_sin] = proj[:, 2 : 2 * n_sin + 1 : 2] * scale[:n_sin]
    return torch.stack([cos_c, sin_c], dim=-1)


@functools.lru_cache(maxsize=8)
def _grid_basis(p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For :func:`_neuron_frac_explained`: the real Fourier basis ``[p, p]`` and the basis row ->
    frequency fold ``[p, K]`` (the constant row maps nowhere)."""
    basis, _ = fourier_basis(p)
    freq = frequency_of_row(p)
    fold = torch.zeros(p, p // 2, dtype=torch.float64)
    nonconst = torch.nonzero(freq > 0, as_tuple=False)[:, 0]
    fold[nonconst, freq[nonconst] - 1] = 1.0
    return basis, fold


def _neuron_frac_explained(acts: torch.Tensor) -> torch.Tensor:
    """``frac_explained_by_frequency(neuron_frequency_energy(acts))`` for grid activations
    ``[..., p, p, m]`` -> ``[..., m, K]`` (float64), computing only the energies it reads.

    The fraction needs, per neuron, the energies of the (k, const), (const, k) and (k, k)
    components and the variance, not all (K + 1)^2 energies: one float64 matmul with the real
    Fourier basis along a (the only O(p^3 m) step), then small contractions along b for the
    const row and each frequency's own (cos, sin) rows. The variance is a sum of squares of
    non-constant coefficients (no total-minus-mean cancellation). About 5x faster than the 2D
    FFT for p = 67 (a prime length), on one thread.
    """
    *lead, p, p_b, m = acts.shape
    basis, fold = _grid_basis(p)
    x = acts.double().reshape(-1, p, p_b * m)  # [c, a, (b m)]
    c = x.shape[0]
    Y = torch.matmul(basis, x).view(c, p, p_b, m)  # [c, i, b, m]: coefficient i along a
    Z0 = torch.einsum("jb,cbm->cjm", basis, Y[:, 0])  # coefficients (const, j)
    e_0k = torch.einsum("cjm,jk->cmk", Z0.pow(2), fold)
    e_k0 = torch.einsum("cim,ik->cmk", Y.sum(2).pow(2) / p, fold)  # the const row along b is 1/sqrt(p)
    # (k, k): basis rows 2k - 1, 2k are cos k, sin k, so a view pairs them; a broadcast matmul
    # reads the [b, m] blocks in place. An even p's Nyquist row (cos only) is the last one.
    n_pair = (p - 1) // 2
    Y_pairs = Y[:, 1 : 1 + 2 * n_pair].view(c, n_pair, 2, p_b, m)
    B_pairs = basis[1 : 1 + 2 * n_pair].view(1, n_pair, 1, 2, p_b)
    e_kk = torch.matmul(B_pairs, Y_pairs).pow(2).sum((2, 3)).transpose(1, 2)  # [c, m, pairs]
    if p % 2 == 0:
        nyquist = torch.einsum("b,cbm->cm", basis[-1], Y[:, -1])
        e_kk = torch.cat([e_kk, nyquist.pow(2)[..., None]], -1)
    var = Y[:, 1:].pow_(2).sum((1, 2)) + Z0[:, 1:].pow(2).sum(1)  # [c, m]; Y is spent
    part = e_0k + e_k0 + e_kk
    frac = torch.where(var[..., None] > 0, part / var[..., None].clamp_min(1e-300), torch.zeros_like(part))
    return frac.reshape(*lead, m, p // 2)


def _logsumexp_argmax(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``logsumexp`` and ``argmax`` (the first maximum, as ``argmax``) over the last axis of
    float64 ``logits``, sharing one pass for the maximum: ``-log_softmax(z)[y] = lse(z) - z[y]``."""
    top, pred = logits.max(-1)
    return top + (logits - top[..., None]).exp_().sum(-1).log_(), pred


def sum_sq_weights(traj: Trajectory) -> torch.Tensor:
    """Total squared norm ``[n]`` of every trained parameter, per checkpoint (float64)."""
    total = torch.zeros(len(traj), dtype=torch.float64)
    for v in traj.params.values():
        x = v.double().reshape(v.shape[0], -1)
        total += torch.bmm(x[:, None, :], x[:, :, None]).view(-1)  # row dot products: no squared copy
    return total


def modular_sweep(
    traj: Trajectory,
    data: Dataset | None,
    parts: Iterable[str] = PARTS,
    *,
    key_freqs: Sequence[int] | None = None,
    min_gap: float = 4.0,
    min_explained: float = 0.5,
    budget: int = DEFAULT_BUDGET,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """Compute the requested ``parts`` for every checkpoint (see the public wrappers for keys).

    ``progress`` needs ``data`` (train / test split) and ``key_freqs`` (default: the key
    frequencies of the last checkpoint).
    """
    parts = set(parts)
    bad = parts - set(PARTS)
    if bad:
        raise ValueError(f"modular_sweep: unknown parts {sorted(bad)}")
    config = traj.config
    task = config.task
    if task.kind != "modular":
        raise ValueError(f"Fourier probes: need a modular-arithmetic run, got task {task.kind!r}")
    kind = config.model.kind
    p, n = task.p, len(traj)
    out: dict[str, torch.Tensor] = {}

    if "fourier" in parts:
        out.update(_weight_freq_norms(traj))
    if "progress" in parts:
        if data is None:
            raise ValueError("progress measures: need the run's dataset (train / test split)")
        key_freqs = _checked_key_freqs(traj, key_freqs, min_gap=min_gap, min_explained=min_explained, budget=budget)
        out["sum_sq_weights"] = sum_sq_weights(traj)

    need_neurons = "fourier" in parts or ("circles" in parts and kind != "cossin_mlp")
    need_logits = "logits" in parts or "progress" in parts
    need_pre = "circles" in parts and kind != "cossin_mlp"
    if not (need_neurons or need_logits or need_pre or "circles" in parts):
        return out

    a_t, b_t, y_t = modular_table(task)
    space = _LabelSpace(y_t, p) if need_logits else None
    rows = _logit_rows(a_t * p + b_t, data if "progress" in parts else None, p)
    chunks = list(row_chunks(n, grid_row_cost(config), budget)) if (need_neurons or need_logits or need_pre) else []
    loss_freqs = key_freqs if "progress" in parts else None
    out.update(_sweep_chunks(traj, chunks, space, rows, need_neurons, need_pre, loss_freqs, data, progress))

    if need_logits:
        energy, variance = out.pop("_logit_energy"), out.pop("_logit_variance")
        out.update(_logit_freq_summary(energy, variance, space.n_inputs, min_gap=min_gap, min_explained=min_explained))
    if "progress" in parts:
        out["key_frequencies"] = torch.tensor(key_freqs, dtype=torch.int64)
    coef = out.pop("_circle_coef", None)
    if "circles" in parts:
        out.update(_circle_waves(traj, coef, out.get("neuron_dominant_freq")))
    return out


def _weight_freq_norms(traj: Trajectory) -> dict[str, torch.Tensor]:
    """The weight-only keys of the ``fourier`` part: the embedding's (and, for MLP models, the
    first layer's input) frequency norms and the embedding's sparsity."""
    kind = traj.config.model.kind
    out = {"embed_freq_norms": frequency_norms(embed_matrix(traj), dim=1, batch_dims=1)}
    out["sparsity"] = gini(out["embed_freq_norms"])
    if kind in ("mlp", "cossin_mlp"):
        h = (
            embed_matrix(traj)
            if kind == "cossin_mlp"
            else torch.einsum("nad,ndm->nam", traj.params["embed.W_E"], traj.params["blocks.0.mlp.W_in"])
        )
        out["input_freq_norms"] = frequency_norms(h, dim=1, batch_dims=1)
    return out


def _checked_key_freqs(
    traj: Trajectory, key_freqs: Sequence[int] | None, *, min_gap: float, min_explained: float, budget: int
) -> list[int]:
    """The progress measures' key frequencies, sorted and unique (default: the key frequencies
    of the last checkpoint's logits); raises if one is outside ``[1, p // 2]``."""
    p = traj.config.task.p
    if key_freqs is None:
        last = modular_sweep(
            traj.subset([len(traj) - 1]), None, ("logits",), min_gap=min_gap, min_explained=min_explained, budget=budget
        )
        key_freqs = [int(k) + 1 for k in torch.nonzero(last["key_freq_mask"][0], as_tuple=False)[:, 0]]
    key_freqs = sorted({int(k) for k in key_freqs})
    bad_k = [k for k in key_freqs if not 1 <= k <= p // 2]
    if bad_k:
        raise ValueError(f"key_freqs: frequencies must be in [1, {p // 2}], got {bad_k}")
    return key_freqs


@dataclasses.dataclass(frozen=True)
class _LogitRows:
    """The grid inputs (``a * p + b``) whose logits are computed, and where the probes' inputs sit
    among them: ``pos_S`` the task's table, ``pos_train`` / ``pos_test`` the run's split (or None)."""

    rows: torch.Tensor
    pos_S: torch.Tensor
    pos_train: torch.Tensor | None
    pos_test: torch.Tensor | None
    table_is_all: bool  # the table is every computed row, in order (pos_S is the identity)


def _logit_rows(idx_S: torch.Tensor, data: Dataset | None, p: int) -> _LogitRows:
    """Logits are computed only on the inputs some probe reads: the table ``idx_S`` and, with
    ``data``, the run's split (usually the same set: half the grid for unordered pairs)."""
    wanted = [idx_S]
    if data is not None:
        wanted += [data.train_ab[:, 0] * p + data.train_ab[:, 1], data.test_ab[:, 0] * p + data.test_ab[:, 1]]
    logit_rows, inverse = torch.unique(torch.cat(wanted), return_inverse=True)
    pos_S, pos_train, pos_test = (list(inverse.split([len(w) for w in wanted])) + [None, None])[:3]
    # the table is sorted (row-major) and usually holds the split: then it is every computed row
    table_is_all = bool(torch.equal(pos_S, torch.arange(len(logit_rows))))
    return _LogitRows(logit_rows, pos_S, pos_train, pos_test, table_is_all)


def _sweep_chunks(
    traj: Trajectory,
    chunks: Sequence[slice],
    space: _LabelSpace | None,
    rows: _LogitRows,
    need_neurons: bool,
    need_pre: bool,
    loss_freqs: Sequence[int] | None,
    data: Dataset | None,
    progress: bool,
) -> dict[str, torch.Tensor]:
    """The grid forward pass per chunk of checkpoints, each chunk reduced to per-checkpoint
    tensors before the next (concatenated over chunks). Logit probes run iff ``space`` is given,
    the losses of the progress measures iff ``loss_freqs`` (the key frequencies) is."""
    from tqdm.auto import tqdm

    buffers: dict[str, list[torch.Tensor]] = {}
    for chunk in tqdm(chunks, disable=not progress, desc="grid probes", unit="chunk", leave=False):
        fw = grid_forward(traj, chunk, need_logits=space is not None, logit_rows=rows.rows)
        found: dict[str, torch.Tensor] = {}
        if need_neurons:
            found.update(_chunk_neuron_freqs(fw["post"]))
        if need_pre:
            found["_circle_coef"] = circle_coefficients(fw["pre"])
        if space is not None:
            found.update(_chunk_logit_probes(fw["logits"][..., : space.p], space, rows, loss_freqs, data))
        del fw
        for key, value in found.items():
            buffers.setdefault(key, []).append(value)
    return {key: torch.cat(values) for key, values in buffers.items()}


def _chunk_neuron_freqs(post: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each neuron's best-explaining frequency (0 if none explains anything) and its fraction."""
    frac = _neuron_frac_explained(post)  # [c, m, K]
    best, arg = frac.max(dim=-1)
    return {
        "neuron_frac_explained": best,
        "neuron_dominant_freq": torch.where(best > 0, arg + 1, torch.zeros_like(arg)),
    }


def _chunk_logit_probes(
    L: torch.Tensor,
    space: _LabelSpace,
    rows: _LogitRows,
    loss_freqs: Sequence[int] | None,
    data: Dataset | None,
) -> dict[str, torch.Tensor]:
    """``L [c, logit_rows, p]`` -> the logits' per-frequency energy and variance over the table
    (summarised after the last chunk) and, given ``loss_freqs``, the progress-measure losses."""
    L_S = (L if rows.table_is_all else L[:, rows.pos_S]).double()  # [c, inputs of the table, p]
    R = space.inner(L_S)
    found = {
        "_logit_energy": space.freq_energy(R),
        "_logit_variance": (L_S - L_S.mean(1, keepdim=True)).pow_(2).sum((1, 2)),
    }
    if loss_freqs is not None:
        found.update(_chunk_losses(L, L_S, R, space, rows, loss_freqs, data))
    return found


def _chunk_losses(
    L: torch.Tensor,
    L_S: torch.Tensor,
    R: torch.Tensor,
    space: _LabelSpace,
    rows: _LogitRows,
    key_freqs: Sequence[int],
    data: Dataset,
) -> dict[str, torch.Tensor]:
    """The progress measures' losses of a chunk: restricted (key frequencies and the constant
    only), excluded (key frequencies removed, on the train inputs), and the train / test loss and
    accuracy."""
    restricted = space.projection(R, key_freqs, constant=True)  # [c, p answers, o]
    # restricted logits depend on the input only through its answer: weight by counts
    per_answer = -restricted.log_softmax(-1).diagonal(dim1=1, dim2=2)  # [c, p]
    found = {"restricted_loss": per_answer @ space.counts / space.n_inputs}
    key_part = space.projection(R, key_freqs, constant=False)
    # the losses of batched_loss_acc (cross-entropy with a float64 log-softmax), per
    # input once for every computed row, then averaged over the train / test rows
    L_all = L_S if rows.table_is_all else L.double()
    lse, pred = _logsumexp_argmax(L_all)  # [c, rows] each
    pos_train = rows.pos_train
    ex_logits = L_all[:, pos_train] - key_part[:, data.train_y]  # [c, train, p]
    ex_right = L_all[:, pos_train, data.train_y] - key_part[:, data.train_y, data.train_y]
    found["excluded_loss"] = (torch.logsumexp(ex_logits, -1) - ex_right).mean(-1)
    for split, pos, y in (("train", pos_train, data.train_y), ("test", rows.pos_test, data.test_y)):
        found[f"{split}_loss"] = (lse[:, pos] - L_all[:, pos, y]).mean(-1)
        found[f"{split}_acc"] = (pred[:, pos] == y).double().mean(-1)
    return found


def _logit_freq_summary(
    energy: torch.Tensor, variance: torch.Tensor, n_inputs: int, *, min_gap: float, min_explained: float
) -> dict[str, torch.Tensor]:
    """The ``logits`` part's keys from the per-frequency energies ``[n, K]`` and variances ``[n]``."""
    norms = (energy / n_inputs).sqrt()
    return {
        "logit_freq_norms": norms,
        "logit_freq_frac": energy / variance.clamp_min(1e-300)[:, None],
        "key_freq_mask": key_frequency_mask(energy, total=variance, min_gap=min_gap, min_explained=min_explained),
        "sparsity_logits": gini(norms),
    }


def _circle_waves(
    traj: Trajectory, coef: torch.Tensor | None, dominant: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    """The ``circles`` part: each neuron's input wave (frequency, cos and sin amplitudes). The
    cos/sin model's are its input weights at the model's one frequency; otherwise the operand-a
    wave ``coef [n, K, m, 2]`` at the neuron's ``dominant`` frequency (zero for a dead neuron)."""
    config = traj.config
    if config.model.kind == "cossin_mlp":
        W_in = traj.params["blocks.0.mlp.W_in"].double()  # [n, 2, m]: rows (cos, sin) weights
        cos, sin = W_in[:, 0], W_in[:, 1]
        freq = torch.full(cos.shape, config.model.frequency, dtype=torch.int64)
    else:
        freq = dominant.clone()
        idx = (freq - 1).clamp_min(0)[:, None, :, None].expand(-1, 1, -1, 2)
        picked = coef.gather(1, idx)[:, 0]  # [n, m, 2]
        live = (freq > 0).double()
        cos, sin = picked[..., 0] * live, picked[..., 1] * live
    return {"circle_freq": freq, "circle_cos": cos, "circle_sin": sin}

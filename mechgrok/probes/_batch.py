"""Batched forward passes over a trajectory's checkpoints (private).

Probes evaluate every checkpoint of a run on the same inputs (all p^2 operand pairs, or a set of
held-out bit strings). Instead of rebuilding a live model per checkpoint, the forward passes here
run the models' maths with a leading checkpoint axis ``n`` (``torch.einsum`` over stacked
parameters), in chunks of checkpoints sized to a memory budget. They reproduce
:mod:`mechgrok.models` exactly (tests compare them with ``run_with_cache`` on live models).

Models without a batched path (RNN / LSTM, a transformer on ``sequence`` tokens) fall back to a
per-checkpoint loop over live models, reading activations with ``run_with_cache`` (wrapped in an
``ActivationCache``) so no hook outlives the call.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import einops
import torch
import torch.nn.functional as F
from transformer_lens import ActivationCache

from ..config import RunConfig
from ..metrics import batched_loss_and_accuracy
from ..models import cossin_embedding, rated_pattern
from ..store import Trajectory
from ..tasks import ModularVocab, encode_pairs

# elements of the largest intermediate tensor per chunk (float64: 32 MB). Small enough that a
# chunk's temporaries stay in the last-level cache and reuse freed memory: 2^25 (256 MB in
# float64) made every temporary a fresh, page-faulting allocation and the cos/sin preset's sweep
# 2.4x slower on one thread; much smaller chunks pay Python overhead per chunk instead
DEFAULT_BUDGET = 2**22


def row_chunks(n: int, per_row: int, budget: int = DEFAULT_BUDGET) -> Iterator[slice]:
    """Slices of ``range(n)`` whose rows each cost ``per_row`` elements, within ``budget``."""
    size = max(1, int(budget // max(per_row, 1)))
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def batched_loss_acc(
    logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-checkpoint mean loss and accuracy of ``logits [n, batch, C]`` against ``y [batch]``:
    :func:`mechgrok.metrics.batched_loss_and_accuracy` (the trainer's float64 definitions)."""
    return batched_loss_and_accuracy(logits, y, reduction)


def grid_inputs(config: RunConfig) -> torch.Tensor:
    """Model inputs for every ordered pair (a, b) in row-major order (a modular task)."""
    p = config.task.p
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    return encode_pairs(a.flatten(), b.flatten(), config.task)


def has_batched_modular(config: RunConfig) -> bool:
    kind = config.model.kind
    return kind in ("mlp", "cossin_mlp") or (kind == "transformer" and config.task.format in ("equals", "pairs"))


def modular_grid_forward(
    params: dict[str, torch.Tensor],
    config: RunConfig,
    *,
    need_logits: bool = True,
    logit_rows: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Activations on the full p x p operand grid for stacked parameters ``[n, ...]``.

    Returns ``pre``/``post`` ``[n, p, p, d_mlp]`` (the hidden layer at the answer position) and,
    if asked, ``logits [n, p, p, p]``, or ``[n, len(logit_rows), p]`` for only the inputs
    ``logit_rows`` (flat indices a * p + b) when given: the output layer is the largest matmul,
    and a task's table of unordered pairs is half the grid. Only for :func:`has_batched_modular`
    configs.
    """
    kind = config.model.kind
    p = config.task.p
    if kind in ("mlp", "cossin_mlp"):
        W_in = params["blocks.0.mlp.W_in"]  # [n, d, m]
        n = W_in.shape[0]
        if kind == "mlp":
            W_E = params["embed.W_E"]  # [n, p, d]
        else:
            W_E = (
                cossin_embedding(p, config.model.frequency, config.model.embed_norm, torch.float64)
                .to(W_in)
                .expand(n, p, 2)
            )
        h = torch.einsum("nad,ndm->nam", W_E, W_in)  # [n, p, m]: h(a), shared by both operands
        # a group task's b is token p + b (tasks.encode_pairs): rows p .. 2p - 1 of h
        h_b = h[:, p : 2 * p] if h.shape[1] == 2 * p else h
        pre = h[:, :p, None, :] + h_b[:, None, :, :]  # [n, a, b, m]
        if "blocks.0.mlp.b_in" in params:
            pre = pre + params["blocks.0.mlp.b_in"][:, None, None, :]
        post = F.relu(pre)
        out: dict[str, torch.Tensor] = {"pre": pre, "post": post}
        if need_logits:
            if kind == "cossin_mlp" or "unembed.W_U" not in params:
                W_U = W_E.transpose(1, 2)  # tied / fixed: W_U = W_E^T  [n, d, p]
            else:
                W_U = params["unembed.W_U"]
            # (post @ W_out) @ W_U == post @ (W_out @ W_U): the neuron-logit map W_L = W_out W_U
            # is [d_mlp, p], far smaller than d_model-wide intermediates over p^2 inputs
            W_L = torch.einsum("nmd,ndc->nmc", params["blocks.0.mlp.W_out"], W_U)
            flat = post.reshape(n, p * p, -1) if logit_rows is None else post.reshape(n, p * p, -1)[:, logit_rows]
            logits = torch.bmm(flat, W_L)  # [n, inputs, C]
            if "blocks.0.mlp.b_out" in params:
                logits = logits + torch.einsum("nd,ndc->nc", params["blocks.0.mlp.b_out"], W_U)[:, None, :]
            out["logits"] = logits.view(n, p, p, -1) if logit_rows is None else logits
        return out
    if kind == "transformer" and config.task.format in ("equals", "pairs"):
        m = config.model
        forward = _transformer_equals_forward if config.task.format == "equals" else _transformer_pairs_forward
        out = forward(params, p, need_logits, m.attn_rate, m.act_fn)
        if need_logits and logit_rows is not None:
            out["logits"] = out["logits"].reshape(out["logits"].shape[0], p * p, -1)[:, logit_rows]
        return out
    raise ValueError(f"model.kind: no batched forward for {kind!r} with format {config.task.format!r}")


_ACT = {"relu": F.relu, "gelu": F.gelu}


def _transformer_mlp_logits(
    params: dict[str, torch.Tensor], resid: torch.Tensor, need_logits: bool, act_fn: str
) -> dict[str, torch.Tensor]:
    """MLP and unembedding of the answer position's residual stream ``resid [n, a, b, d]``."""
    pre = (
        torch.einsum("nabd,ndm->nabm", resid, params["blocks.0.mlp.W_in"]) + params["blocks.0.mlp.b_in"][:, None, None]
    )
    post = _ACT[act_fn](pre)
    out = {"pre": pre, "post": post}
    if need_logits:
        mlp_out = (
            torch.einsum("nabm,nmd->nabd", post, params["blocks.0.mlp.W_out"])
            + params["blocks.0.mlp.b_out"][:, None, None]
        )
        out["logits"] = torch.einsum("nabd,ndc->nabc", resid + mlp_out, params["unembed.W_U"])
    return out


def _transformer_pairs_forward(
    params: dict[str, torch.Tensor], p: int, need_logits: bool, attn_rate: float = 1.0, act_fn: str = "relu"
) -> dict[str, torch.Tensor]:
    """The 1-layer transformer on ``a b`` (Zhong et al.'s input, no ``=``), read at position 1.

    The query at position 1 depends on b only, the key / value at position 0 on a only: two
    per-head scores per input, O(p^2 d) like the ``a b =`` grid.
    """
    W_E, W_pos = params["embed.W_E"], params["pos_embed.W_pos"]  # [n, p, d], [n, 2, d]
    W_Q, W_K, W_V = (params[f"blocks.0.attn.W_{x}"] for x in "QKV")  # [n, h, d, e]
    x0 = W_E[:, :p] + W_pos[:, 0:1]  # [n, a, d]
    x1 = W_E[:, :p] + W_pos[:, 1:2]  # [n, b, d]
    scale = math.sqrt(W_Q.shape[-1])
    q1 = torch.einsum("nbd,nhde->nbhe", x1, W_Q)
    k0, v0 = (torch.einsum("nad,nhde->nahe", x0, W) for W in (W_K, W_V))
    k1, v1 = (torch.einsum("nbd,nhde->nbhe", x1, W) for W in (W_K, W_V))
    s0 = torch.einsum("nbhe,nahe->nabh", q1, k0) / scale
    s1 = torch.einsum("nbhe,nbhe->nbh", q1, k1) / scale
    n, _, _, h = s0.shape
    pattern = torch.stack([s0, s1[:, None].expand(n, p, p, h)], dim=-1).softmax(dim=-1)  # [n, a, b, h, 2]
    pattern = rated_pattern(pattern, attn_rate)
    z = pattern[..., 0, None] * v0[:, :, None] + pattern[..., 1, None] * v1[:, None]  # [n, a, b, h, e]
    resid = x1[:, None] + einops.einsum(z, params["blocks.0.attn.W_O"], "n a b h e, n h e d -> n a b d")
    return _transformer_mlp_logits(params, resid, need_logits, act_fn)


def _transformer_equals_forward(
    params: dict[str, torch.Tensor], p: int, need_logits: bool, attn_rate: float = 1.0, act_fn: str = "relu"
) -> dict[str, torch.Tensor]:
    """Nanda et al.'s 1-layer transformer on ``a b =``, read at the last position.

    In a one-layer model the query at position 2 sees only ``=`` and W_pos[2], so it is the same
    for every input; keys / values at position 0 depend only on a and at position 1 only on b.
    The attention pattern over the grid is a softmax of three per-head scores, which keeps the
    grid computation at O(p^2 * d) instead of O(p^2 * n_ctx^2 * d).
    """
    W_E, W_pos = params["embed.W_E"], params["pos_embed.W_pos"]  # [n, V, d], [n, ctx, d]
    W_Q, W_K, W_V = (params[f"blocks.0.attn.W_{x}"] for x in "QKV")  # [n, h, d, e]
    W_O = params["blocks.0.attn.W_O"]  # [n, h, e, d]
    eq = ModularVocab(p).token("=")
    x0 = W_E[:, :p] + W_pos[:, 0:1]  # [n, a, d]
    x1 = W_E[:, :p] + W_pos[:, 1:2]  # [n, b, d]
    x2 = W_E[:, eq] + W_pos[:, 2]  # [n, d]
    scale = math.sqrt(W_Q.shape[-1])
    q2 = torch.einsum("nd,nhde->nhe", x2, W_Q)
    k0, v0 = (torch.einsum("nad,nhde->nahe", x0, W) for W in (W_K, W_V))
    k1, v1 = (torch.einsum("nad,nhde->nahe", x1, W) for W in (W_K, W_V))
    k2, v2 = (torch.einsum("nd,nhde->nhe", x2, W) for W in (W_K, W_V))
    s0 = torch.einsum("nhe,nahe->nah", q2, k0) / scale
    s1 = torch.einsum("nhe,nahe->nah", q2, k1) / scale
    s2 = torch.einsum("nhe,nhe->nh", q2, k2) / scale
    n, h = s2.shape
    scores = torch.stack(
        [s0[:, :, None].expand(n, p, p, h), s1[:, None].expand(n, p, p, h), s2[:, None, None].expand(n, p, p, h)],
        dim=-1,
    )  # [n, a, b, h, 3]
    pattern = rated_pattern(scores.softmax(dim=-1), attn_rate)
    z = (
        pattern[..., 0, None] * v0[:, :, None]
        + pattern[..., 1, None] * v1[:, None]
        + pattern[..., 2, None] * v2[:, None, None]
    )  # [n, a, b, h, e]
    attn_out = einops.einsum(z, W_O, "n a b h e, n h e d -> n a b d")  # heads summed
    resid = x2[:, None, None] + attn_out
    return _transformer_mlp_logits(params, resid, need_logits, act_fn)


# ----------------------------------------------------------------------------------------------
# live-model fallback


def hidden_hook_name(config: RunConfig) -> str | None:
    """The hook whose activations count as the model's hidden neurons (None: no such layer)."""
    if config.model.kind in ("mlp", "cossin_mlp", "transformer", "parity_mlp"):
        return "blocks.0.mlp.hook_post"
    if config.model.kind in ("rnn", "lstm"):
        return "hook_final"
    return None


@torch.no_grad()
def live_grid_forward(
    traj: Trajectory, rows: range | list[int], *, need_logits: bool = True
) -> dict[str, torch.Tensor]:
    """Like :func:`modular_grid_forward`, one live model per checkpoint (any model kind).

    Activations are read with ``run_with_cache`` (hooks live only during the call). ``pre`` is
    absent for models without an MLP layer; for RNN / LSTM ``post`` is the final hidden state.
    """
    config = traj.config
    p = config.task.p
    x = grid_inputs(config)
    post_name = hidden_hook_name(config)
    names = [post_name] if post_name else []
    if config.model.kind in ("mlp", "cossin_mlp", "transformer"):
        names.append("blocks.0.mlp.hook_pre")
    pres, posts, logits = [], [], []
    for i in rows:
        model = traj.model(i)
        out, raw = model.run_with_cache(x, names_filter=lambda name: name in names)
        cache = ActivationCache(raw, model)
        if "blocks.0.mlp.hook_pre" in names:
            pre = cache["blocks.0.mlp.hook_pre"]
            pres.append((pre[:, -1] if pre.ndim == 3 else pre).reshape(p, p, -1))
        if post_name:
            post = cache[post_name]
            posts.append((post[:, -1] if post.ndim == 3 else post).reshape(p, p, -1))
        if need_logits:
            logits.append(out.reshape(p, p, -1))
    result: dict[str, torch.Tensor] = {}
    if pres:
        result["pre"] = torch.stack(pres)
    if posts:
        result["post"] = torch.stack(posts)
    if logits:
        result["logits"] = torch.stack(logits)
    return result


def grid_forward(
    traj: Trajectory, rows: slice, *, need_logits: bool = True, logit_rows: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Grid activations for ``rows`` of a trajectory: batched when possible, else live models.
    ``logit_rows``: as in :func:`modular_grid_forward` (logits ``[n, len(logit_rows), C]``)."""
    if has_batched_modular(traj.config):
        params = {k: v[rows] for k, v in traj.params.items()}
        return modular_grid_forward(params, traj.config, need_logits=need_logits, logit_rows=logit_rows)
    out = live_grid_forward(traj, list(range(len(traj)))[rows], need_logits=need_logits)
    if need_logits and logit_rows is not None:
        p = traj.config.task.p
        out["logits"] = out["logits"].reshape(out["logits"].shape[0], p * p, -1)[:, logit_rows]
    return out


def grid_row_cost(config: RunConfig) -> int:
    """Elements of the largest per-checkpoint intermediate of :func:`grid_forward`."""
    p, m = config.task.p, config.model.d_mlp
    kind = config.model.kind
    if kind == "transformer":
        width = max(m, config.model.d_model, config.model.n_heads * config.model.d_head) * 3
    elif kind in ("mlp", "cossin_mlp"):
        width = max(m, p) * 3  # pre / post [p^2, d_mlp], logits [p^2, p]; d_model never spans p^2
    else:
        width = max(config.model.d_model, p) * 3
    return p * p * width


# ----------------------------------------------------------------------------------------------
# parity


def parity_pre(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Hidden pre-activations ``[n, batch, d_mlp]`` of stacked ParityMLPs on bits ``x [batch, n_bits]``."""
    W_in = params["blocks.0.mlp.W_in"]  # [n, bits, m]
    x = x.to(W_in.dtype).expand(W_in.shape[0], *x.shape)  # [n, batch, bits] (a view)
    if "blocks.0.mlp.b_in" in params:  # bias added inside the matmul: one pass over [n, batch, m]
        return torch.baddbmm(params["blocks.0.mlp.b_in"][:, None, :], x, W_in)
    return torch.bmm(x, W_in)


def parity_logits(params: dict[str, torch.Tensor], pre: torch.Tensor) -> torch.Tensor:
    """Logits ``[n, batch, n_out]`` from pre-activations ``[n, batch, d_mlp]``."""
    out = torch.einsum("nbm,nmo->nbo", F.relu(pre), params["blocks.0.mlp.W_out"])
    if "blocks.0.mlp.b_out" in params:
        out = out + params["blocks.0.mlp.b_out"][:, None, :]
    return out


def decision_readout(params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-neuron weight on the decision logit ``[n, d_mlp]``: the single logit's readout, or
    logit(1) - logit(0) for two logits (the prediction is ``z > 0`` either way)."""
    W_out = params["blocks.0.mlp.W_out"]  # [n, m, n_out]
    return W_out[..., 0] if W_out.shape[-1] == 1 else W_out[..., 1] - W_out[..., 0]


def decision_bias(params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Constant of the decision logit ``[n]`` (0 without output biases)."""
    if "blocks.0.mlp.b_out" not in params:
        return torch.zeros(params["blocks.0.mlp.W_out"].shape[0], dtype=params["blocks.0.mlp.W_out"].dtype)
    b = params["blocks.0.mlp.b_out"]
    return b[..., 0] if b.shape[-1] == 1 else b[..., 1] - b[..., 0]

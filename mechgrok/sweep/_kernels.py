"""Batched numerics of the sweep engine: forward passes over stacked parameters, the float64
cross-entropy with its gradient, per-model AdamW and per-model gradient clipping.

Stacked parameters are ``{name: [c, *shape]}`` dicts with the names and shapes of the single
model's ``state_dict`` (the ``c`` members of a chunk on the leading axis). Inputs are either
*shared* by every member (``[n, ...]``) or per member (``[c, n, ...]``, padded, with a mask).

Three forwards compute the same logits:

* ``fused``  - hand-batched matmuls for the MLP families. The modular MLPs are re-associated:
  ``ReLU(W_E[a] W_in + W_E[b] W_in)`` becomes a gather of ``h = W_E W_in`` (one ``[p, m]``
  table per member instead of a ``[batch, 2, d_model]`` activation), and the unembedding is
  folded as ``post (W_out W_U)`` when that is cheaper. Same function, different rounding.
  RNN / LSTM too (stacked ``bmm`` recurrences), but only on request (see ``_FusedRecurrent``).
* ``vmap``   - ``torch.func.vmap`` of ``functional_call`` on the real hooked model (any model
  whose ops have batching rules: the MLPs and the transformer).
* ``loop``   - ``functional_call`` member by member (``auto`` for RNN / LSTM: ``aten::rnn_tanh``
  and ``aten::lstm`` have no batching rule); correct but no faster than single runs.
"""

from __future__ import annotations

import copy
import threading

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

from ..config import ConfigError, RunConfig
from ..metrics import LOSS_DTYPES, example_nll, loss_divisor

__all__ = [
    "FUSED_KINDS",
    "BatchedModel",
    "make_model",
    "ce_loss_grad",
    "ce_loss_grad_sampler",
    "orthograd_rows_",
    "adamw_step",
    "clip_grad_norms",
    "row_norms",
]

FUSED_KINDS = ("mlp", "cossin_mlp", "parity_mlp", "rnn", "lstm")
AUTO_FUSED_KINDS = ("mlp", "cossin_mlp", "parity_mlp")  # RNN/LSTM: the loop is as fast on a CPU
VMAP_KINDS = ("mlp", "cossin_mlp", "parity_mlp", "transformer")


class BatchedModel:
    """``forward(params, x, shared) -> logits [c, n, n_out]`` plus input preparation.

    ``prepare(x)`` turns a dataset's inputs into what ``forward`` reads (e.g. one-hot operand
    counts for the fused modular MLP); it is applied once per dataset, not per step.
    ``act_floats`` estimates float32 activations per example and member (for chunk sizing).
    """

    name = "base"
    act_floats = 1
    loss_div = 1.0
    """``optim.loss_reduction``: 1, or the number of logits for ``mean_classes`` (set by make_model)."""
    loss_opts: dict[str, str] = {}
    """``optim.loss`` and ``optim.loss_dtype`` as :func:`ce_loss_grad`'s ``loss`` / ``dtype`` (set by make_model)."""
    dtype = torch.float32
    """``model.dtype`` of the parameters; prepared inputs are made in it (set by make_model)."""
    softmax_dtype = torch.float64
    """Precision of :func:`ce_loss_grad`'s soft-max (its ``work``): float64 for training; the LLC
    sampler sets float32, where a gradient that only feeds a noisy SGLD step needs no more."""
    sampler = False
    """Set by the LLC sampler: the loss and its gradient come from :func:`ce_loss_grad_sampler`
    (per-example cross-entropy in ``softmax_dtype``, no accuracy: ``None``), and the fused modular
    MLP reads operand indices (gather / index_add) instead of one-hot GEMMs. Same function,
    different rounding; training never sets it, so the engine's numbers do not move."""

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def __call__(self, params: dict[str, torch.Tensor], x: torch.Tensor, shared: bool) -> torch.Tensor:
        raise NotImplementedError

    def loss_grad(
        self,
        params: dict[str, torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None,
        count: torch.Tensor,
        shared: bool,
        metrics: bool = True,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, dict[str, torch.Tensor]]:
        """Per-member loss [c], accuracy [c] and gradients ``{name: [c, ...]}`` of the mean loss.

        ``metrics=False`` lets a model skip the float64 loss and accuracy (``None`` then) where
        the gradient does not need them; the gradient is the same either way.
        """
        # copies, not views: with several workers another block's optimiser step edits other rows of
        # the same stacked storage in place, which bumps the version counter a view shares and makes
        # autograd refuse this chunk's backward (the values would be right; the check fails)
        leaves = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        with torch.enable_grad():
            logits = self(leaves, x, shared)
        loss, acc, g = self._loss_grad(logits, y, mask, count, owned=False)
        names = list(leaves)
        grads = torch.autograd.grad(logits, [leaves[k] for k in names], g, allow_unused=True)
        return loss, acc, {k: gr if gr is not None else torch.zeros_like(leaves[k]) for k, gr in zip(names, grads)}

    def _loss_grad(self, logits, y, mask, count, owned=True):
        """:func:`ce_loss_grad`, or :func:`ce_loss_grad_sampler` in sampler mode (plain float64-option
        cross-entropy, no mask); ``owned=False``: ``logits`` may not be overwritten."""
        plain = self.loss_opts.get("loss", "cross_entropy") == "cross_entropy" and (
            self.loss_opts.get("dtype", "float64") == "float64"
        )
        if self.sampler and plain and mask is None and logits.shape[-1] > 1:
            z = logits.detach()
            loss, g = ce_loss_grad_sampler(z if owned else z.clone(), y, self.loss_div, self.softmax_dtype)
            return loss, None, g
        return ce_loss_grad(logits, y, mask, count, div=self.loss_div, work=self.softmax_dtype, **self.loss_opts)

    @torch.no_grad()
    def evaluate(
        self,
        params: dict[str, torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None,
        count: torch.Tensor,
        shared: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        loss, acc, _ = ce_loss_grad(
            self(params, x, shared), y, mask, count, want_grad=False, div=self.loss_div, **self.loss_opts
        )
        return loss, acc


class _FusedModular(BatchedModel):
    """ModAddMLP / CosSinMLP on ``pairs`` inputs, batched over members."""

    name = "fused"

    def __init__(self, config: RunConfig, model: torch.nn.Module):
        mc, tc = config.model, config.task
        self.p = tc.p
        # a group task's second operand is token p + b (tasks.encode_pairs): one-hot rows span 2p
        self.vocab = 2 * tc.p if tc.kind == "group" else tc.p
        self.cossin = mc.kind == "cossin_mlp"
        self.tied = self.cossin or mc.tied_embed
        self.bias = mc.bias
        # the fixed (cos, sin) embedding is a non-persistent buffer of the template model
        self.fixed_E = model.W_E.detach().clone() if self.cossin else None
        d = 2 if self.cossin else mc.d_model
        m, p = mc.d_mlp, tc.p
        self.act_floats = 3 * m + 5 * p  # pre/post/grad, logits/grad (+ float64 copies)
        self._fixed_device: torch.device | None = None
        # per member: fold W_out W_U once ([m, p]) vs. carry [n, d] activations through it
        n = max(1, round(tc.n_examples * tc.train_fraction))
        self.fold = m * d * p + n * m * p <= n * m * d + n * d * p

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        if self.sampler:  # the operands themselves: [(c,) n, 2] int64
            return x
        # one-hot counts of the two operands: S @ h == h[a] + h[b] exactly (sums of zeros)
        a, b = x[..., 0], x[..., 1]
        return F.one_hot(a, self.vocab).to(self.dtype) + F.one_hot(b, self.vocab).to(self.dtype)  # [(c,) n, vocab]

    def __call__(self, params: dict[str, torch.Tensor], S: torch.Tensor, shared: bool) -> torch.Tensor:
        W_in = params["blocks.0.mlp.W_in"]  # [c, d, m]
        if self.cossin:
            E = self.fixed_E.to(W_in.device)  # [p, 2], shared by every member
        else:
            E = params["embed.W_E"]  # [c, p, d]
        h = torch.matmul(E, W_in)  # [c, p, m]
        pre = self._operands(h, S)  # [c, n, m]
        if self.bias:
            pre = pre + params["blocks.0.mlp.b_in"][:, None]
        post = F.relu(pre)
        W_out = params["blocks.0.mlp.W_out"]  # [c, m, d]
        W_U = E.transpose(-1, -2) if self.tied else params["unembed.W_U"]  # [(c,) d, p]
        b_out = params.get("blocks.0.mlp.b_out") if self.bias else None
        if self.fold:
            logits = torch.matmul(post, torch.matmul(W_out, W_U))  # [c, n, p]
            if b_out is not None:
                logits = logits + torch.matmul(b_out[:, None], W_U)
        else:
            out = torch.matmul(post, W_out)
            if b_out is not None:
                out = out + b_out[:, None]
            logits = torch.matmul(out, W_U)
        return logits

    def _operands(self, h: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
        """``h[a] + h[b]`` per member (``h [c, vocab, m]`` -> ``[c, n, m]``) from :meth:`prepare`'s
        inputs, shared (``[n, ...]``) or per member (``[c, n, ...]``). Training multiplies the
        one-hot counts (a GEMM with one-hot rows is exact and measured as fast as index_select +
        index_add in the engine); the sampler gathers, which is faster there (0.74 -> 0.51 ms per
        chain-step with the in-place loss on modadd-mlp24)."""
        if not self.sampler:
            return torch.matmul(S, h)
        if S.dim() == 2:
            return h.index_select(1, S[:, 0]).add_(h.index_select(1, S[:, 1]))
        a, b = self._operand_index(S, h.shape[-1])
        return h.gather(1, a).add_(h.gather(1, b))

    def _operands_adjoint(self, g_pre: torch.Tensor, S: torch.Tensor, vocab: int) -> torch.Tensor:
        """The adjoint of :meth:`_operands`: ``dL/dh [c, vocab, m]`` from ``dL/dpre [c, n, m]``."""
        if not self.sampler:
            return torch.matmul(S.transpose(-1, -2), g_pre)
        out = g_pre.new_zeros(g_pre.shape[0], vocab, g_pre.shape[-1])
        if S.dim() == 2:
            return out.index_add_(1, S[:, 0], g_pre).index_add_(1, S[:, 1], g_pre)
        a, b = self._operand_index(S, g_pre.shape[-1])
        return out.scatter_add_(1, a, g_pre).scatter_add_(1, b, g_pre)

    @staticmethod
    def _operand_index(ab: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-member operands ``[c, n, 2]`` as two ``[c, n, m]`` indices for gather / scatter_add."""
        return ab[..., 0, None].expand(-1, -1, m), ab[..., 1, None].expand(-1, -1, m)

    def loss_grad(self, params, x, y, mask, count, shared, metrics=True):
        if self.cossin or not self.tied or self.bias or not self.fold:
            return super().loss_grad(params, x, y, mask, count, shared, metrics)
        return self._tied_loss_grad(params, x, y, mask, count)

    def _tied_loss_grad(self, params, S, y, mask, count):
        """PAIR's model (tied embedding, no biases) with a hand-written backward.

        ``h = W_E W_in`` and ``U^T = W_E W_out^T`` come from one matmul with ``[W_in | W_out^T]``,
        and their gradients flow back through one matmul each way, instead of two thinner ones.
        """
        E, W_in, W_out = params["embed.W_E"], params["blocks.0.mlp.W_in"], params["blocks.0.mlp.W_out"]
        m = W_in.shape[-1]
        with torch.no_grad():
            W_cat = torch.cat([W_in, W_out.transpose(1, 2)], dim=-1)  # [c, d, 2m]
            hu = torch.bmm(E, W_cat)  # [c, p, 2m]: h | U^T
            h, u_t = hu[..., :m], hu[..., m:]
            post = self._operands(h, S).relu_()  # [c, n, m]
            logits = torch.bmm(post, u_t.transpose(1, 2))  # [c, n, p]
            loss, acc, g = self._loss_grad(logits, y, mask, count)  # g [c, n, p]
            g_ut = torch.bmm(g.transpose(1, 2), post)  # dL/dU^T [c, p, m]
            g_post = torch.bmm(g, u_t)  # [c, n, m]
            g_pre = g_post.mul_(post.sign_())  # ReLU derivative: post >= 0, so sign is 0/1
            g_h = self._operands_adjoint(g_pre, S, h.shape[1])  # dL/dh [c, p, m]
            g_hu = torch.cat([g_h, g_ut], dim=-1)  # [c, p, 2m]
            g_E = torch.bmm(g_hu, W_cat.transpose(1, 2))  # [c, p, d]
            g_cat = torch.bmm(E.transpose(1, 2), g_hu)  # [c, d, 2m]
        return (
            loss,
            acc,
            {
                "embed.W_E": g_E,
                "blocks.0.mlp.W_in": g_cat[..., :m],
                "blocks.0.mlp.W_out": g_cat[..., m:].transpose(1, 2),
            },
        )


class _FusedParity(BatchedModel):
    """ParityMLP batched over members: bits @ W_in (+ b_in) -> ReLU -> @ W_out (+ b_out), with a
    hand-written backward.

    Two logits enter the cross-entropy only through their difference ``d = z1 - z0``: the loss is
    ``BCE(d, y)`` and ``dL/dz1 = -dL/dz0 = (sigmoid(d) - y) / n``, exactly; one logit (BCE) is the
    same with ``d = z``. So the second layer is one matrix-vector product per member instead of a
    skinny ``[n, m] @ [m, 2]`` product, and the backward pass never forms ``[n, 2]`` gradients.
    (The difference is rounded once instead of the two logits: float-level differences only.)

    When the members of a chunk share their inputs (the usual sweep: one training set), the first
    layer of all of them is *one* wide GEMM ``x [n, k] @ [k, c*m]`` and its gradient another
    (``x^T @ [n, c*m]``), instead of ``c`` thin ``[n, k] @ [k, m]`` products: on a CPU the wide
    ones run near matmul peak, the thin ones at about half of it.
    """

    name = "fused"

    def __init__(self, config: RunConfig, model: torch.nn.Module):
        self.bias = config.model.bias
        self.n_out = config.model.n_out
        # the [n, m] activation and its gradient; per-member inputs x g_d [n, k] when the members
        # do not share them; d, g_d, mask (bench_sweep: ~20 members of width 24 per chunk, 5 of 128)
        self.act_floats = 2 * config.model.d_mlp + config.task.n_bits + 9
        # one zero input column when it makes the GEMMs' inner dimension a multiple of 16 (the
        # preset's 30 bits + bias: 31 -> 32, ~2% faster per model-step, measured side by side)
        k = config.task.n_bits + (1 if self.bias else 0)
        self.pad = 1 if k % 16 == 15 else 0

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        # a constant-1 column so that b_in rides in the matmuls (forward and backward), and the pad
        x = x.to(self.dtype)  # the bits are exact in any float type
        cols = [x] + ([x.new_ones(x.shape[:-1] + (1,))] if self.bias else [])
        return torch.cat(cols + [x.new_zeros(x.shape[:-1] + (self.pad,))], dim=-1) if len(cols) + self.pad > 1 else x

    def __call__(self, params: dict[str, torch.Tensor], x: torch.Tensor, shared: bool) -> torch.Tensor:
        W = self._w_aug(params)  # [c, n_bits (+ bias + pad), m]
        post = F.relu(torch.matmul(x, W))  # [c, n, m]
        if self.bias:
            return torch.baddbmm(params["blocks.0.mlp.b_out"][:, None], post, params["blocks.0.mlp.W_out"])
        return torch.bmm(post, params["blocks.0.mlp.W_out"])

    def _w_aug(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[c, k, m]``: W_in, then b_in (bias) and a zero row (pad), matching :meth:`prepare`."""
        W_in = params["blocks.0.mlp.W_in"]
        rows = [W_in] + ([params["blocks.0.mlp.b_in"][:, None]] if self.bias else [])
        if self.pad:
            rows.append(W_in.new_zeros(W_in.shape[0], self.pad, W_in.shape[2]))
        return torch.cat(rows, dim=1) if len(rows) > 1 else W_in

    def loss_grad(self, params, x, y, mask, count, shared, metrics=True):
        W_out = params["blocks.0.mlp.W_out"]
        with torch.no_grad():
            w_d = W_out[..., 1] - W_out[..., 0] if self.n_out == 2 else W_out[..., 0]  # [c, m]
            W = self._w_aug(params)  # [c, k, m]
            c, k, m = W.shape
            if shared:
                # members side by side: Wt [k, c*m], one GEMM for all
                Wt = W.transpose(0, 1).reshape(k, c * m)
                # a member's columns come out bitwise the same whatever the GEMM's width (checked
                # for widths 1-64 here; tests/test_sweep_engine.py checks whole trajectories)
                n = x.shape[0]
                wide = torch.mm(x, Wt).relu_()  # [n, c*m]
                post = wide.view(n, c, m).transpose(0, 1)  # [c, n, m], a strided view (no copy)
            else:
                post = torch.bmm(x, W).relu_()  # [c, n, m]
            # [1, m] @ [m, n] per member: MKL runs this orientation ~5x faster than [n, m] @ [m, 1]
            d = torch.bmm(w_d[:, None, :], post.transpose(1, 2))[:, 0]  # [c, n]
            if self.bias:
                b_out = params["blocks.0.mlp.b_out"]
                d += (b_out[:, 1] - b_out[:, 0] if self.n_out == 2 else b_out[:, 0])[:, None]
            loss, acc = _binary_metrics(d, y, mask, count, self.loss_div) if metrics else (None, None)
            g_d = _binary_grad(d, y, mask, count, self.loss_div)  # [c, n]
            # dL/dW[k, j] = sum_n x[n, k] g_d[n] w_d[j] [post[n, j] > 0]
            #            = w_d[j] * (x^T @ (g_d [post > 0]))[k, j]: the ReLU mask times g_d is one
            #              [n, m] tensor per member, and w_d is applied to the small [k, m] result
            if shared:
                G = wide.sign_()  # post >= 0, so sign is the 0/1 ReLU derivative (in place)
                G.view(n, c, m).mul_(g_d.t()[:, :, None])
                raw = torch.mm(x.t(), G)  # [k, c*m] = x^T (g_d [post > 0])
                # dL/dw_d[j] = sum_n g_d[n] post[n, j] = sum_n g_d[n] [h > 0] sum_k x[n, k] W[k, j]
                #            = sum_k W[k, j] raw[k, j]: from the [k, m] product, not another pass
                #              over the [n, c*m] activations (same sum, other rounding). Summed
                #              along contiguous rows: a column sum's order depends on the width
                g_wd = (raw * Wt).t().contiguous().sum(1).view(c, m)
                g_w = raw.view(k, c, m).transpose(0, 1).mul(w_d[:, None, :])  # [c, k, m]
            else:
                g_wd = torch.bmm(g_d[:, None, :], post)[:, 0]  # [c, m] = sum_n g_d post
                xg = x * g_d[..., None]  # [c, n, k]
                g_w = torch.bmm(xg.transpose(1, 2), post.sign_()).mul_(w_d[:, None, :])  # [c, k, m]
            kb = params["blocks.0.mlp.W_in"].shape[1]
            grads = {"blocks.0.mlp.W_in": g_w[:, :kb] if k > kb else g_w}
            if self.bias:
                grads["blocks.0.mlp.b_in"] = g_w[:, kb]
            if self.n_out == 2:
                grads["blocks.0.mlp.W_out"] = torch.stack([-g_wd, g_wd], dim=-1)
            else:
                grads["blocks.0.mlp.W_out"] = g_wd[..., None]
            if self.bias:
                g_bd = g_d.sum(1)
                grads["blocks.0.mlp.b_out"] = torch.stack([-g_bd, g_bd], dim=-1) if self.n_out == 2 else g_bd[:, None]
        return loss, acc, grads


def _binary_grad(
    d: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None, count: torch.Tensor, div: float = 1.0
) -> torch.Tensor:
    """d(mean BCE / div)/d(d) for a logit difference ``d [c, n]``, computed in float64, returned in d's dtype.

    ``sigmoid(d) - y = -s sigmoid(-s d)`` with ``s = 2y - 1``: the sign flip is exact and the
    sigmoid of a large margin is a tiny number computed directly (no ``1 - p`` cancellation).
    (float64 because torch's float32 ``sigmoid`` is not bitwise reproducible across tensor
    layouts here: a member's trajectory must not depend on its neighbours in the chunk.)
    """
    z = d.to(torch.float64, copy=True)  # a copy for float64 d too: edited in place below
    if y.dim() == 2 and y.stride(0) == 0:
        y = y[:1]  # labels shared by the chunk (an expanded row): one row, broadcast below
    neg = y.to(z.dtype).mul_(-2).add_(1)  # -(2y - 1)
    g = z.mul_(neg).sigmoid_().mul_(neg)
    n = count.to(z.dtype) * div
    g.mul_(mask.to(z.dtype) / n[:, None] if mask is not None else (1.0 / n)[:, None])
    return g.to(d.dtype)


def _binary_metrics(
    d: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None, count: torch.Tensor, div: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean BCE / div (float64, like the single trainer's loss) and accuracy of a logit difference."""
    t = d.double() * y.double().mul_(2).sub_(1)  # the margin (2y - 1) d
    nll = F.logsigmoid(t).neg_()
    correct = (d > 0).long() == y  # two logits: argmax picks 1 only if z1 > z0
    n = count.to(torch.float64)
    if mask is not None:
        nll = nll * mask
        correct = correct & mask
    return nll.sum(1) / n / div, correct.sum(1).double() / n


class _FusedRecurrent(BatchedModel):
    """RecurrentModel (tanh RNN or LSTM) batched over members: the input projections of every
    position as one ``bmm``, then one ``baddbmm`` per position for the recurrence; autograd for
    the backward. The function of ``torch.nn.RNN`` / ``torch.nn.LSTM`` (``h_0 = c_0 = 0``, gates
    in torch's order i, f, g, o), which have no vmap rule; other rounding.

    Not chosen by ``auto``: on a CPU the member-by-member loop over torch's own recurrent kernels
    is as fast (measured, 1 thread, ms per model-step: RNN width 256 33.6 vs 36.2, width 32 2.0
    vs 2.3; LSTM width 128 39.7 vs 33.4, width 32 6.5 vs 4.4). ``engine="fused"`` asks for it,
    e.g. on a GPU, where one batched kernel per position should beat many small ones (unmeasured)."""

    name = "fused"

    def __init__(self, config: RunConfig, model: torch.nn.Module):
        self.lstm = config.model.kind == "lstm"
        d, n_ctx = config.model.d_model, model.cfg.n_ctx
        # per position: embedding, input projection, pre-activation and state(s) kept for autograd
        self.act_floats = n_ctx * d * (14 if self.lstm else 4) + 4 * config.task.n_classes

    def __call__(self, params: dict[str, torch.Tensor], x: torch.Tensor, shared: bool) -> torch.Tensor:
        W_E = params["embed.W_E"]  # [c, d_vocab, d]
        c = W_E.shape[0]
        emb = W_E[:, x] if shared else W_E[torch.arange(c, device=x.device)[:, None, None], x]  # [c, n, T, d]
        n, T = emb.shape[1], emb.shape[2]
        bias = (params["rnn.bias_ih_l0"] + params["rnn.bias_hh_l0"])[:, None, :]  # [c, 1, G d]
        xp = torch.baddbmm(bias, emb.reshape(c, n * T, -1), params["rnn.weight_ih_l0"].transpose(1, 2))
        xp = xp.view(c, n, T, -1)
        W_hh = params["rnn.weight_hh_l0"].transpose(1, 2)  # [c, d, G d]
        h = cell = None
        for t in range(T):
            pre = xp[:, :, t] if h is None else torch.baddbmm(xp[:, :, t], h, W_hh)
            if not self.lstm:
                h = torch.tanh(pre)
                continue
            i, f, g, o = pre.chunk(4, dim=-1)
            ig = torch.sigmoid(i) * torch.tanh(g)
            cell = ig if cell is None else torch.sigmoid(f) * cell + ig
            h = torch.sigmoid(o) * torch.tanh(cell)
        return torch.baddbmm(params["unembed.b_U"][:, None, :], h, params["unembed.W_U"])


class _PerThreadModule:
    """The hooked model for ``functional_call``, one copy per thread.

    ``functional_call`` swaps the passed tensors into the module's attributes for the duration of
    the call, so two engine workers calling it on one module see each other's parameters (a
    silently wrong trajectory, not an error). Each worker thread gets its own deep copy; the thread
    that built the engine uses the original.
    """

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self._owner = threading.get_ident()
        self._local = threading.local()

    def module(self) -> torch.nn.Module:
        if threading.get_ident() == self._owner:
            return self.model
        mod = getattr(self._local, "module", None)
        if mod is None:
            mod = self._local.module = copy.deepcopy(self.model)
        return mod


class _VmapForward(BatchedModel):
    """``vmap(functional_call)`` on the real hooked model."""

    name = "vmap"

    def __init__(self, config: RunConfig, model: torch.nn.Module):
        self.model = model
        self._modules = _PerThreadModule(model)
        self.act_floats = 4 * max(config.model.d_mlp, config.model.d_model) + 4 * config.task.n_classes

        def one(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            # returns the activations (logits) rather than stashing them from a hook (STYLE 6)
            return functional_call(self._modules.module(), p, (x,))

        self._shared = vmap(one, in_dims=(0, None))
        self._own = vmap(one, in_dims=(0, 0))

    def __call__(self, params: dict[str, torch.Tensor], x: torch.Tensor, shared: bool) -> torch.Tensor:
        return (self._shared if shared else self._own)(params, x)


class _LoopForward(BatchedModel):
    """``functional_call`` member by member (models without vmap batching rules)."""

    name = "loop"

    def __init__(self, config: RunConfig, model: torch.nn.Module):
        self.model = model
        self._modules = _PerThreadModule(model)
        self.act_floats = 8 * config.model.d_model + 4 * config.task.n_classes

    def __call__(self, params: dict[str, torch.Tensor], x: torch.Tensor, shared: bool) -> torch.Tensor:
        c = next(iter(params.values())).shape[0]
        module = self._modules.module()
        outs = [
            functional_call(module, {k: v[i] for k, v in params.items()}, (x if shared else x[i],)) for i in range(c)
        ]
        return torch.stack(outs)


def make_model(config: RunConfig, model: torch.nn.Module, engine: str) -> BatchedModel:
    """The batched forward for ``config``'s model family; ``engine`` is auto/fused/vmap/loop."""
    batched = _make_model(config, model, engine)
    batched.dtype = torch.float64 if config.model.dtype == "float64" else torch.float32
    batched.loss_div = loss_divisor(model.cfg.d_vocab_out, config.optim.loss_reduction)
    if config.optim.loss != "cross_entropy" or config.optim.loss_dtype != "float64":
        batched.loss_opts = {"loss": config.optim.loss, "dtype": config.optim.loss_dtype}
    return batched


def _make_model(config: RunConfig, model: torch.nn.Module, engine: str) -> BatchedModel:
    kind = config.model.kind
    if engine == "auto":
        engine = "fused" if kind in AUTO_FUSED_KINDS else "vmap" if kind in VMAP_KINDS else "loop"
    if engine == "fused":
        if kind == "parity_mlp":
            return _FusedParity(config, model)
        if kind in ("mlp", "cossin_mlp"):
            return _FusedModular(config, model)
        if kind in ("rnn", "lstm"):
            return _FusedRecurrent(config, model)
        raise ConfigError(f"engine: 'fused' supports {', '.join(FUSED_KINDS)}, not {kind!r}; use 'vmap' or 'auto'")
    if engine == "vmap":
        if kind not in VMAP_KINDS:
            raise ConfigError(
                f"engine: 'vmap' cannot batch {kind!r} (no vmap rule for its recurrent op); use 'loop' or 'auto'"
            )
        return _VmapForward(config, model)
    if engine == "loop":
        return _LoopForward(config, model)
    raise ConfigError(f"engine: must be auto, fused, vmap or loop, got {engine!r}")


# ----------------------------------------------------------------------------------------------
# loss


def ce_loss_grad(
    logits: torch.Tensor,
    y: torch.Tensor,
    mask: torch.Tensor | None,
    count: torch.Tensor,
    want_grad: bool = True,
    div: float = 1.0,
    loss: str = "cross_entropy",
    dtype: str = "float64",
    work: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-member mean loss, accuracy and d(loss)/d(logits), as :func:`mechgrok.metrics.loss_and_accuracy`.

    ``logits [c, n, k]`` float32, ``y [c, n]`` int64, ``mask [c, n]`` (None = all rows real),
    ``count [c]`` real rows per member. One logit: BCE; several: cross-entropy. The softmax runs
    in float64 like the single trainer's loss (near 100% train accuracy float32 log-probs round to
    0 and the gradient stalls); the gradient is cast to the logits' dtype only at the end, as
    autograd does when it flows back through ``logits.double()``. ``div`` divides the loss and its
    gradient (``optim.loss_reduction="mean_classes"``: the number of logits; 1 for one logit).
    ``loss`` / ``dtype`` (``optim.loss``, ``optim.loss_dtype``; several logits only): anything but
    float64 cross-entropy goes through autograd on :func:`mechgrok.metrics.example_nll`, the single
    trainer's own arithmetic (StableMax, or a collapse-prone precision, is not the hot path).
    ``work`` (several logits only): the soft-max's precision; float32 (the LLC sampler) rounds
    log-probs near 0 and per-example losses to ~1e-7, the sum over examples stays float64.
    """
    if logits.shape[-1] > 1 and (loss != "cross_entropy" or dtype != "float64"):
        return _autograd_loss_grad(logits, y, mask, count, want_grad, div, loss, dtype)
    if logits.shape[-1] == 1:
        d = logits.detach()[..., 0]
        loss, acc = _binary_metrics(d, y, mask, count, div)
        return loss, acc, (_binary_grad(d, y, mask, count, div)[..., None] if want_grad else None)
    z = logits.detach()
    n = count.to(torch.float64)
    zmax = z.amax(-1, keepdim=True)  # [c, n, 1]
    # a copy even when the logits are float64 already (model.dtype): the in-place ops below must
    # not overwrite z, which the tie check reads. Exact for float32 logits: a difference of two
    # float32 values fits a float64
    zd = z.to(work, copy=True).sub_(zmax)
    zy = zd.gather(-1, y[..., None])[..., 0]  # <= 0; == 0 where the label is a maximum
    s = zd.exp_().sum(-1)  # in place: zd now holds exp(z - max); s >= 1
    nll = s.log().sub_(zy)
    # accuracy = (argmax == y): the label's logit is the maximum and no earlier logit ties it
    # (argmax returns the first maximum); ties are rare, so argmax runs only on tied rows
    correct = zy == 0
    maybe = correct & (s >= 2.0)  # another maximum would add exp(0) = 1 to s
    if bool(maybe.any()):
        ties = maybe.clone()
        ties[maybe] = (z[maybe] == zmax[maybe]).sum(-1) > 1
        correct[ties] = z[ties].argmax(-1) == y[ties]
    if mask is not None:
        w = mask.to(torch.float64) / (n * div)[:, None]  # [c, n]
        nll = nll * mask
        correct = correct & mask
    else:
        w = (1.0 / (n * div))[:, None].expand_as(nll)
    loss = nll.sum(1, dtype=torch.float64) / n / div  # the single trainer's order: the batch mean, then / div
    acc = correct.sum(1).double() / n  # count / n exactly, so 100% is exactly 1.0
    g = None
    if want_grad:
        # softmax / n - onehot / n, as autograd's log-softmax backward forms it
        g = zd.mul_((w / s)[..., None])
        g.scatter_add_(-1, y[..., None], -w[..., None].to(zd.dtype).contiguous())
        g = g.to(z.dtype)
    return loss, acc, g


def ce_loss_grad_sampler(
    logits: torch.Tensor, y: torch.Tensor, div: float = 1.0, work: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-member mean cross-entropy [c] (float64) and its gradient ``[c, n, k]`` for the LLC
    sampler: :func:`ce_loss_grad` without the accuracy and the mask, every pass in ``work`` and in
    place where that is float32 (per-example losses are summed in float64). ``logits`` may be
    overwritten: the caller owns them."""
    n = y.shape[-1]
    z = logits if logits.dtype == work else logits.to(work)
    z = z.sub_(z.amax(-1, keepdim=True))
    zy = z.gather(-1, y[..., None])[..., 0]  # <= 0
    s = z.exp_().sum(-1)  # z now holds exp(z - max)
    loss = s.log().sub_(zy).sum(1, dtype=torch.float64) / n / div
    g = z.mul_(s.reciprocal_().mul_(1.0 / (n * div))[..., None])
    g.scatter_add_(-1, y[..., None], g.new_full(y.shape + (1,), -1.0 / (n * div)))
    return loss, g.to(logits.dtype)


def _autograd_loss_grad(logits, y, mask, count, want_grad, div, loss, dtype):
    """:func:`ce_loss_grad` for StableMax or a loss precision other than float64: the per-member
    mean of :func:`mechgrok.metrics.example_nll` in ``dtype`` (padded rows masked out), as
    :func:`mechgrok.metrics.loss_and_accuracy` forms it, differentiated by autograd."""
    z = logits.detach()
    n = count.to(torch.float64)
    with torch.enable_grad():
        zz = z.clone().requires_grad_(want_grad)
        nll = example_nll(zz, y, loss, dtype)  # [c, n] in dtype
        if mask is not None:
            nll = nll.masked_fill(~mask, 0)
        per = (nll.sum(1) / count.to(LOSS_DTYPES[dtype])).double() / div  # [c]
        g = torch.autograd.grad(per.sum(), zz)[0].to(z.dtype) if want_grad else None
    correct = z.argmax(-1) == y
    if mask is not None:
        correct = correct & mask
    return per.detach(), correct.sum(1).double() / n, g


def orthograd_rows_(P: list[torch.Tensor], G: list[torch.Tensor]) -> None:
    """:func:`mechgrok.train.orthograd_` for every row of stacked ``P`` / ``G`` (``[c, ...]``), in place."""
    for w, g in zip(P, G):
        # reshape copies a non-contiguous gradient (the fused kernels hand out transposed views),
        # so the result is written back with copy_
        wf, gf = w.reshape(w.shape[0], -1), g.reshape(g.shape[0], -1)  # [c, n]
        proj = (wf * gf).sum(1, keepdim=True) / ((wf * wf).sum(1, keepdim=True) + 1e-30)
        g_norm = gf.norm(dim=1, keepdim=True)
        orth = gf - wf * proj
        g.copy_((orth * (g_norm / (orth.norm(dim=1, keepdim=True) + 1e-30))).view_as(g))


# ----------------------------------------------------------------------------------------------
# optimiser


def adamw_step(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    steps: np.ndarray,
    lr: np.ndarray,
    weight_decay: np.ndarray,
    betas: tuple[float, float],
    eps: float,
) -> None:
    """One AdamW update of every member, each with its own step count, lr and weight decay.

    Reproduces ``torch.optim.AdamW``'s single-tensor (CPU default) arithmetic op for op:
    the per-model scalars ``1 - lr wd``, ``lr / (1 - beta1^t)`` and ``sqrt(1 - beta2^t)`` are
    computed in float64 like torch's Python floats and rounded to float32 once, as torch's kernels
    round a Python scalar; ``p + (-step_size * m) / denom`` is ``addcdiv``'s evaluation order.
    ``steps`` are the step counts *after* this update (torch increments before using it).
    """
    beta1, beta2 = betas
    t = steps.astype(np.float64)
    bc1 = 1.0 - beta1**t
    bc2_sqrt = (1.0 - beta2**t) ** 0.5
    per_row = (1.0 - lr * weight_decay, -(lr / bc1), bc2_sqrt)
    scalars = [np.broadcast_to(np.asarray(a, dtype=np.float64), t.shape).copy() for a in per_row]
    if all((a == a[0]).all() for a in scalars):
        # every member at the same step with the same lr and wd (the usual sweep step): Python
        # scalars, which torch rounds to float32 exactly as the per-row columns below are
        # rounded, and its kernels run vectorised instead of broadcasting a [c, 1, ...] column
        decay, neg_step, bc2 = (float(a[0]) for a in scalars)
        col = lambda v, p: v
    else:
        dev = params[0].device
        # a Python scalar takes the tensor's dtype in torch's kernels: float32, or float64 params
        decay, neg_step, bc2 = (torch.from_numpy(np.ascontiguousarray(a)).to(params[0].dtype).to(dev) for a in scalars)
        col = lambda v, p: v.view((-1,) + (1,) * (p.dim() - 1))
    for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs):
        p.mul_(col(decay, p))
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        denom = (v.sqrt() / col(bc2, p)).add_(eps)
        p.add_(col(neg_step, p) * m / denom)


def row_norms(tensors: list[torch.Tensor], dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Per-member Euclidean norm over a list of stacked tensors -> [c]."""
    total = None
    for t in tensors:
        sq = t.detach().to(dtype).pow(2).flatten(1).sum(1)
        total = sq if total is None else total + sq
    return total.sqrt()


def clip_grad_norms(grads: list[torch.Tensor], max_norm: float) -> None:
    """Per-member ``torch.nn.utils.clip_grad_norm_``: scale each member's gradients so their
    global norm is at most ``max_norm`` (same ``max_norm / (norm + 1e-6)``, clamped at 1)."""
    norms = torch.stack([torch.linalg.vector_norm(g.flatten(1), 2, dim=1) for g in grads], dim=1)
    total = torch.linalg.vector_norm(norms, 2, dim=1)  # [c]
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g.mul_(coef.view((-1,) + (1,) * (g.dim() - 1)))

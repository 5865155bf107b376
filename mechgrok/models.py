"""Hooked models. Every model is a ``transformer_lens.HookedRootModule``.

Conventions shared by all models (so probes, the store and the sweep engine treat them alike):

* ``forward(x)`` returns logits ``[batch, n_out]`` for the answer only (the transformer reads the
  last position, recurrent models the final hidden state);
* parameters use TransformerLens names and layouts: ``embed.W_E [d_vocab, d_model]``,
  ``pos_embed.W_pos``, ``blocks.0.attn.W_Q/W_K/W_V [n_heads, d_model, d_head]``,
  ``blocks.0.attn.W_O [n_heads, d_head, d_model]``, ``blocks.0.mlp.W_in [d_model, d_mlp]``,
  ``b_in``, ``W_out [d_mlp, d_model]``, ``b_out``, ``unembed.W_U [d_model, d_vocab_out]``;
* hook points use TransformerLens names (``hook_embed``, ``blocks.0.mlp.hook_pre``,
  ``blocks.0.mlp.hook_post``, ``blocks.0.attn.hook_pattern``, ...);
* ``model.cfg`` is a :class:`HookedConfig` with the fields ``ActivationCache`` reads;
* fixed tensors (cos/sin embedding, causal mask) are non-persistent buffers, so a state dict holds
  exactly the trainable parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import einops
import torch
import torch.nn.functional as F
import torch.nn.modules.module as _torch_module
from torch import nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from .config import ModelConfig, TaskConfig
from .tasks import ModularVocab

__all__ = [
    "HookedConfig",
    "ModAddMLP",
    "CosSinMLP",
    "ParityMLP",
    "OneLayerTransformer",
    "RecurrentModel",
    "build_model",
    "cossin_embedding",
]


@dataclass(frozen=True)
class HookedConfig:
    """The subset of TransformerLens' config that ``ActivationCache`` and probes read."""

    model_kind: str
    d_vocab: int
    d_vocab_out: int
    d_model: int
    d_mlp: int
    n_ctx: int
    n_heads: int = 0
    d_head: int = 0
    n_layers: int = 1
    act_fn: str = "relu"
    normalization_type: str | None = None
    attn_only: bool = False
    positional_embedding_type: str = "standard"
    p: int = 0
    """Modulus of a modular task (0 for parity)."""
    device: str = "cpu"


def _param(shape: tuple[int, ...], std: float) -> nn.Parameter:
    return nn.Parameter(torch.randn(*shape) * std)


class Embed(nn.Module):
    def __init__(self, d_vocab: int, d_model: int, std: float):
        super().__init__()
        self.W_E = _param((d_vocab, d_model), std)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.W_E[tokens]


class Unembed(nn.Module):
    def __init__(self, d_model: int, d_vocab_out: int, std: float):
        super().__init__()
        self.W_U = _param((d_model, d_vocab_out), std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.W_U


class MLP(nn.Module):
    """ReLU MLP with TransformerLens names; works on [..., d_model]."""

    def __init__(self, d_in: int, d_mlp: int, d_out: int | None, bias: bool, std_in: float, std_out: float):
        super().__init__()
        self.W_in = _param((d_in, d_mlp), std_in)
        self.b_in = nn.Parameter(torch.zeros(d_mlp)) if bias else None
        if d_out is not None:
            self.W_out = _param((d_mlp, d_out), std_out)
            self.b_out = nn.Parameter(torch.zeros(d_out)) if bias else None
        self.hook_pre = HookPoint()
        self.hook_post = HookPoint()

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        h = x @ self.W_in
        return h + self.b_in if self.b_in is not None else h

    def out(self, post: torch.Tensor) -> torch.Tensor:
        y = post @ self.W_out
        return y + self.b_out if self.b_out is not None else y


class _Block(nn.Module):
    """Container so parameter and hook names read ``blocks.0.mlp.W_in``, ``blocks.0.hook_mlp_out``."""


# torch keeps module hooks in these dicts: TransformerLens' ``add_hook`` / ``hooks()`` /
# ``run_with_hooks`` / ``run_with_cache`` register through the same ``register_*_hook`` calls as a
# user would, so reading them sees every way of hooking. ``_backward_pre_hooks`` and the global
# dicts are newer or rarer; ``getattr`` keeps an older torch (no such attribute) working.
_MODULE_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_GLOBAL_HOOK_DICTS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
)


def is_hooked(*points: nn.Module) -> bool:
    """Whether a hook of any kind would fire at any of ``points`` if the forward called them.

    The one test every model uses before taking a path that skips hook points: forward,
    forward-pre, backward and backward-pre hooks, attached to a point or registered globally with
    ``torch.nn.modules.module.register_module_*_hook`` (those fire at every module). A fast path
    that checked only forward hooks silently dropped backward hooks; this checks every kind.
    """
    if any(getattr(_torch_module, name, None) for name in _GLOBAL_HOOK_DICTS):
        return True
    return any(getattr(hp, name, None) for hp in points for name in _MODULE_HOOK_DICTS)


def _has_backward_hooks(point: nn.Module) -> bool:
    return bool(
        getattr(point, "_backward_hooks", None)
        or getattr(point, "_backward_pre_hooks", None)
        or getattr(_torch_module, "_global_backward_hooks", None)
        or getattr(_torch_module, "_global_backward_pre_hooks", None)
    )


def _input_for_hook(point: HookPoint, x: torch.Tensor) -> torch.Tensor:
    """``x`` as a fresh leaf that requires grad when ``point`` has a backward hook and ``x`` does not.

    The fixed cos/sin embedding and the parity input bits carry no gradient, so a backward hook on
    their ``hook_embed`` (a gradient-wrt-input saliency, say) would never fire. ``detach`` first:
    the caller's tensor is never marked.
    """
    if torch.is_grad_enabled() and not x.requires_grad and _has_backward_hooks(point):
        return x.detach().requires_grad_(True)
    return x


def _shared_hidden(hook_embed: HookPoint, W_E: torch.Tensor, mlp: MLP, x: torch.Tensor) -> torch.Tensor:
    """``W_E[a] W_in + W_E[b] W_in (+ b_in)`` for inputs ``x = [batch, 2]``.

    When nothing hooks the embedding this is computed as ``(W_E W_in)[a] + (W_E W_in)[b]``: the
    same maths, but the backward scatters into ``[p, d_mlp]`` instead of ``[p, d_model]``. With
    :func:`_readout` this makes the 24-neuron PAIR model (d_model 500) several times faster per
    step on CPU. A hook of any kind on ``hook_embed`` switches to the literal path (:func:`is_hooked`).
    """
    if is_hooked(hook_embed):
        emb = hook_embed(_input_for_hook(hook_embed, W_E[x]))  # [batch, 2, d_model]
        return mlp.pre(emb[:, 0]) + emb[:, 1] @ mlp.W_in
    h = W_E @ mlp.W_in  # [p, d_mlp]
    pre = h[x[:, 0]] + h[x[:, 1]]
    return pre + mlp.b_in if mlp.b_in is not None else pre


def _readout(hook_mlp_out: HookPoint, mlp: MLP, post: torch.Tensor, W_U: torch.Tensor) -> torch.Tensor:
    """``(post W_out + b_out) W_U``; computed as ``post (W_out W_U)`` when ``hook_mlp_out`` is unhooked
    (same maths: a [d_mlp, p] product instead of a [batch, d_model] activation); any kind of hook
    on it (:func:`is_hooked`) switches to the literal path."""
    if is_hooked(hook_mlp_out):
        return hook_mlp_out(mlp.out(post)) @ W_U
    logits = post @ (mlp.W_out @ W_U)
    return logits + mlp.b_out @ W_U if mlp.b_out is not None else logits


class ModAddMLP(HookedRootModule):
    """PAIR's modular-arithmetic MLP: logits = W_out^T ReLU(h(a) + h(b)) W_U.

    ``h(x) = W_E[x] @ W_in`` is shared by both operands. With ``tied_embed`` the unembedding is
    ``W_E^T`` (PAIR), otherwise a separate ``unembed.W_U``.
    """

    def __init__(self, cfg: HookedConfig, tied_embed: bool, bias: bool, init_scale: float = 1.0):
        super().__init__()
        self.cfg = cfg
        self.tied_embed = tied_embed
        d, m = cfg.d_model, cfg.d_mlp
        s = init_scale
        self.embed = Embed(cfg.d_vocab, d, s / math.sqrt(d))
        block = _Block()
        block.mlp = MLP(d, m, d, bias, s / math.sqrt(d), s / math.sqrt(m))
        block.hook_mlp_out = HookPoint()
        self.blocks = nn.ModuleList([block])
        if not tied_embed:
            self.unembed = Unembed(d, cfg.d_vocab_out, s / math.sqrt(d))
        self.hook_embed = HookPoint()  # [batch, 2, d_model]
        self.hook_logits = HookPoint()  # [batch, p]
        self.setup()

    @property
    def W_U(self) -> torch.Tensor:
        return self.embed.W_E.T if self.tied_embed else self.unembed.W_U

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mlp = self.blocks[0].mlp
        # ReLU(h(a) + h(b)): the hidden layer is shared by both operands
        pre = mlp.hook_pre(_shared_hidden(self.hook_embed, self.embed.W_E, mlp, x))
        post = mlp.hook_post(F.relu(pre))
        return self.hook_logits(_readout(self.blocks[0].hook_mlp_out, mlp, post, self.W_U))


def cossin_embedding(p: int, k: int, norm: str = "rows", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[p, 2] rows (cos 2 pi k a / p, sin 2 pi k a / p): unit vectors on a circle.

    ``norm="columns"``: each column divided by its norm over the p tokens instead (PAIR's
    ``gen_fixed_embed``), so rows have length sqrt(2/p) for 2k != 0 mod p.
    """
    a = torch.arange(p, dtype=torch.float64)
    ang = 2 * math.pi * k * a / p
    E = torch.stack([torch.cos(ang), torch.sin(ang)], dim=-1)
    if norm == "columns":
        E = E / torch.linalg.vector_norm(E, dim=0)
    return E.to(dtype)


class CosSinMLP(HookedRootModule):
    """PAIR's fixed-embedding model: W_E is the (cos, sin) of one frequency (not trained).

    logits[c] = (W_out^T ReLU(W_E[a] W_in + W_E[b] W_in)) . W_E[c]
    """

    def __init__(
        self, cfg: HookedConfig, frequency: int, bias: bool, init_scale: float = 1.0, embed_norm: str = "rows"
    ):
        super().__init__()
        self.cfg = cfg
        self.frequency = frequency
        self.embed_norm = embed_norm
        m = cfg.d_mlp
        self.register_buffer("W_E", cossin_embedding(cfg.p, frequency, embed_norm), persistent=False)
        block = _Block()
        block.mlp = MLP(2, m, 2, bias, init_scale / math.sqrt(2), init_scale / math.sqrt(m))
        block.hook_mlp_out = HookPoint()
        self.blocks = nn.ModuleList([block])
        self.hook_embed = HookPoint()
        self.hook_logits = HookPoint()
        self.setup()

    @property
    def W_U(self) -> torch.Tensor:
        return self.W_E.T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mlp = self.blocks[0].mlp
        pre = mlp.hook_pre(_shared_hidden(self.hook_embed, self.W_E, mlp, x))
        post = mlp.hook_post(F.relu(pre))
        return self.hook_logits(_readout(self.blocks[0].hook_mlp_out, mlp, post, self.W_U))


class ParityMLP(HookedRootModule):
    """Bits -> ReLU hidden -> one logit (BCE) or two logits (cross-entropy).

    ``blocks.0.mlp.W_in [n_bits, d_mlp]``: row i holds every neuron's weight on input bit i, which is
    what bit-dependence probes read. ``b_in`` plays the role of PAIR's constant-1 input column.
    """

    def __init__(self, cfg: HookedConfig, bias: bool, init_scale: float = 1.0):
        super().__init__()
        self.cfg = cfg
        n, m = cfg.d_model, cfg.d_mlp
        block = _Block()
        block.mlp = MLP(n, m, cfg.d_vocab_out, bias, init_scale / math.sqrt(n), init_scale / math.sqrt(m))
        self.blocks = nn.ModuleList([block])
        self.hook_embed = HookPoint()  # the input bits [batch, n_bits]
        self.hook_logits = HookPoint()
        self.setup()

    @property
    def W_in(self) -> torch.Tensor:
        return self.blocks[0].mlp.W_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.hook_embed(_input_for_hook(self.hook_embed, x.to(self.W_in.dtype)))
        mlp = self.blocks[0].mlp
        pre = mlp.hook_pre(mlp.pre(x))
        post = mlp.hook_post(F.relu(pre))
        return self.hook_logits(mlp.out(post))


def rated_pattern(pattern: torch.Tensor, attn_rate: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Zhong et al.'s attention rate: ``alpha * softmax(QK^T / sqrt(d_head)) + (1 - alpha)``.

    alpha = 1 is ordinary attention, alpha = 0 constant attention (every key weighted 1, so the
    pattern's rows sum to ``alpha + n_keys (1 - alpha)``, not 1, exactly as their
    ``Attention.forward``). Their model masks nothing; mechgrok's is causal, so the constant
    goes only to the keys a query may see (``mask``): at the last position, the only one a
    one-layer model's logits read, that is every key, and the logits are theirs.
    """
    if attn_rate == 1.0:
        return pattern
    const = 1.0 - attn_rate
    if mask is None:
        return pattern * attn_rate + const
    return pattern * attn_rate + mask.to(pattern.dtype) * const


_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


class Attention(nn.Module):
    """Causal multi-head attention without biases (Nanda et al.), TransformerLens layouts."""

    def __init__(self, d_model: int, n_heads: int, d_head: int, n_ctx: int, std: float, attn_rate: float = 1.0):
        super().__init__()
        self.attn_rate = attn_rate  # Zhong et al.'s alpha (rated_pattern)
        self.W_Q = _param((n_heads, d_model, d_head), std)
        self.W_K = _param((n_heads, d_model, d_head), std)
        self.W_V = _param((n_heads, d_model, d_head), std)
        self.W_O = _param((n_heads, d_head, d_model), std)
        self.register_buffer("mask", torch.tril(torch.ones(n_ctx, n_ctx, dtype=torch.bool)), persistent=False)
        self.d_head = d_head
        for name in ("hook_q", "hook_k", "hook_v", "hook_attn_scores", "hook_pattern", "hook_z"):
            setattr(self, name, HookPoint())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.hook_q(einops.einsum(x, self.W_Q, "b p d, h d e -> b p h e"))
        k = self.hook_k(einops.einsum(x, self.W_K, "b p d, h d e -> b p h e"))
        v = self.hook_v(einops.einsum(x, self.W_V, "b p d, h d e -> b p h e"))
        scores = einops.einsum(q, k, "b q h e, b k h e -> b h q k") / math.sqrt(self.d_head)
        n = x.shape[1]
        scores = self.hook_attn_scores(scores.masked_fill(~self.mask[:n, :n], float("-inf")))
        pattern = self.hook_pattern(rated_pattern(scores.softmax(dim=-1), self.attn_rate, self.mask[:n, :n]))
        # [batch, head, q, k]
        z = self.hook_z(einops.einsum(pattern, v, "b h q k, b k h e -> b q h e"))
        return einops.einsum(z, self.W_O, "b q h e, h e d -> b q d")


class OneLayerTransformer(HookedRootModule):
    """Nanda et al.'s one-layer transformer: no LayerNorm, ReLU MLP, logits at the last position.

    Two forward paths compute the same logits:

    * the **full path** runs every position through attention, MLP and residual stream, so every
      hook sees TransformerLens shapes (``hook_pattern [batch, head, q, k]``, ``mlp.hook_post
      [batch, pos, d_mlp]``, ...). It is used whenever any hook point has a hook attached -
      ``run_with_cache``, ``run_with_hooks``, ``model.hooks(...)`` - and when
      ``last_position_only`` is False.
    * the **last-position path** (the default for plain calls: training, evaluation) uses that
      the logits are read at the last position only. The residual stream at the other positions
      feeds nothing but their own keys and values (attention is causal, the model has one layer),
      so only the last query, the keys/values of every position, and the MLP/unembedding at the
      last position are computed. With n_ctx = 3 this skips 2/3 of the MLP, the dominant cost.

    The two paths do the same arithmetic for the last position up to floating-point
    reassociation inside matmuls (``tests/test_speedups.py`` checks logits and gradients).
    """

    last_position_only: bool = True
    """Use the last-position path when no hooks are attached (set False to force the full path)."""

    def __init__(self, cfg: HookedConfig, init_scale: float = 1.0, attn_rate: float = 1.0):
        super().__init__()
        self.cfg = cfg
        self.attn_rate = attn_rate
        self.act = _ACTIVATIONS[cfg.act_fn]
        d = cfg.d_model
        std = init_scale / math.sqrt(d)
        self.embed = Embed(cfg.d_vocab, d, std)
        self.pos_embed = nn.Module()
        self.pos_embed.W_pos = _param((cfg.n_ctx, d), std)
        block = _Block()
        block.attn = Attention(d, cfg.n_heads, cfg.d_head, cfg.n_ctx, std, attn_rate)
        block.mlp = MLP(d, cfg.d_mlp, d, True, std, init_scale / math.sqrt(cfg.d_mlp))
        for name in ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post"):
            setattr(block, name, HookPoint())
        self.blocks = nn.ModuleList([block])
        self.unembed = Unembed(d, cfg.d_vocab_out, std)
        self.hook_embed = HookPoint()
        self.hook_pos_embed = HookPoint()
        self.hook_logits = HookPoint()
        self.setup()
        self._hook_points = list(self.hook_dict.values())

    def hooks_attached(self) -> bool:
        """Whether any hook point has a (TransformerLens or raw torch) hook of any kind on it."""
        return is_hooked(*self._hook_points)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.last_position_only and not self.hooks_attached():
            return self.forward_last_position(tokens)
        return self.forward_full(tokens)

    def forward_full(self, tokens: torch.Tensor) -> torch.Tensor:
        """Every position through every layer, every hook fired with full shapes."""
        n = tokens.shape[1]
        block = self.blocks[0]
        resid = self.hook_embed(self.embed(tokens)) + self.hook_pos_embed(self.pos_embed.W_pos[:n])
        resid = block.hook_resid_pre(resid)
        resid = block.hook_resid_mid(resid + block.hook_attn_out(block.attn(resid)))
        mlp = block.mlp
        post = mlp.hook_post(self.act(mlp.hook_pre(mlp.pre(resid))))
        resid = block.hook_resid_post(resid + block.hook_mlp_out(mlp.out(post)))
        return self.hook_logits(self.unembed(resid[:, -1]))

    def forward_last_position(self, tokens: torch.Tensor) -> torch.Tensor:
        """Same logits as :meth:`forward_full`, computing only what the last position needs.

        Fires no hooks (it is only chosen when none are attached).
        """
        n = tokens.shape[1]
        block = self.blocks[0]
        attn, mlp = block.attn, block.mlp
        resid = self.embed(tokens) + self.pos_embed.W_pos[:n]  # [batch, pos, d_model]
        last = resid[:, -1]  # [batch, d_model]
        q = einops.einsum(last, attn.W_Q, "b d, h d e -> b h e")
        k = einops.einsum(resid, attn.W_K, "b p d, h d e -> b p h e")
        v = einops.einsum(resid, attn.W_V, "b p d, h d e -> b p h e")
        # the last query sees every key under the causal mask, so no masking is needed. With a
        # handful of positions, broadcast-multiply-and-sum beats einsum's batched matmul of
        # [1 x d_head] @ [d_head x pos] blocks (~3x on CPU); the sums are the same.
        scores = (q[:, None] * k).sum(-1) / math.sqrt(attn.d_head)  # [batch, pos, head]
        pattern = rated_pattern(scores.softmax(dim=1), attn.attn_rate)  # the last query sees every key
        z = (pattern[..., None] * v).sum(1)  # [batch, head, d_head]
        mid = last + einops.einsum(z, attn.W_O, "b h e, h e d -> b d")
        post = self.act(mlp.pre(mid))  # [batch, d_mlp]
        return self.unembed(mid + mlp.out(post))


class RecurrentModel(HookedRootModule):
    """Embedding -> torch RNN (tanh) or LSTM -> linear readout of the final hidden state.

    Hooks: ``hook_embed [batch, pos, d_model]``, ``hook_hidden`` (all hidden states
    ``[batch, pos, d_model]``), ``hook_final`` (the last hidden state), ``hook_logits``.
    """

    def __init__(self, cfg: HookedConfig, cell: str, init_scale: float = 1.0):
        super().__init__()
        self.cfg = cfg
        self.cell = cell
        d = cfg.d_model
        self.embed = Embed(cfg.d_vocab, d, init_scale / math.sqrt(d))
        rnn_cls = nn.LSTM if cell == "lstm" else nn.RNN
        self.rnn = rnn_cls(d, d, batch_first=True)
        if init_scale != 1.0:
            with torch.no_grad():
                for prm in self.rnn.parameters():
                    prm.mul_(init_scale)
        self.unembed = Unembed(d, cfg.d_vocab_out, init_scale / math.sqrt(d))
        self.unembed.b_U = nn.Parameter(torch.zeros(cfg.d_vocab_out))
        self.hook_embed = HookPoint()
        self.hook_hidden = HookPoint()
        self.hook_final = HookPoint()
        self.hook_logits = HookPoint()
        self.setup()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        emb = self.hook_embed(self.embed(tokens))
        hidden, _ = self.rnn(emb)
        hidden = self.hook_hidden(hidden)
        final = self.hook_final(hidden[:, -1])
        return self.hook_logits(self.unembed(final) + self.unembed.b_U)


def hooked_config(model: ModelConfig, task: TaskConfig) -> HookedConfig:
    """The model's ``cfg`` for a task (vocab sizes and context derived from the task)."""
    if model.kind == "parity_mlp":
        return HookedConfig("parity_mlp", task.n_bits, model.n_out, task.n_bits, model.d_mlp, 1)
    p = task.p
    if task.format == "pairs":
        # group tasks: b is token p + b (separate left / right embeddings, tasks.encode_pairs)
        d_vocab, n_ctx = (2 * p if task.kind == "group" else p), 2
    else:
        d_vocab = p + 1 if task.format == "equals" else ModularVocab(p).size
        n_ctx = 3 if task.format == "equals" else 6
    d_model = 2 if model.kind == "cossin_mlp" else model.d_model
    return HookedConfig(
        model.kind,
        d_vocab,
        p,
        d_model,
        model.d_mlp,
        n_ctx,
        n_heads=model.n_heads if model.kind == "transformer" else 0,
        d_head=model.d_head if model.kind == "transformer" else 0,
        act_fn=model.act_fn,
        p=p,
    )


# haiku's VarianceScaling divides the std by the std of a unit normal truncated to [-2, 2],
# scipy.stats.truncnorm.std(a=-2, b=2), so the truncated draw has the requested std.
HAIKU_TRUNC_STD = 0.87962566103423978


def haiku_truncated_normal_(t: torch.Tensor, stddev: float) -> torch.Tensor:
    """``hk.initializers.TruncatedNormal(stddev)``: a normal with parameter ``stddev`` cut at
    +-2 ``stddev`` (``jax.random.truncated_normal(-2, 2) * stddev``), in place. The result's
    std is ``HAIKU_TRUNC_STD * stddev``. Draws in float64 from torch's global generator."""
    with torch.no_grad():
        draw = torch.empty(t.shape, dtype=torch.float64)
        nn.init.trunc_normal_(draw, mean=0.0, std=stddev, a=-2 * stddev, b=2 * stddev)
        return t.copy_(draw)


def pair_init_(model: HookedRootModule, init_scale: float = 1.0) -> HookedRootModule:
    """Re-initialise an MLP-family model with haiku's initialisers, as PAIR's notebooks do.

    Embeddings (``embed.W_E`` and an untied ``unembed.W_U``) get ``VarianceScaling(2.0)``:
    truncated normal, parameter sqrt(2 / fan_in) / HAIKU_TRUNC_STD (so the std is
    sqrt(2 / fan_in)), fan_in = the first dimension as haiku counts it. ``hk.Linear`` weights
    (``W_in``, ``W_out``) get ``TruncatedNormal(1 / sqrt(fan_in))`` (not rescaled: std 0.88 /
    sqrt(fan_in)); biases stay 0 (haiku's ``b_init``). Parameters are visited in
    ``named_parameters`` order, so a seed fixes the result.
    """
    for name, prm in model.named_parameters():
        fan_in = prm.shape[0]
        if name in ("embed.W_E", "unembed.W_U"):
            haiku_truncated_normal_(prm, init_scale * math.sqrt(2.0 / fan_in) / HAIKU_TRUNC_STD)
        elif name.endswith(("W_in", "W_out")):
            haiku_truncated_normal_(prm, init_scale / math.sqrt(fan_in))
        elif name.rsplit(".", 1)[-1].startswith("b_"):
            with torch.no_grad():
                prm.zero_()
        else:  # pragma: no cover - ModelConfig only allows 'pair' for the MLP families
            raise ValueError(f"pair_init_: no haiku initialiser for parameter {name!r}")
    return model


def build_model(model: ModelConfig, task: TaskConfig, seed: int | None = None) -> HookedRootModule:
    """Build the hooked model for ``model`` on ``task``; ``seed`` fixes the initialisation."""
    if seed is not None:
        torch.manual_seed(seed)
    cfg = hooked_config(model, task)
    if model.kind == "mlp":
        built = ModAddMLP(cfg, model.tied_embed, model.bias, model.init_scale)
    elif model.kind == "cossin_mlp":
        built = CosSinMLP(cfg, model.frequency, model.bias, model.init_scale, model.embed_norm)
    elif model.kind == "parity_mlp":
        built = ParityMLP(cfg, model.bias, model.init_scale)
    elif model.kind == "transformer":
        built = OneLayerTransformer(cfg, model.init_scale, model.attn_rate)
    else:
        built = RecurrentModel(cfg, model.kind, model.init_scale)
    if model.init == "pair":
        pair_init_(built, model.init_scale)
    if model.dtype == "float64":
        built = built.double()
        if model.kind == "cossin_mlp":
            # .double() widens the float32-rounded buffer; recompute it in float64 instead
            built.W_E = cossin_embedding(task.p, model.frequency, model.embed_norm, torch.float64)
    return built

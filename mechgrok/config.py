"""Run configuration: one frozen, flat, JSON-round-trippable dataclass per concern.

A run is described by :class:`RunConfig`, which groups four concerns:

* :class:`TaskConfig`   - what data (modular arithmetic or sparse parity) and how it is split;
* :class:`ModelConfig`  - which hooked model and its sizes;
* :class:`OptimConfig`  - AdamW, L1, schedules, Grokfast, batching;
* :class:`TrainConfig`  - steps, seed, evaluation / checkpoint cadence, device.

Every field is validated in ``__post_init__`` with a one-line message naming the field and the
allowed values (:class:`ConfigError`). Configs are never mutated: :meth:`RunConfig.with_overrides`
returns a copy.
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import json
import math
import re
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Literal

__all__ = [
    "ConfigError",
    "TaskConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "RunConfig",
    "parse_schedule",
    "schedule_value",
    "check_types",
    "resolve_key",
    "SECTIONS",
]


class ConfigError(ValueError):
    """An invalid configuration value; the message is one line naming the field."""


# Hard bounds checked before anything is computed from a value; sizes below them are judged by
# the run's resource estimate (RunConfig.resources) against train.max_memory_gb / max_disk_gb.
MAX_P = 1 << 20
"""Largest modulus ``task.p`` (the full table has p^2 = 10^12 rows there)."""
MAX_BITS = 1 << 20
"""Largest ``task.n_bits``."""
MAX_SEED = (1 << 53) - 1
"""Largest seed: config.json stores numbers as JSON, which many readers parse as float64, exact
only up to 2^53 (and torch's generators take at most 2^64 - 1)."""
MAX_LOG_CHECKPOINTS = 100_000
"""Largest ``train.log_checkpoints``."""
MAX_THREADS = 1024
"""Largest ``train.threads``: far above any core count, low enough to catch a typo."""
MAX_NAME = 128
"""Longest run name (it becomes a folder name: most file systems allow 255 bytes)."""


_FACTORY = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")
"""``package.module:function`` of a custom task's factory."""


def _fail(owner: str, name: str, msg: str) -> None:
    raise ConfigError(_one_line(f"{owner}.{name}: {msg}"))


def _one_line(msg: str, limit: int = 300) -> str:
    """``msg`` on one line and at most ``limit`` characters: a hostile value (a 100 KB name, a
    deeply nested list) must not turn the error itself into a wall of text."""
    msg = " ".join(msg.split())
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


def _as_int(value: Any) -> int | None:
    """``value`` as an int when it is one (or an integral float, as JSON may write it); else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    # typing.get_type_hints re-evaluates every string annotation (this module has
    # ``from __future__ import annotations``): ~70% of building a config, which a sweep does per member
    return typing.get_type_hints(cls)


def check_types(obj: Any) -> None:
    """Reject values whose type does not match the annotation (configs come from JSON and CLIs)."""
    hints = _hints(type(obj))
    owner = _SECTION_NAMES.get(type(obj).__name__, type(obj).__name__)
    for f in fields(obj):
        value = getattr(obj, f.name)
        hint = hints[f.name]
        origin = typing.get_origin(hint)
        if hint is bool:
            ok = isinstance(value, bool)
        elif hint is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif hint is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if ok:
                object.__setattr__(obj, f.name, float(value))
        elif hint is str:
            ok = isinstance(value, str)
        elif origin is Literal:
            allowed = typing.get_args(hint)
            if value not in allowed:
                _fail(owner, f.name, f"must be one of {', '.join(map(repr, allowed))}, got {value!r}")
            ok = True
        elif origin is tuple:
            ok = isinstance(value, (tuple, list))
            args = typing.get_args(hint)
            if ok and args and all(a in (int, float) for a in args if a is not Ellipsis):
                # flat numeric tuples (betas, relevant_bits): each element must be a number of
                # the field's type; int() / float() of a string or of 1.5 would pass silently
                elem = args[0]
                if (len(args) != 2 or args[1] is not Ellipsis) and len(value) != len(args):
                    _fail(owner, f.name, f"expected {len(args)} values, got {value!r}")
                conv = []
                for v in value:
                    c = (
                        _as_int(v)
                        if elem is int
                        else (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None)
                    )
                    if c is None:
                        kind = "integers" if elem is int else "numbers"
                        _fail(owner, f.name, f"expected {kind}, got {list(value)!r}")
                    conv.append(c)
                object.__setattr__(obj, f.name, tuple(conv))
        else:
            ok = True
        if not ok:
            _fail(owner, f.name, f"expected {getattr(hint, '__name__', hint)}, got {value!r}")


def _check_seed(owner: str, seed: int) -> None:
    if not 0 <= seed <= MAX_SEED:
        _fail(owner, "seed", f"must be in [0, 2^53 - 1] (exact in JSON), got {seed}")


# ----------------------------------------------------------------------------------------------
# schedules


def parse_schedule(text: str, base: float) -> tuple[tuple[int, float], ...]:
    """Parse a piecewise-constant schedule written for a CLI.

    Forms (``base`` is the config's constant value, e.g. ``optim.weight_decay``):

    * ``"constant"`` or ``""`` -> ``()`` (the constant ``base`` throughout);
    * ``"off"``        -> ``((0, 0.0),)``;
    * ``"on@S"``       -> 0 before step S, ``base`` from S on;
    * ``"off@S"``      -> ``base`` before step S, 0 from S on;
    * ``"0:0,5000:0.01"`` -> explicit ``(step, value)`` breakpoints.
    """
    text = text.strip()
    if text in ("", "constant"):
        return ()
    if text == "off":
        return ((0, 0.0),)
    try:
        if text.startswith("on@"):
            return ((0, 0.0), (int(text[3:]), float(base)))
        if text.startswith("off@"):
            return ((0, float(base)), (int(text[4:]), 0.0))
        pairs = []
        for item in text.split(","):
            step, value = item.split(":")
            pairs.append((int(step), float(value)))
        return tuple(pairs)
    except ValueError:
        raise ConfigError(
            f"schedule {text!r}: expected 'constant', 'off', 'on@STEP', 'off@STEP' or 'STEP:VALUE,...'"
        ) from None


def schedule_value(schedule: tuple[tuple[int, float], ...], base: float, step: int) -> float:
    """Value of a piecewise-constant schedule at ``step`` (``base`` before the first breakpoint)."""
    value = base
    for start, v in schedule:
        if step >= start:
            value = v
        else:
            break
    return value


def _check_schedule(owner: str, name: str, schedule: Any) -> tuple[tuple[int, float], ...]:
    try:
        pairs = tuple((int(s), float(v)) for s, v in schedule)
    except (TypeError, ValueError):
        _fail(owner, name, f"must be a list of [step, value] pairs, got {schedule!r}")
    last = -1
    for s, v in pairs:
        if s < 0 or s <= last:
            _fail(owner, name, f"steps must be >= 0 and strictly increasing, got {list(map(list, pairs))}")
        if v < 0 or not math.isfinite(v):
            _fail(owner, name, f"values must be finite and >= 0, got {v}")
        last = s
    return pairs


# ----------------------------------------------------------------------------------------------
# concerns


@dataclass(frozen=True)
class TaskConfig:
    """The dataset. Modular fields apply when ``kind == "modular"``, parity fields when ``kind ==
    "parity"``; a ``group`` task uses ``group``, ``format``, ``train_fraction``, ``split`` and ``seed``."""

    kind: Literal["modular", "parity", "group", "custom"] = "modular"
    """``modular``: (a op b) mod p over the full table; ``parity``: sparse parity of bit strings;
    ``group``: the multiplication table a * b of the finite group ``group`` (mechgrok.groups);
    ``custom``: the dataset ``factory`` returns (the registry is ``mechgrok.tasks.TASK_KINDS``)."""
    p: int = 113
    """Modulus (>= 2). Group tasks: set to the group's order (the number of element tokens)."""
    op: Literal["add", "sub", "mul", "div"] = "add"
    """Operation; ``div`` is a * b^-1 mod p over b != 0 and needs p prime."""
    pairs: Literal["ordered", "unordered"] = "ordered"
    """``ordered``: all p^2 pairs; ``unordered``: only a <= b (PAIR's models)."""
    format: Literal["pairs", "equals", "sequence"] = "pairs"
    """Input encoding: ``pairs`` [a, b] (MLPs; the transformer as Zhong et al. feed it), ``equals`` tokens ``a b =``
    (transformer), ``sequence`` tokens ``<sos> a + b mod =`` (RNN / LSTM)."""
    train_fraction: float = 0.3
    """Fraction of the table used for training, in (0, 1]."""
    n_bits: int = 30
    """Parity: length of the bit strings."""
    relevant_bits: tuple[int, ...] = (0, 1, 2)
    """Parity: the bit positions whose parity is the label."""
    n_train: int = 1200
    """Parity: size of the fixed training set (distinct strings)."""
    n_test: int = 5000
    """Parity: size of the held-out test set (strings not in the training set)."""
    seed: int = 0
    """Seed of the data split / the random strings (independent of the model seed)."""
    split: Literal["torch", "numpy"] = "torch"
    """Modular: how the table is split. ``torch``: ``torch.randperm`` with a generator seeded by
    ``seed``, ``round(train_fraction * n)`` training examples; ``numpy``: PAIR's notebooks,
    ``np.random.seed(seed); np.random.permutation(n)`` and ``int(train_fraction * n)`` (floor)."""
    group: str = ""
    """Group tasks: ``c<n>`` cyclic, ``d<n>`` dihedral (order 2n), ``s<n>`` symmetric (n <= 5),
    ``a<n>`` alternating (3 <= n <= 5); element order and irreps in :mod:`mechgrok.groups`."""
    factory: str = ""
    """Custom tasks: ``"package.module:function"``, imported and called with this TaskConfig; it
    returns the :class:`~mechgrok.tasks.Dataset` (or a mapping with ``train_x``, ``train_y``,
    ``test_x``, ``test_y``): int64 token inputs ``[n, 2]`` (format ``pairs``) or ``[n, 3]``
    (``equals``) with tokens and labels in [0, p). A config naming a factory runs that code when
    its data is built: load only configs you trust."""

    def __post_init__(self) -> None:
        check_types(self)
        object.__setattr__(self, "relevant_bits", tuple(int(b) for b in self.relevant_bits))
        _check_seed("task", self.seed)
        if self.kind == "group":
            from .groups import group_order  # groups imports nothing from config

            try:
                order = group_order(self.group)
            except ValueError as e:
                _fail("task", "group", str(e))
            # p is derived: the element tokens 0 .. order-1 are what every model family reads
            object.__setattr__(self, "p", order)
            object.__setattr__(self, "group", self.group.lower())
            if self.format not in ("pairs", "equals"):
                _fail(
                    "task", "format", f"group tasks read 'pairs' (MLP) or 'equals' (transformer), got {self.format!r}"
                )
            if self.pairs != "ordered":
                _fail("task", "pairs", "group tasks use the whole (ordered) table: a * b != b * a in general")
            if not (0.0 < self.train_fraction <= 1.0):
                _fail("task", "train_fraction", f"must be in (0, 1], got {self.train_fraction}")
            if self.n_examples * self.train_fraction < 1:
                _fail("task", "train_fraction", f"leaves no training example for group {self.group}")
        elif self.kind == "custom":
            if not _FACTORY.match(self.factory):
                _fail("task", "factory", f"custom tasks need 'package.module:function', got {self.factory!r}")
            if not 2 <= self.p <= MAX_P:
                _fail("task", "p", f"must be in [2, {MAX_P:,}] (tokens and labels are 0 .. p-1), got {self.p:,}")
            if self.format not in ("pairs", "equals"):
                _fail(
                    "task", "format", f"custom tasks read 'pairs' (MLP) or 'equals' (transformer), got {self.format!r}"
                )
            if not (0.0 < self.train_fraction <= 1.0):
                _fail("task", "train_fraction", f"must be in (0, 1], got {self.train_fraction}")
        elif self.kind == "modular":
            if self.p < 2:
                _fail("task", "p", f"must be >= 2, got {self.p}")
            # hard bounds before anything loops over p (the primality test) or 2^n_bits; what
            # fits below them is judged by RunConfig's memory estimate (train.max_memory_gb)
            if self.p > MAX_P:
                _fail("task", "p", f"must be <= {MAX_P:,} (the p^2 table would not fit), got {self.p:,}")
            if self.op == "div" and any(self.p % d == 0 for d in range(2, int(self.p**0.5) + 1)):
                _fail("task", "p", f"op 'div' needs a prime modulus, got {self.p}")
            if not (0.0 < self.train_fraction <= 1.0):
                _fail("task", "train_fraction", f"must be in (0, 1], got {self.train_fraction}")
            if self.n_examples * self.train_fraction < 1:
                _fail("task", "train_fraction", f"leaves no training example for p={self.p}")
        else:
            if self.n_bits < 1:
                _fail("task", "n_bits", f"must be >= 1, got {self.n_bits}")
            if self.n_bits > MAX_BITS:
                _fail("task", "n_bits", f"must be <= {MAX_BITS:,}, got {self.n_bits:,}")
            if not self.relevant_bits:
                _fail("task", "relevant_bits", "must name at least one bit")
            if len(set(self.relevant_bits)) != len(self.relevant_bits):
                _fail("task", "relevant_bits", f"must be distinct, got {list(self.relevant_bits)}")
            bad = [b for b in self.relevant_bits if not 0 <= b < self.n_bits]
            if bad:
                _fail("task", "relevant_bits", f"indices must be in [0, {self.n_bits - 1}], got {bad}")
            if self.n_train < 1 or self.n_test < 1:
                _fail("task", "n_train", f"n_train and n_test must be >= 1, got {self.n_train}, {self.n_test}")
            if self.n_train + self.n_test > 2**self.n_bits:
                _fail(
                    "task",
                    "n_train",
                    f"n_train + n_test = {self.n_train + self.n_test} exceeds the 2^{self.n_bits} "
                    f"= {2**self.n_bits} possible strings",
                )

    @property
    def n_examples(self) -> int:
        """Size of the modular / group table (before the split)."""
        if self.kind in ("group", "custom"):
            return self.p * self.p  # custom: the most distinct pairs, the size estimate's bound
        n_b = self.p - 1 if self.op == "div" else self.p
        if self.pairs == "ordered":
            return self.p * n_b
        return self.p * (self.p + 1) // 2 if self.op != "div" else (self.p - 1) * self.p // 2

    @property
    def n_classes(self) -> int:
        return 2 if self.kind == "parity" else self.p


@dataclass(frozen=True)
class ModelConfig:
    """The model. Sizes that do not apply to ``kind`` are ignored."""

    kind: Literal["mlp", "cossin_mlp", "parity_mlp", "transformer", "rnn", "lstm"] = "mlp"
    """``mlp``: learned embedding + shared hidden layer (PAIR); ``cossin_mlp``: fixed (cos, sin)
    embedding; ``parity_mlp``: bits -> hidden -> logit(s); ``transformer``: Nanda et al.'s 1L model;
    ``rnn`` / ``lstm``: recurrent models over token sequences."""
    d_model: int = 128
    """Embedding / residual width (mlp: embedding width; rnn/lstm: hidden state width)."""
    d_mlp: int = 512
    """Hidden neurons of the MLP layer."""
    n_heads: int = 4
    """Transformer attention heads."""
    d_head: int = 32
    """Transformer head width."""
    tied_embed: bool = False
    """mlp: use W_E^T as the unembedding (PAIR)."""
    bias: bool = False
    """Biases in the MLP layer (parity_mlp: the constant-1 input column is b_in)."""
    n_out: int = 2
    """parity_mlp: 1 (single logit, BCE) or 2 (two logits, cross-entropy)."""
    frequency: int = 1
    """cossin_mlp: the frequency k of the fixed (cos 2 pi k a / p, sin 2 pi k a / p) embedding."""
    init_scale: float = 1.0
    """Multiplier on every parameter's initial values (larger -> later grokking)."""
    init: Literal["default", "pair"] = "default"
    """Initialisers. ``default``: normal, std 1/sqrt(d) (see models.py). ``pair``: haiku's, as in
    PAIR's notebooks (MLP families only): embeddings (``W_E``, an untied ``W_U``)
    ``VarianceScaling(2.0)`` = truncated normal with std sqrt(2 / fan_in) (fan_in = rows), linear
    weights (``W_in``, ``W_out``) ``hk.Linear``'s truncated normal with parameter
    1/sqrt(fan_in); both cut at +-2 parameters; biases 0."""
    dtype: Literal["float32", "float64"] = "float32"
    """Parameters and forward/backward arithmetic. PAIR's notebooks enable JAX's x64 mode, so
    their MLP layers and logits are float64."""
    embed_norm: Literal["rows", "columns"] = "rows"
    """cossin_mlp: scale of the fixed embedding. ``rows``: each token's (cos, sin) is a unit
    vector; ``columns``: the cos and sin columns each have unit norm over the p tokens (PAIR's
    ``gen_fixed_embed``; rows then have length sqrt(2/p))."""
    attn_rate: float = 1.0
    """transformer: Zhong et al.'s attention rate alpha in [0, 1]: the attention pattern is
    ``alpha * softmax(QK^T / sqrt(d_head)) + (1 - alpha)`` (their ``attn_coeff``); 1 = ordinary
    attention, 0 = constant attention (each visible key weighted 1)."""
    act_fn: Literal["relu", "gelu"] = "relu"
    """transformer: the MLP's activation (``gelu``: torch's exact erf GELU, as Zhong et al.'s
    ``F.gelu``); the MLP families always use ReLU."""

    def __post_init__(self) -> None:
        check_types(self)
        if not 0.0 <= self.attn_rate <= 1.0:
            _fail("model", "attn_rate", f"must be in [0, 1], got {self.attn_rate}")
        for name in ("d_model", "d_mlp", "n_heads", "d_head"):
            if getattr(self, name) < 1:
                _fail("model", name, f"must be >= 1, got {getattr(self, name)}")
        if self.n_out not in (1, 2):
            _fail("model", "n_out", f"must be 1 or 2, got {self.n_out}")
        if self.frequency < 1:
            _fail("model", "frequency", f"must be >= 1, got {self.frequency}")
        if not (self.init_scale > 0 and math.isfinite(self.init_scale)):
            _fail("model", "init_scale", f"must be > 0, got {self.init_scale}")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with decoupled L2 weight decay, an optional L1 penalty, schedules and Grokfast."""

    lr: float = 1e-3
    """Peak learning rate (> 0)."""
    betas: tuple[float, float] = (0.9, 0.98)
    """AdamW betas, each in [0, 1)."""
    eps: float = 1e-8
    """AdamW epsilon (> 0)."""
    weight_decay: float = 1.0
    """Decoupled (AdamW) L2 weight decay (>= 0); the base of ``wd_schedule``."""
    wd_schedule: tuple[tuple[int, float], ...] = ()
    """Piecewise-constant weight decay: [(step, value), ...] strictly increasing; before the first
    breakpoint ``weight_decay`` applies; empty = constant. CLI: 'off', 'on@S', 'off@S', 'S:V,...'."""
    l1: float = 0.0
    """L1 penalty coefficient (>= 0): adds l1 * sum|w| to the loss."""
    l1_schedule: tuple[tuple[int, float], ...] = ()
    """Piecewise-constant L1 coefficient, same form as ``wd_schedule``."""
    warmup_steps: int = 0
    """Linear learning-rate warmup from 0 over this many steps (>= 0)."""
    grad_clip: float = 0.0
    """Clip the global gradient norm to this value; 0 = off."""
    grokfast_alpha: float = 0.98
    """Grokfast EMA decay alpha in [0, 1)."""
    grokfast_lambda: float = 0.0
    """Grokfast amplification lambda (>= 0): g <- g + lambda * EMA_alpha(g); 0 = off."""
    batch_size: int = 0
    """Minibatch size; 0 = full batch."""
    loss_reduction: Literal["mean", "mean_classes"] = "mean"
    """``mean``: cross-entropy averaged over the batch; ``mean_classes``: also divided by the
    number of logits, PAIR's ``-mean(onehot * log_softmax)`` (a 1/p smaller loss and gradient,
    which changes AdamW's effective epsilon). Logged losses are the objective as reduced."""
    loss: Literal["cross_entropy", "stablemax"] = "cross_entropy"
    """``cross_entropy``: log-softmax; ``stablemax``: Prieto et al. 2025's StableMax, exp replaced
    by s(x) = x + 1 (x >= 0), 1 / (1 - x) (x < 0), which cannot round to a one-hot output
    (softmax collapse). One logit (BCE) accepts only ``cross_entropy``."""
    loss_dtype: Literal["float16", "bfloat16", "float32", "float64"] = "float64"
    """Precision in which logits become the loss and its gradient (the logits are cast to it).
    float64 (the default) postpones softmax collapse; float32 reproduces Prieto et al.'s stall."""
    orthograd: bool = False
    """⊥Grad (Prieto et al. 2025): per parameter tensor, remove the gradient's component along
    the weights and rescale it to the gradient's norm, just before the AdamW step (after
    Grokfast and clipping)."""
    grokfast_filter: Literal["ema", "ma"] = "ema"
    """Grokfast filter: ``ema`` (alpha) or ``ma``, the mean of the last ``grokfast_window``
    gradients, applied once the window is full (Lee et al.'s ``gradfilter_ma``, warmup=True)."""
    grokfast_window: int = 100
    """Window of the ``ma`` filter (>= 1)."""

    def __post_init__(self) -> None:
        check_types(self)
        if not (self.lr > 0 and math.isfinite(self.lr)):
            _fail("optim", "lr", f"must be > 0, got {self.lr}")
        if len(self.betas) != 2 or not all(0 <= float(b) < 1 for b in self.betas):
            _fail("optim", "betas", f"must be two values in [0, 1), got {list(self.betas)}")
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if not (self.eps > 0 and math.isfinite(self.eps)):
            _fail("optim", "eps", f"must be finite and > 0, got {self.eps}")
        for name in ("weight_decay", "l1", "grad_clip", "grokfast_lambda"):
            v = getattr(self, name)
            if not (v >= 0 and math.isfinite(v)):
                _fail("optim", name, f"must be finite and >= 0, got {v}")
        if not 0 <= self.grokfast_alpha < 1:
            _fail("optim", "grokfast_alpha", f"must be in [0, 1), got {self.grokfast_alpha}")
        if self.warmup_steps < 0:
            _fail("optim", "warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        if self.grokfast_window < 1:
            _fail("optim", "grokfast_window", f"must be >= 1, got {self.grokfast_window}")
        if self.batch_size < 0:
            _fail("optim", "batch_size", f"must be >= 0 (0 = full batch), got {self.batch_size}")
        object.__setattr__(self, "wd_schedule", _check_schedule("optim", "wd_schedule", self.wd_schedule))
        object.__setattr__(self, "l1_schedule", _check_schedule("optim", "l1_schedule", self.l1_schedule))

    def weight_decay_at(self, step: int) -> float:
        return schedule_value(self.wd_schedule, self.weight_decay, step)

    def l1_at(self, step: int) -> float:
        return schedule_value(self.l1_schedule, self.l1, step)

    def lr_at(self, step: int) -> float:
        if self.warmup_steps and step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        return self.lr


@dataclass(frozen=True)
class TrainConfig:
    """Length of the run, seeds, and how often to evaluate, checkpoint and save resume state."""

    steps: int = 10_000
    """Optimiser steps (>= 1)."""
    seed: int = 0
    """Model initialisation / minibatch seed."""
    eval_every: int = 1
    """Evaluate test loss/accuracy every this many steps (train metrics come from every step)."""
    checkpoint_every: int = 100
    """Dense checkpoint every this many steps ..."""
    log_checkpoints: int = 40
    """... plus this many log-spaced checkpoints early on (the interesting steps are early)."""
    resume_every: int = 500
    """Save optimiser + RNG state every this many steps (and at the end)."""
    device: str = "cpu"
    """torch device for training ('cpu', 'cuda', 'cuda:0', ...)."""
    threads: int = 0
    """Intra-op CPU threads (``torch.set_num_threads``) while training or analysing this run;
    0 = automatic from the work per step: 1 for small models, where extra threads only spin-wait
    and stall when another process shares the cores (``mechgrok/_threads.py``). Does not change
    what is computed, only how fast; the caller's count is restored afterwards."""
    max_memory_gb: float = 16.0
    """Refuse a config whose estimated peak memory (parameters, optimiser state, dataset,
    activations of a full batch; :meth:`RunConfig.resources`) exceeds this many GB; 0 = no limit.
    A guard against typos such as p=100000, not a measurement: raise it for large models."""
    max_disk_gb: float = 64.0
    """Refuse a config whose run folder (checkpoints, metrics rows, resume state) would exceed
    this many GB; 0 = no limit."""

    def __post_init__(self) -> None:
        check_types(self)
        if self.steps < 1:
            _fail("train", "steps", f"must be >= 1, got {self.steps}")
        _check_seed("train", self.seed)
        if not 0 <= self.threads <= MAX_THREADS:
            _fail("train", "threads", f"must be in [0, {MAX_THREADS}] (0 = automatic), got {self.threads}")
        for name in ("eval_every", "checkpoint_every", "resume_every"):
            if getattr(self, name) < 1:
                _fail("train", name, f"must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.log_checkpoints <= MAX_LOG_CHECKPOINTS:
            _fail("train", "log_checkpoints", f"must be in [0, {MAX_LOG_CHECKPOINTS:,}], got {self.log_checkpoints}")
        for name in ("max_memory_gb", "max_disk_gb"):
            v = getattr(self, name)
            if not (v >= 0 and math.isfinite(v)):
                _fail("train", name, f"must be finite and >= 0 (0 = no limit), got {v}")

    def _log_steps(self) -> set[int]:
        steps = set()
        if self.log_checkpoints:
            top = math.log(max(self.checkpoint_every * 10, 2))
            for i in range(self.log_checkpoints):
                s = int(round(math.exp(top * (i + 1) / self.log_checkpoints)))
                if s <= self.steps:
                    steps.add(s)
        return steps

    @property
    def n_checkpoints(self) -> int:
        """How many checkpoints :meth:`checkpoint_steps` names, counted without listing them
        (validation must not materialise ``range(steps)`` for a hostile ``steps=1e12``)."""
        extra = {s for s in self._log_steps() | {self.steps} if s % self.checkpoint_every}
        return self.steps // self.checkpoint_every + 1 + len(extra)

    def checkpoint_steps(self) -> list[int]:
        """Steps at which parameters are saved: 0, log-spaced early steps, every N, and the last.

        A list of :attr:`n_checkpoints` steps, which :class:`RunConfig` bounds through
        ``max_disk_gb`` before anything calls this."""
        extra = sorted(s for s in self._log_steps() | {self.steps} if s % self.checkpoint_every)
        return list(heapq.merge(range(0, self.steps + 1, self.checkpoint_every), extra))


SECTIONS: dict[str, type] = {
    "task": TaskConfig,
    "model": ModelConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
}
_SECTION_NAMES = {cls.__name__: name for name, cls in SECTIONS.items()}

# which input formats each model family reads
_MODEL_FORMATS = {
    "mlp": ("pairs",),
    "cossin_mlp": ("pairs",),
    "transformer": ("equals", "sequence", "pairs"),
    "rnn": ("sequence", "equals"),
    "lstm": ("sequence", "equals"),
}


@dataclass(frozen=True)
class RunConfig:
    """Everything needed to reproduce a run. ``name`` is the preset (or a user label)."""

    name: str = "run"
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        kind = self.model.kind
        if self.task.kind == "parity":
            if kind != "parity_mlp":
                raise ConfigError(f"model.kind: task 'parity' needs 'parity_mlp', got {kind!r}")
        else:
            if kind == "parity_mlp":
                raise ConfigError("model.kind: 'parity_mlp' needs task.kind 'parity'")
            if self.task.kind in ("group", "custom") and kind not in ("mlp", "transformer"):
                raise ConfigError(f"model.kind: {self.task.kind} tasks need 'mlp' or 'transformer', got {kind!r}")
            if self.task.kind == "group" and kind == "mlp" and self.model.tied_embed:
                # the MLP reads a and b through separate token rows (a non-abelian table is not
                # symmetric), so W_E^T would have 2 |G| outputs
                raise ConfigError("model.tied_embed: group tasks need an untied unembedding")
            if self.task.format not in _MODEL_FORMATS[kind]:
                raise ConfigError(
                    f"task.format: model {kind!r} reads {' or '.join(_MODEL_FORMATS[kind])}, got {self.task.format!r}"
                )
            if kind == "cossin_mlp" and self.model.frequency > self.task.p // 2:
                raise ConfigError(f"model.frequency: must be in [1, {self.task.p // 2}] for p={self.task.p}")
        # after the format check, so a preset switched to another model kind hears about that first
        if kind != "transformer" and (self.model.attn_rate != 1.0 or self.model.act_fn != "relu"):
            raise ConfigError(f"model.attn_rate / model.act_fn: apply to the transformer, not {kind!r}")
        if self.model.init == "pair" and kind not in ("mlp", "cossin_mlp", "parity_mlp"):
            raise ConfigError(f"model.init: 'pair' (haiku's initialisers) applies to the MLP families, not {kind!r}")
        if self.optim.loss == "stablemax" and kind == "parity_mlp" and self.model.n_out == 1:
            raise ConfigError("optim.loss: 'stablemax' needs several logits; model.n_out=1 is a BCE logit")
        if self.optim.batch_size and self.optim.batch_size > 10**9:
            raise ConfigError("optim.batch_size: too large")
        _check_name(self.name)
        self._check_resources()

    # -- size ----------------------------------------------------------------------------------
    def resources(self) -> dict[str, float]:
        """A rough, generous estimate of what training this config takes, computed from the
        sizes alone (nothing is allocated): ``params`` (count), ``memory_bytes`` (peak: parameters,
        gradients, AdamW and Grokfast state, the dataset, a batch's activations forward and
        backward), ``checkpoints`` (count), ``disk_bytes`` (checkpoints, one metrics row per
        step, resume state) and ``examples`` (dataset rows)."""
        t, m, o, tr = self.task, self.model, self.optim, self.train
        d, h = m.d_model, m.d_mlp
        if t.kind == "parity":
            n_in = t.n_bits + 1  # the bias column
            params = n_in * h + h * m.n_out + h + m.n_out
            per_example = n_in + 3 * h + 2 * m.n_out  # activations (floats) of one example
            n_train, n_test = t.n_train, t.n_test
            # int64 bits; generation draws ~2x the strings and torch.unique copies them
            data = (n_train + n_test) * t.n_bits * 8 * 4
        else:
            p = t.p
            n_ctx = {"pairs": 2, "equals": 3, "sequence": 6}[t.format]
            vocab = 2 * p if t.kind == "group" else p + 8
            if m.kind == "mlp":
                params = vocab * d + 2 * d * h + h + d + d * p
                per_example = n_ctx * d + 3 * h + 2 * p
            elif m.kind == "cossin_mlp":
                params = 4 * h + h * p + h + p
                per_example = 4 + 3 * h + 2 * p
            elif m.kind == "transformer":
                params = vocab * d + n_ctx * d + 4 * m.n_heads * d * m.d_head + 2 * d * h + h + d + d * p
                per_example = n_ctx * (4 * d + m.n_heads * (3 * m.d_head + n_ctx)) + 3 * h + 2 * p
            else:  # rnn / lstm
                gates = 4 if m.kind == "lstm" else 1
                params = vocab * d + gates * (2 * d * d + 2 * d) + d * p + p
                per_example = n_ctx * (gates + 2) * d + 2 * p
            n_train = max(1, round(t.n_examples * t.train_fraction))
            n_test = t.n_examples - n_train
            data = t.n_examples * (n_ctx + 3) * 8 * 2  # inputs, labels, operands; table + split
        width = 8 if getattr(m, "dtype", "float32") == "float64" else 4
        batch = o.batch_size if 0 < o.batch_size < n_train else n_train
        # parameters, gradients, two AdamW moments, Grokfast EMA, a checkpoint copy
        state = params * width * 6
        # backward keeps the forward activations and builds as many gradients; evaluation runs
        # the test set (and the train set) without them
        activations = max(3 * batch, n_test, n_train) * per_example * width
        n_ckpt = tr.n_checkpoints
        disk = n_ckpt * params * width + tr.steps * 160 + 4 * params * width
        return {
            "params": params,
            "memory_bytes": state + data + activations,
            "checkpoints": n_ckpt,
            "disk_bytes": disk,
            "examples": n_train + n_test,
        }

    def _check_resources(self) -> None:
        r = self.resources()
        tr = self.train
        if tr.max_memory_gb and r["memory_bytes"] > tr.max_memory_gb * 1e9:
            raise ConfigError(
                f"train.max_memory_gb: training this config needs ~{_gb(r['memory_bytes'])} "
                f"({r['params']:,} parameters, {r['examples']:,} examples), over the limit of "
                f"{tr.max_memory_gb:g} GB; shrink the model / data or raise train.max_memory_gb"
            )
        if tr.max_disk_gb and r["disk_bytes"] > tr.max_disk_gb * 1e9:
            raise ConfigError(
                f"train.max_disk_gb: the run folder would take ~{_gb(r['disk_bytes'])} "
                f"({r['checkpoints']:,} checkpoints of {r['params']:,} parameters, metrics for "
                f"{tr.steps:,} steps), over the limit of {tr.max_disk_gb:g} GB; raise "
                f"train.checkpoint_every, lower train.steps or raise train.max_disk_gb"
            )

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"config: expected a JSON object, got {type(data).__name__}")
        unknown = set(data) - {"name", *SECTIONS}
        if unknown:
            raise ConfigError(f"config: unknown section(s) {sorted(unknown)}; allowed: name, {', '.join(SECTIONS)}")
        kwargs: dict[str, Any] = {"name": data.get("name", "run")}
        for section, section_cls in SECTIONS.items():
            values = data.get(section, {})
            if not isinstance(values, dict):
                raise ConfigError(f"{section}: expected an object, got {values!r}")
            allowed = {f.name for f in fields(section_cls)}
            bad = set(values) - allowed
            if bad:
                raise ConfigError(f"{section}.{sorted(bad)[0]}: unknown key; allowed: {', '.join(sorted(allowed))}")
            try:
                kwargs[section] = section_cls(**values)
            except TypeError as e:  # pragma: no cover - unexpected keyword already handled
                raise ConfigError(f"{section}: {e}") from None
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        return cls.from_dict(load_json_text(text, "config"))

    # -- overrides -----------------------------------------------------------------------------
    def with_overrides(self, overrides: dict[str, Any]) -> RunConfig:
        """A copy with ``{"optim.lr": 3e-3, "weight_decay": 0.1, ...}`` applied.

        Keys are ``section.field`` or a bare field name when it is unique across sections. String
        values (from a CLI) are converted to the field's type; schedules accept the
        :func:`parse_schedule` forms.
        """
        data = self.to_dict()
        for key, raw in overrides.items():
            section, name = resolve_key(key)
            if section == "name":
                data["name"] = str(raw)
                continue
            base = data[section].get("weight_decay" if name == "wd_schedule" else "l1", 0.0)
            data[section][name] = _coerce(section, name, raw, base)
        return RunConfig.from_dict(data)


def load_json_text(text: str | bytes, where: str) -> Any:
    """``json.loads`` with one-line :class:`ConfigError` s naming ``where`` (a file or 'config')
    for what a hand-edited or hostile file can hold: invalid or non-UTF-8 text, or nesting so
    deep that the decoder overflows the stack."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        return json.loads(text)
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: not a text (UTF-8) JSON file") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{where}: invalid JSON ({e.msg} at line {e.lineno})") from None
    except RecursionError:
        raise ConfigError(f"{where}: JSON nested too deeply") from None


def _gb(n: float) -> str:
    return f"{n / 1e9:,.3g} GB" if n < 1e12 else f"{n / 1e12:,.0f} TB"


def _check_name(name: Any) -> None:
    """A run's name becomes a folder (``checkpoints/NAME``) and a report title: one safe path
    component, so ``train --config`` cannot be made to write outside ``checkpoints/``."""
    if not isinstance(name, str):
        raise ConfigError(_one_line(f"name: expected a string, got {name!r}"))
    if not name.strip():
        raise ConfigError("name: must not be empty")
    if len(name) > MAX_NAME:
        raise ConfigError(f"name: at most {MAX_NAME} characters, got {len(name):,}")
    if "/" in name or "\\" in name or name in (".", "..") or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ConfigError(
            _one_line(
                f"name: must be a single folder name (no '/', '\\', control characters, '.' or '..'), got {name!r}"
            )
        )


def resolve_key(key: str) -> tuple[str, str]:
    """``"optim.lr"`` or a bare unique field name (``"lr"``) -> ``("optim", "lr")``."""
    if key == "name":
        return "name", "name"
    if "." in key:
        section, name = key.split(".", 1)
        if section not in SECTIONS:
            raise ConfigError(f"{key}: unknown section {section!r}; allowed: {', '.join(SECTIONS)}")
        if name not in {f.name for f in fields(SECTIONS[section])}:
            raise ConfigError(
                f"{key}: unknown key; {section} has {', '.join(f.name for f in fields(SECTIONS[section]))}"
            )
        return section, name
    owners = [s for s, cls in SECTIONS.items() if key in {f.name for f in fields(cls)}]
    if not owners:
        raise ConfigError(f"{key}: unknown config key (use section.key, sections: {', '.join(SECTIONS)})")
    if len(owners) > 1:
        raise ConfigError(f"{key}: ambiguous, write one of {', '.join(f'{o}.{key}' for o in owners)}")
    return owners[0], key


def _coerce(section: str, name: str, raw: Any, base: float) -> Any:
    if not isinstance(raw, str):
        return raw
    hint = _hints(SECTIONS[section])[name]
    try:
        if hint is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if hint is int:
            return int(float(raw)) if float(raw).is_integer() else int(raw)
        if hint is float:
            return float(raw)
        if name in ("wd_schedule", "l1_schedule"):
            return parse_schedule(raw, base)
        if typing.get_origin(hint) is tuple:
            items = json.loads(raw) if raw.startswith("[") else [x.strip() for x in raw.split(",") if x.strip()]
            if not isinstance(items, list):
                raise ValueError
            # "0.9,0.98" -> floats, "0,1,2" -> ints (an int field refuses "1.5"); a failure names
            # the field here instead of surfacing as float()'s bare message later
            elem = typing.get_args(hint)[0]
            if elem in (int, float):
                items = [elem(x) if isinstance(x, str) else x for x in items]
            return tuple(items)
    except (ValueError, json.JSONDecodeError, RecursionError):
        what = hint if typing.get_origin(hint) else getattr(hint, "__name__", hint)
        raise ConfigError(_one_line(f"{section}.{name}: cannot read {raw!r} as {what}")) from None
    return raw

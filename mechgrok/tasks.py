"""Datasets: modular arithmetic (as pairs or token sequences) and sparse parity.

Everything is generated from a :class:`~mechgrok.config.TaskConfig` and its seed; nothing is
downloaded. A :class:`Dataset` holds train/test inputs and labels as tensors ready for the model
family named by ``task.format``, plus the raw operands so probes can map examples back to (a, b).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from .config import ConfigError, TaskConfig

__all__ = ["Dataset", "ModularVocab", "TASK_KINDS", "load_factory", "make_dataset", "modular_table", "encode_pairs"]


@dataclass(frozen=True)
class ModularVocab:
    """Token ids for the sequence formats: numbers 0..p-1, then the symbols.

    ``equals`` format (Nanda et al.): ``a b =`` with ``=`` as token ``p`` (vocab p + 1).
    ``sequence`` format (RNN/LSTM poster): ``<sos> a OP b mod =``.
    """

    p: int

    SYMBOLS = ("=", "+", "-", "*", "/", "mod", "<sos>")

    def token(self, symbol: str) -> int:
        return self.p + self.SYMBOLS.index(symbol)

    @property
    def size(self) -> int:
        return self.p + len(self.SYMBOLS)

    def decode(self, ids: list[int]) -> str:
        return " ".join(str(i) if i < self.p else self.SYMBOLS[i - self.p] for i in ids)


_OP_SYMBOL = {"add": "+", "sub": "-", "mul": "*", "div": "/"}


def modular_table(task: TaskConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All (a, b, label) of the task's table, in row-major (a, b) order (group tasks: a * b)."""
    p = task.p
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    a, b = a.flatten(), b.flatten()
    if task.kind == "group":
        from .groups import finite_group

        return a, b, finite_group(task.group).table[a, b]
    keep = torch.ones_like(a, dtype=torch.bool)
    if task.op == "div":
        keep &= b != 0
    if task.pairs == "unordered":
        keep &= a <= b
    a, b = a[keep], b[keep]
    if task.op == "add":
        y = (a + b) % p
    elif task.op == "sub":
        y = (a - b) % p
    elif task.op == "mul":
        y = (a * b) % p
    else:
        inv = torch.tensor([pow(int(x), p - 2, p) if x else 0 for x in range(p)])
        y = (a * inv[b]) % p
    return a, b, y


def encode_pairs(a: torch.Tensor, b: torch.Tensor, task: TaskConfig) -> torch.Tensor:
    """Model inputs for operands ``a, b`` in the task's format (int64).

    Group tasks in ``pairs`` format read b as token ``p + b``: the MLP's hidden layer
    ``W_E[a] W_in + W_E[b'] W_in`` then has separate left and right embeddings (Chughtai et al.'s
    ``concat(W_x[a], W_y[b]) @ W``), which a non-commutative table needs."""
    if task.format == "pairs":
        return torch.stack([a, b + task.p if task.kind == "group" else b], dim=-1)
    vocab = ModularVocab(task.p)
    n = a.shape[0]
    if task.format == "equals":
        return torch.stack([a, b, torch.full((n,), vocab.token("="))], dim=-1)
    sym = lambda s: torch.full((n,), vocab.token(s))
    return torch.stack([sym("<sos>"), a, sym(_OP_SYMBOL[task.op]), b, sym("mod"), sym("=")], dim=-1)


@dataclass
class Dataset:
    """Train/test split of a task. ``train_x``/``test_x`` are model inputs, ``*_y`` int labels.

    For modular tasks ``train_ab``/``test_ab`` hold the operands [n, 2]; for parity they hold the
    bit strings. ``relevant_bits`` is set for parity.
    """

    task: TaskConfig
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    train_ab: torch.Tensor
    test_ab: torch.Tensor

    @property
    def relevant_bits(self) -> tuple[int, ...]:
        return self.task.relevant_bits

    def to(self, device: str | torch.device) -> Dataset:
        moved = {
            k: getattr(self, k).to(device) for k in ("train_x", "train_y", "test_x", "test_y", "train_ab", "test_ab")
        }
        return Dataset(task=self.task, **moved)

    def all_inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Modular: inputs for every ordered pair (a, b) in row-major order, plus a and b.

        Probes use this grid for 2D Fourier transforms regardless of which pairs were trained on.
        """
        if self.task.kind not in ("modular", "group"):
            raise ValueError("all_inputs: only modular and group tasks have a full input table")
        p = self.task.p
        a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
        a, b = a.flatten(), b.flatten()
        return encode_pairs(a, b, self.task).to(self.train_x.device), a, b


def _parity_labels(bits: torch.Tensor, relevant: tuple[int, ...]) -> torch.Tensor:
    return bits[:, list(relevant)].sum(dim=1) % 2


def _unique_random_strings(n: int, n_bits: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` distinct random bit strings (int64 [n, n_bits])."""
    if n_bits <= 20:
        codes = torch.randperm(2**n_bits, generator=gen)[:n]
        shifts = torch.arange(n_bits)
        return (codes[:, None] >> shifts) & 1
    out = torch.empty(0, n_bits, dtype=torch.int64)
    while out.shape[0] < n:
        draw = torch.randint(0, 2, (2 * (n - out.shape[0]) + 16, n_bits), generator=gen)
        out = torch.unique(torch.cat([out, draw]), dim=0, sorted=False)
    # torch.unique reorders; reshuffle deterministically and cut
    return out[torch.randperm(out.shape[0], generator=gen)[:n]]


def make_dataset(task: TaskConfig) -> Dataset:
    """Generate the task's data deterministically from ``task.seed`` (the builder of its kind in
    :data:`TASK_KINDS`)."""
    return TASK_KINDS[task.kind](task)


def _table_dataset(task: TaskConfig) -> Dataset:
    """Modular and group tasks: the whole table, split by ``task.split``."""
    gen = torch.Generator().manual_seed(task.seed)
    a, b, y = modular_table(task)
    n = a.shape[0]
    if task.split == "numpy":
        # PAIR's notebooks: np.random.seed(seed); np.random.permutation(n); int(frac * n).
        # RandomState(seed) is the generator np.random.seed re-seeds, so the order is theirs.
        perm = torch.from_numpy(np.random.RandomState(task.seed).permutation(n))
        n_train = max(1, int(task.train_fraction * n))
    else:
        perm = torch.randperm(n, generator=gen)
        n_train = max(1, int(round(task.train_fraction * n)))
    tr, te = perm[:n_train], perm[n_train:]
    x = encode_pairs(a, b, task)
    ab = torch.stack([a, b], dim=-1)
    return Dataset(task, x[tr], y[tr], x[te], y[te], ab[tr], ab[te])


def _parity_dataset(task: TaskConfig) -> Dataset:
    gen = torch.Generator().manual_seed(task.seed)
    strings = _unique_random_strings(task.n_train + task.n_test, task.n_bits, gen)
    train, test = strings[: task.n_train], strings[task.n_train :]
    return Dataset(
        task,
        train.float(),
        _parity_labels(train, task.relevant_bits),
        test.float(),
        _parity_labels(test, task.relevant_bits),
        train,
        test,
    )


def load_factory(spec: str):
    """The function ``"package.module:function"`` names (a custom task's ``task.factory``)."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # the user's module may fail in any way while importing
        first_line = str(e).splitlines()[0] if str(e) else ""
        message = f"task.factory: cannot import {module_name!r} ({type(e).__name__}: {first_line})"
        raise ConfigError(message[:300]) from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"task.factory: {module_name!r} has no function {attr!r}")
    return fn


def _custom_dataset(task: TaskConfig) -> Dataset:
    """A user task: ``task.factory(task)``, checked so that a wrong shape or label fails here with
    one line naming the factory rather than deep inside training."""
    made = load_factory(task.factory)(task)
    where = f"task.factory: {task.factory}"
    if isinstance(made, Dataset):
        parts = {k: getattr(made, k) for k in ("train_x", "train_y", "test_x", "test_y", "train_ab", "test_ab")}
    elif isinstance(made, Mapping):
        parts = dict(made)
    else:
        raise ConfigError(f"{where} returned {type(made).__name__}, expected a Dataset or a mapping of tensors")
    n_ctx = 2 if task.format == "pairs" else 3
    for split in ("train", "test"):
        x, y = parts.get(f"{split}_x"), parts.get(f"{split}_y")
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise ConfigError(f"{where} returned no {split}_x / {split}_y tensors")
        if x.dtype != torch.int64 or y.dtype != torch.int64:
            raise ConfigError(f"{where}: {split}_x and {split}_y must be int64 tokens / labels")
        if x.ndim != 2 or x.shape[1] != n_ctx or y.shape != (x.shape[0],):
            raise ConfigError(
                f"{where}: {split}_x must be [n, {n_ctx}] ({task.format}) with {split}_y [n], "
                f"got {list(x.shape)} and {list(y.shape)}"
            )
        for name, t in ((f"{split}_x", x), (f"{split}_y", y)):
            if t.numel() and (int(t.min()) < 0 or int(t.max()) >= task.p):
                raise ConfigError(f"{where}: {name} holds values outside [0, {task.p - 1}] (task.p = {task.p})")
        parts.setdefault(f"{split}_ab", x[:, :2])
    if parts["train_x"].shape[0] < 1:
        raise ConfigError(f"{where} returned no training example")
    return Dataset(task, *(parts[k] for k in ("train_x", "train_y", "test_x", "test_y", "train_ab", "test_ab")))


TASK_KINDS: dict[str, Callable[[TaskConfig], Dataset]] = {
    "modular": _table_dataset,
    "group": _table_dataset,
    "parity": _parity_dataset,
    "custom": _custom_dataset,
}
"""The task registry: ``task.kind`` -> the function building its :class:`Dataset`. User tasks do
not register here: ``kind="custom"`` names its factory in the config (``task.factory``), so a
config stays plain JSON and reproduces the data in any process."""

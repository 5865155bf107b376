"""The datasets of a pool's members and the per-chunk input tensors the batched model reads."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..config import RunConfig
from ..tasks import Dataset, make_dataset
from ._kernels import BatchedModel

__all__ = ["DataBank"]


@dataclass
class _Data:
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    prepared: dict[str, torch.Tensor] = field(default_factory=dict)

    def n(self, split: str) -> int:
        return int((self.train_y if split == "train" else self.test_y).shape[0])


class DataBank:
    """The distinct datasets of the members of a batch, and per-chunk input tensors: shared
    ``[n, ...]`` when every member of the chunk trains on the same set, else stacked ``[c, n_max,
    ...]`` with a mask (padding rows carry no loss)."""

    def __init__(self, model: BatchedModel, device: torch.device):
        self.model = model
        self.device = device
        self.sets: list[_Data] = []
        self.index: dict[str, int] = {}
        self.cache: dict[tuple, tuple] = {}

    def add(self, config: RunConfig, data: Dataset | None) -> int:
        key = json.dumps(config.task.__dict__, sort_keys=True, default=list) if data is None else f"id{id(data)}"
        if key not in self.index:
            data = data if data is not None else make_dataset(config.task)
            d = data.to(self.device)
            self.index[key] = len(self.sets)
            self.sets.append(_Data(d.train_x, d.train_y, d.test_x, d.test_y))
        return self.index[key]

    def clear_cache(self) -> None:
        self.cache.clear()

    def full(
        self, split: str, ids: Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, bool]:
        """Inputs, labels, mask, counts and the shared flag for the whole ``split`` of each member."""
        key = (split, tuple(ids))
        if key in self.cache:
            return self.cache[key]
        c = len(ids)
        first = self.sets[ids[0]]
        if all(i == ids[0] for i in ids):
            if split not in first.prepared:
                first.prepared[split] = self.model.prepare(first.train_x if split == "train" else first.test_x)
            n = first.n(split)
            y = (first.train_y if split == "train" else first.test_y).expand(c, n)
            out = (first.prepared[split], y, None, torch.full((c,), n, device=self.device), True)
        else:
            sets = [self.sets[i] for i in ids]
            ns = [s.n(split) for s in sets]
            n_max = max(ns)
            xs, ys = [], []
            for s, n in zip(sets, ns):
                x = s.train_x if split == "train" else s.test_x
                y = s.train_y if split == "train" else s.test_y
                pad = n_max - n
                xs.append(torch.cat([x, x.new_zeros((pad,) + tuple(x.shape[1:]))]) if pad else x)
                ys.append(torch.cat([y, y.new_zeros(pad)]) if pad else y)
            counts = torch.tensor(ns, device=self.device)
            mask = torch.arange(n_max, device=self.device)[None, :] < counts[:, None]
            out = (self.model.prepare(torch.stack(xs)), torch.stack(ys), mask, counts, False)
        if len(self.cache) < 256:
            self.cache[key] = out
        return out

    def minibatch(self, ids: Sequence[int], idx: list[torch.Tensor]) -> tuple:
        xs = [self.sets[i].train_x[j] for i, j in zip(ids, idx)]
        ys = [self.sets[i].train_y[j] for i, j in zip(ids, idx)]
        counts = torch.full((len(ids),), int(idx[0].shape[0]), device=self.device)
        return self.model.prepare(torch.stack(xs)), torch.stack(ys), None, counts, False

"""The stacked state of a pool's rows: parameters, AdamW moments and (with Grokfast) the EMA, each a
``{name: [rows, *shape]}`` table with the single model's ``state_dict`` names. Every table has the
same rows in the same order; rows are added, dropped and reordered in all of them at once."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["Rows", "TABLES"]

TABLES = ("param", "exp_avg", "exp_avg_sq", "ema")
"""Table names: parameters, AdamW's first and second moments, the Grokfast EMA."""


class Rows:
    """Tables of stacked per-row tensors that move together (``tables`` is a subset of
    :data:`TABLES`, e.g. without ``ema`` when Grokfast is off)."""

    def __init__(self, names: Sequence[str], tables: Sequence[str], device: torch.device):
        self.names = list(names)
        self.device = device
        self.tables: dict[str, dict[str, torch.Tensor]] = {t: {} for t in tables}

    def __len__(self) -> int:
        first = next(iter(self.tables.values()))
        return int(first[self.names[0]].shape[0]) if first else 0

    def __getitem__(self, table: str) -> dict[str, torch.Tensor]:
        return self.tables[table]

    def __contains__(self, table: str) -> bool:
        return table in self.tables

    def cat(self, new: dict[str, list[dict[str, torch.Tensor]]]) -> None:
        """Append rows: ``new[table]`` holds one ``{name: tensor}`` per new row, for every table."""
        for table, rows in new.items():
            add = {k: torch.stack([r[k] for r in rows]).to(self.device) for k in self.names}
            old = self.tables[table]
            self.tables[table] = add if not old else {k: torch.cat([old[k], add[k]]) for k in self.names}

    def select(self, rows: list[int]) -> None:
        """Keep ``rows``, in this order (drops the others; reorders)."""
        if not rows:
            self.tables = {t: {} for t in self.tables}
            return
        idx = torch.tensor(rows, device=self.device)
        for t, table in self.tables.items():
            self.tables[t] = {k: v.index_select(0, idx) for k, v in table.items()}

    def take(self, table: str, rows: list[int]) -> dict[str, torch.Tensor]:
        """``rows`` of one table: views when they are consecutive, else copies."""
        tensors = self.tables[table]
        if rows == list(range(rows[0], rows[-1] + 1)):
            return {k: v[rows[0] : rows[-1] + 1] for k, v in tensors.items()}
        idx = torch.tensor(rows, device=self.device)
        return {k: v.index_select(0, idx) for k, v in tensors.items()}

    def slices(self, table: str, s0: int, s1: int) -> list[torch.Tensor]:
        """Rows ``s0:s1`` of one table as views, in ``names`` order (edited in place by the optimiser)."""
        return [self.tables[table][k][s0:s1] for k in self.names]

    def row(self, table: str, r: int) -> dict[str, torch.Tensor]:
        """Row ``r`` of one table, copied to the CPU (for writing)."""
        return {k: v[r].detach().to("cpu", copy=True) for k, v in self.tables[table].items()}

    def row_bytes(self, table: str = "param") -> int:
        """Bytes of one row of one table."""
        return sum(v[0].numel() * v.element_size() for v in self.tables[table].values())

    def snapshot(self, rows: list[int]) -> dict[str, dict[str, torch.Tensor]]:
        """Copies of ``rows`` of every table (for :meth:`restore`)."""
        idx = torch.tensor(rows, device=self.device)
        return {t: {k: v.index_select(0, idx) for k, v in table.items()} for t, table in self.tables.items()}

    def restore(self, rows: list[int], snapshot: dict[str, dict[str, torch.Tensor]]) -> None:
        """Write a :meth:`snapshot` of ``rows`` back, in place."""
        idx = torch.tensor(rows, device=self.device)
        for t, table in self.tables.items():
            for k, v in table.items():
                v.index_copy_(0, idx, snapshot[t][k])

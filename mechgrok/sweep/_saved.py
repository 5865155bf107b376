"""A pool's resume state in a sweep's state folder: every row's parameters, moments, EMA, generator
and step, written by :func:`save_pool_state` and found again, member by member, by
:class:`SavedStates`.

``NAME.json`` (members, steps, flags) is the commit point; it names ``NAME.<gen>.safetensors``,
written first, so a kill leaves either the previous state or the new one, never a mix.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..store import StoreError, atomic_save_tensors, atomic_write_json
from ._rows import Rows

__all__ = ["SavedStates", "save_pool_state"]


def save_pool_state(state_dir: Path, name: str, gen: int, rows: Rows, slots: Sequence[Any]) -> None:
    """Write generation ``gen`` of pool ``name``'s state (``slots``: the rows' members, in order)
    and remove older generations."""
    tensors: dict[str, torch.Tensor] = {}
    for k in rows.names:
        tensors[f"param.{k}"] = rows["param"][k]
        tensors[f"opt.{k}.exp_avg"] = rows["exp_avg"][k]
        tensors[f"opt.{k}.exp_avg_sq"] = rows["exp_avg_sq"][k]
        if "ema" in rows:
            tensors[f"ema.{k}"] = rows["ema"][k]
    tensors["rng"] = torch.stack([s.gen.get_state() for s in slots])
    file = f"{name}.{gen}.safetensors"
    atomic_save_tensors(state_dir / file, tensors)
    meta = {
        "tensors": file,
        "members": [s.key for s in slots],
        "steps": [s.step for s in slots],
        "fresh": [s.fresh for s in slots],
        "streak": [s.streak for s in slots],
        "has_ema": "ema" in rows,
    }
    atomic_write_json(state_dir / f"{name}.json", meta)  # the commit point
    for old in state_dir.glob(f"{name}.*.safetensors"):
        if old.name != file:
            old.unlink(missing_ok=True)


class SavedStates:
    """Pool resume states found in a sweep's state folder, by member key (the latest step wins)."""

    def __init__(self, state_dir: Path):
        self.state_dir = state_dir
        self.where: dict[int, tuple[Path, int, int]] = {}
        self.loaded: dict[Path, dict[str, torch.Tensor]] = {}
        for meta_path in sorted(state_dir.glob("*.json")):
            try:
                meta = json.loads(meta_path.read_text())
                tensors = state_dir / meta["tensors"]
                for row, (key, step) in enumerate(zip(meta["members"], meta["steps"])):
                    if key not in self.where or step > self.where[key][2]:
                        self.where[int(key)] = (meta_path, row, int(step))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise StoreError(f"{meta_path}: unreadable sweep resume state ({e})") from None
            if not tensors.exists():
                raise StoreError(f"{tensors}: missing sweep resume state named by {meta_path.name}")

    def get(self, key: int):
        """(step, params, exp_avg, exp_avg_sq, ema or None, rng state, extra) or None."""
        if key not in self.where:
            return None
        meta_path, row, step = self.where[key]
        meta = json.loads(meta_path.read_text())
        path = self.state_dir / meta["tensors"]
        if path not in self.loaded:
            from safetensors.torch import load_file

            try:
                self.loaded = {path: load_file(path)}  # keep one file in memory at a time
            except Exception as e:
                raise StoreError(f"{path}: unreadable sweep resume state ({e})") from None
        t = self.loaded[path]
        names = [k[6:] for k in t if k.startswith("param.")]
        params = {n: t[f"param.{n}"][row].clone() for n in names}
        m = {n: t[f"opt.{n}.exp_avg"][row].clone() for n in names}
        v = {n: t[f"opt.{n}.exp_avg_sq"][row].clone() for n in names}
        ema = {n: t[f"ema.{n}"][row].clone() for n in names} if meta.get("has_ema") else None
        extra = {"fresh": bool(meta["fresh"][row]), "streak": meta["streak"][row]}
        return step, params, m, v, ema, t["rng"][row].clone(), extra

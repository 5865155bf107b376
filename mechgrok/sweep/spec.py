"""What a sweep trains: a base config, grid axes and seeds.

Members are the product of the grid axes (in the order given, the last axis varying fastest)
times ``seeds`` model seeds (``train.seed = seed_start + k``, fastest of all). Axis values are
stored explicitly, so a sweep folder names every member's config without re-parsing ranges.

Axis text (CLI ``--grid``)::

    weight_decay=0.01,0.1,1          explicit values ('|' separates values that contain commas)
    weight_decay=log:0.01:1:10       10 log-spaced values from 0.01 to 1 (inclusive)
    train_fraction=lin:0.2:0.8:7     7 evenly spaced values
    d_mlp=log:8:256:6                integer fields are rounded and de-duplicated
    wd_schedule=constant|on@2000     schedules in the forms of :func:`mechgrok.config.parse_schedule`
"""

from __future__ import annotations

import json
import math
import typing
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from ..config import SECTIONS, ConfigError, RunConfig, resolve_key

__all__ = ["SweepSpec", "parse_axis", "log_range", "lin_range", "column_name"]


def log_range(lo: float, hi: float, n: int) -> list[float]:
    """``n`` log-spaced values from ``lo`` to ``hi`` inclusive (rounded to 6 significant digits)."""
    if n < 1 or lo <= 0 or hi <= 0:
        raise ConfigError(f"log range: needs n >= 1 and positive bounds, got {lo}:{hi}:{n}")
    vals = [lo] if n == 1 else np.exp(np.linspace(math.log(lo), math.log(hi), n)).tolist()
    return [float(f"{v:.6g}") for v in vals]


def lin_range(lo: float, hi: float, n: int) -> list[float]:
    """``n`` evenly spaced values from ``lo`` to ``hi`` inclusive (rounded to 6 significant digits)."""
    if n < 1:
        raise ConfigError(f"lin range: needs n >= 1, got {lo}:{hi}:{n}")
    vals = [lo] if n == 1 else np.linspace(lo, hi, n).tolist()
    return [float(f"{v:.6g}") for v in vals]


def _field_type(section: str, name: str) -> Any:
    return typing.get_type_hints(SECTIONS[section])[name]


def _canonical(key: str) -> tuple[str, str, str]:
    """``(section.name, section, name)`` for a ``--grid`` / ``--set`` key."""
    section, name = resolve_key(key)
    if section == "name":
        raise ConfigError("grid: 'name' is a label, not a hyperparameter")
    return f"{section}.{name}", section, name


def parse_axis(text: str, base: RunConfig | None = None) -> tuple[str, tuple[Any, ...]]:
    """``"weight_decay=log:0.01:1:10"`` -> ``("optim.weight_decay", (0.01, ...))`` (see module doc).

    Values are converted to the field's type and checked against ``base`` (default: the default
    config) so a bad value fails here with the field's own message.
    """
    if "=" not in text:
        raise ConfigError(f"--grid {text!r}: expected key=values, e.g. weight_decay=log:0.01:1:10")
    key, spec = (s.strip() for s in text.split("=", 1))
    full, section, name = _canonical(key)
    hint = _field_type(section, name)
    if not spec:
        raise ConfigError(f"--grid {text!r}: no values")
    values: list[Any]
    if spec.startswith(("log:", "lin:")):
        try:
            kind, lo, hi, n = spec.split(":")
            lo_f, hi_f, n_i = float(lo), float(hi), int(n)
        except ValueError:
            raise ConfigError(f"--grid {text!r}: ranges are log:LOW:HIGH:COUNT or lin:LOW:HIGH:COUNT") from None
        if hint not in (int, float):
            raise ConfigError(f"--grid {text!r}: {full} is not numeric; list its values instead")
        values = (log_range if kind == "log" else lin_range)(lo_f, hi_f, n_i)
        if hint is int:
            values = list(dict.fromkeys(int(round(v)) for v in values))
    else:
        parts = spec.split("|") if "|" in spec else spec.split(",")
        values = [p.strip() for p in parts if p.strip()]
    base = base or RunConfig()
    out = []
    for v in values:
        cfg = base.with_overrides({full: v})  # coerces strings, validates
        out.append(_plain(getattr(getattr(cfg, section), name)))
    if len(set(map(json.dumps, out))) != len(out):
        raise ConfigError(f"--grid {text!r}: repeated values")
    return full, tuple(out)


def _plain(value: Any) -> Any:
    """JSON-plain form of a config value (tuples -> lists)."""
    return json.loads(json.dumps(value))


def column_name(key: str) -> str:
    """Results-table column for a config key: the bare field name when it names one field
    (``optim.weight_decay`` -> ``weight_decay``), ``train.seed`` -> ``seed``, else the full key."""
    if key == "train.seed":
        return "seed"
    section, name = key.split(".", 1)
    owners = [s for s, cls in SECTIONS.items() if name in {f.name for f in fields(cls)}]
    return name if owners == [section] else key


@dataclass(frozen=True)
class SweepSpec:
    """What a sweep trains. Members = product of ``grid`` axes x ``seeds`` model seeds."""

    base: RunConfig
    """The config every member starts from (a preset with overrides)."""
    grid: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    """Axes ``(section.field, values)``; build them with :func:`parse_axis` or by hand."""
    seeds: int = 1
    """Model seeds per grid point (``train.seed = seed_start .. seed_start + seeds - 1``)."""
    seed_start: int = 0
    """First model seed."""

    def __post_init__(self) -> None:
        if not isinstance(self.base, RunConfig):
            raise ConfigError(f"sweep.base: expected a RunConfig, got {type(self.base).__name__}")
        if not isinstance(self.seeds, int) or self.seeds < 1:
            raise ConfigError(f"sweep.seeds: must be an integer >= 1, got {self.seeds!r}")
        if not isinstance(self.seed_start, int) or self.seed_start < 0:
            raise ConfigError(f"sweep.seed_start: must be an integer >= 0, got {self.seed_start!r}")
        axes = []
        seen = set()
        for axis in self.grid:
            try:
                key, values = axis
            except (TypeError, ValueError):
                raise ConfigError(f"sweep.grid: axes are (key, values) pairs, got {axis!r}") from None
            full, _, _ = _canonical(key)
            if full in seen:
                raise ConfigError(f"sweep.grid: axis {full} given twice")
            if full == "train.seed" and self.seeds > 1:
                raise ConfigError("sweep.grid: use either a train.seed axis or seeds > 1, not both")
            values = tuple(_plain(v) for v in values)
            if not values:
                raise ConfigError(f"sweep.grid: axis {full} has no values")
            seen.add(full)
            axes.append((full, values))
        object.__setattr__(self, "grid", tuple(axes))
        self.config(0)  # validates the first member's config early

    @property
    def size(self) -> int:
        return math.prod(len(v) for _, v in self.grid) * self.seeds

    def point(self, index: int) -> dict[str, Any]:
        """The swept values of member ``index`` (including ``train.seed`` when seeds vary)."""
        if not 0 <= index < self.size:
            raise IndexError(f"member {index} out of range (sweep has {self.size})")
        index, k = divmod(index, self.seeds)
        values: dict[str, Any] = {}
        for key, vals in reversed(self.grid):
            index, i = divmod(index, len(vals))
            values[key] = vals[i]
        values = dict(reversed(list(values.items())))
        if not any(key == "train.seed" for key, _ in self.grid):
            values["train.seed"] = self.seed_start + k
        return values

    def config(self, index: int) -> RunConfig:
        return self.base.with_overrides(self.point(index))

    def points(self) -> list[dict[str, Any]]:
        return [self.point(i) for i in range(self.size)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "base": self.base.to_dict(),
            "grid": [[k, list(v)] for k, v in self.grid],
            "seeds": self.seeds,
            "seed_start": self.seed_start,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SweepSpec":
        try:
            return cls(
                base=RunConfig.from_dict(data["base"]),
                grid=tuple((k, tuple(v)) for k, v in data.get("grid", [])),
                seeds=int(data.get("seeds", 1)),
                seed_start=int(data.get("seed_start", 0)),
            )
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(f"sweep spec: unreadable ({e})") from None

    @classmethod
    def from_cli(cls, base: RunConfig, axes: list[str], seeds: int = 1, seed_start: int = 0) -> "SweepSpec":
        """From ``--grid`` texts (see :func:`parse_axis`)."""
        return cls(base=base, grid=tuple(parse_axis(a, base) for a in axes), seeds=seeds, seed_start=seed_start)

    def describe(self) -> str:
        axes = ", ".join(f"{column_name(k)} x{len(v)}" for k, v in self.grid) or "no grid"
        return f"{self.size:,} models of {self.base.name}: {axes}, {self.seeds} seed(s)"


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

import itertools
import json
import math
import typing
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from ..config import SECTIONS, ConfigError, RunConfig, resolve_key

__all__ = ["SweepSpec", "parse_axis", "log_range", "lin_range", "column_name", "MAX_MEMBERS"]

MAX_MEMBERS = 100_000
"""Default limit on a sweep's members (``SweepSpec.max_members``, CLI ``--max-members``)."""
_STORED = 1 << 62  # the limit for a spec read back from sweep.json (checked when it was created)


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


def parse_axis(text: str, base: RunConfig | None = None, max_values: int | None = None) -> tuple[str, tuple[Any, ...]]:
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
        limit = MAX_MEMBERS if max_values is None else max_values
        if n_i > limit:  # before generating and validating each value
            raise ConfigError(
                f"--grid {text!r}: {n_i:,} values, over the limit of {limit:,} members (raise --max-members)"
            )
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
    max_members: int = field(default=MAX_MEMBERS, compare=False)
    """Refuse a spec with more members than this (CLI ``--max-members``): a typo in a range
    (``log:0.001:1:1000000``) should fail at once, not after minutes of validation. A guard for
    new specs, not part of what a sweep trains: not stored in ``sweep.json`` (a stored spec was
    checked when it was created) and not compared."""

    def __post_init__(self) -> None:
        if not isinstance(self.base, RunConfig):
            raise ConfigError(f"sweep.base: expected a RunConfig, got {type(self.base).__name__}")
        if not isinstance(self.seeds, int) or self.seeds < 1:
            raise ConfigError(f"sweep.seeds: must be an integer >= 1, got {self.seeds!r}")
        if not isinstance(self.seed_start, int) or self.seed_start < 0:
            raise ConfigError(f"sweep.seed_start: must be an integer >= 0, got {self.seed_start!r}")
        if not isinstance(self.max_members, int) or self.max_members < 1:
            raise ConfigError(f"sweep.max_members: must be an integer >= 1, got {self.max_members!r}")
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
        self.validate()

    def validate(self) -> None:
        """Check every member before anything is written: the member count against
        ``max_members``, each member's config (a bad combination in member 517 must not surface
        after ``sweep.json`` exists) and the folder's size against ``base.train.max_disk_gb``.

        Members of one grid point differ only in ``train.seed``, so each grid point is built once
        with its largest seed (the only seed that can be out of range)."""
        size = self.size
        if size > self.max_members:
            raise ConfigError(
                f"sweep: {size:,} members ({self.describe_axes()}), over the limit of {self.max_members:,}; "
                f"shrink the grid or raise --max-members"
            )
        keys = [k for k, _ in self.grid]
        seed_axis = "train.seed" in keys
        last_seed = {} if seed_axis else {"train.seed": self.seed_start + self.seeds - 1}
        disk = 0.0
        for g, combo in enumerate(itertools.product(*(v for _, v in self.grid))):
            values = dict(zip(keys, combo))
            try:
                cfg = self.base.with_overrides({**values, **last_seed})
            except ConfigError as e:
                where = ", ".join(f"{column_name(k)}={json.dumps(v)}" for k, v in values.items())
                raise ConfigError(f"sweep member {g * self.seeds}{f' ({where})' if where else ''}: {e}") from None
            disk += cfg.resources()["disk_bytes"] * self.seeds
        limit = self.base.train.max_disk_gb
        if limit and disk > limit * 1e9:
            raise ConfigError(
                f"train.max_disk_gb: the sweep's {size:,} member folders would take ~{disk / 1e9:,.3g} GB, over "
                f"the limit of {limit:g} GB; shrink the grid, raise train.checkpoint_every or raise train.max_disk_gb"
            )

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
    def from_dict(cls, data: dict[str, Any]) -> SweepSpec:
        try:
            return cls(
                base=RunConfig.from_dict(data["base"]),
                grid=tuple((k, tuple(v)) for k, v in data.get("grid", [])),
                seeds=int(data.get("seeds", 1)),
                seed_start=int(data.get("seed_start", 0)),
                max_members=_STORED,
            )
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(f"sweep spec: unreadable ({e})") from None

    @classmethod
    def from_cli(
        cls, base: RunConfig, axes: list[str], seeds: int = 1, seed_start: int = 0, max_members: int = MAX_MEMBERS
    ) -> SweepSpec:
        """From ``--grid`` texts (see :func:`parse_axis`)."""
        return cls(
            base=base,
            grid=tuple(parse_axis(a, base, max_members) for a in axes),
            seeds=seeds,
            seed_start=seed_start,
            max_members=max_members,
        )

    def describe_axes(self) -> str:
        axes = ", ".join(f"{column_name(k)} x{len(v)}" for k, v in self.grid) or "no grid"
        return f"{axes}, {self.seeds} seed(s)"

    def describe(self) -> str:
        return f"{self.size:,} models of {self.base.name}: {self.describe_axes()}"

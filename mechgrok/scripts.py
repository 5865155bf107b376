"""What the scripts in ``analyses/`` share: their command line and the run it names.

Every single-run analysis opens the same way - a run folder (trained from ``--preset`` first when
it holds no run), ``--set section.key=value`` overrides for that training, ``--max-checkpoints``
for the probes - so the opening lives here once::

    from mechgrok.scripts import script_run

    run, args = script_run("What this script shows.", run_dir="checkpoints/parity", preset="parity")

Bad input (an unknown preset or key, a value out of range, a folder holding something else) ends
the script with a one-line ``error: ...`` like the ``mechgrok`` command, never a traceback.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch

from ._util import format_step
from .config import ConfigError, RunConfig
from .demo import ensure_run
from .layout import RUN_FILES
from .presets import preset
from .store import Run, StoreError

__all__ = ["parse_sets", "add_run_arguments", "config_from_args", "open_or_train", "script_run", "format_step"]

DEFAULT_MAX_CHECKPOINTS = 200
"""Checkpoints a script analyses by default (evenly spaced): enough for smooth curves and sliders."""


def parse_sets(items: Iterable[str]) -> dict[str, str]:
    """``["section.key=value", ...]`` (repeated ``--set`` options) as an overrides mapping."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def add_run_arguments(
    parser: argparse.ArgumentParser,
    *,
    run_dir: str,
    preset_name: str,
    max_checkpoints: int | None = DEFAULT_MAX_CHECKPOINTS,
    path_help: str | None = None,
) -> None:
    """The options every single-run script shares: ``run_dir`` (positional, optional), ``--preset``,
    ``--set`` (repeatable) and ``--max-checkpoints`` (default ``max_checkpoints``; None = all)."""
    parser.add_argument(
        "run_dir", nargs="?", default=run_dir, help=path_help or "run folder (trained from --preset if it holds no run)"
    )
    parser.add_argument("--preset", default=preset_name, help="preset to train when the folder holds no run")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for training, e.g. train.steps=300 (repeatable)",
    )
    parser.add_argument(
        "--max-checkpoints",
        type=int,
        default=max_checkpoints,
        help="analyse at most this many checkpoints, evenly spaced",
    )


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The preset named by ``--preset`` with the ``--set`` overrides."""
    return preset(args.preset, parse_sets(args.set))


def open_or_train(run_dir: str | Path, config: RunConfig, *, log: Callable[[str], None] | None = print) -> Run:
    """The run in ``run_dir``; a folder without one is trained from ``config`` first (a killed
    run of the same config is resumed)."""
    run_dir = Path(run_dir)
    have_run = (run_dir / RUN_FILES["config"]).exists()
    return ensure_run(run_dir, None if have_run else config, log=log)


def script_run(
    description: str,
    *,
    run_dir: str,
    preset: str,
    max_checkpoints: int | None = DEFAULT_MAX_CHECKPOINTS,
    argv: Sequence[str] | None = None,
    threads: int = 1,
    path_help: str | None = None,
) -> tuple[Run, argparse.Namespace]:
    """Parse a single-run script's command line and open (or train) its run.

    ``threads``: intra-op threads for the script (1: these models are tiny and extra threads only
    spin-wait on a shared CPU). Errors in the input end the script with ``error: ...``.
    """
    parser = argparse.ArgumentParser(description=description)
    add_run_arguments(parser, run_dir=run_dir, preset_name=preset, max_checkpoints=max_checkpoints, path_help=path_help)
    args = parser.parse_args(argv)
    torch.set_num_threads(threads)
    try:
        return open_or_train(args.run_dir, config_from_args(args)), args
    except (ConfigError, StoreError) as e:
        raise SystemExit(f"error: {e}") from None

"""Sweeps: many models of one architecture trained at once (the batched engine), grids of
configs, sweep folders with one run folder per member and a results table, and a Ray backend.

>>> spec = SweepSpec.from_cli(preset("parity"), ["weight_decay=log:0.01:1:10", "d_mlp=32,128"], seeds=3)
>>> sweep = run_sweep(spec, "checkpoints/parity-sweep", engine=EngineConfig(early_stop=True))
>>> sweep.results()                      # one row per member: hyperparameters, events, phase
>>> sweep.run(7)                          # member 7's ordinary run folder
"""

from .engine import train_batch
from .engine_config import GROUP_FIELDS, EngineConfig
from .spec import SweepSpec, lin_range, log_range, parse_axis
from .store import SWEEP_FILES, Sweep, SweepMember, run_sweep

__all__ = [
    "EngineConfig",
    "GROUP_FIELDS",
    "train_batch",
    "SweepSpec",
    "parse_axis",
    "log_range",
    "lin_range",
    "Sweep",
    "SweepMember",
    "SWEEP_FILES",
    "run_sweep",
]

"""PAIR's hyperparameter map for sparse parity: where does grokking happen?

PAIR trained over 1,000 sparse-parity MLPs across weight decay, model size and data size and found
that only some regions grok: too little weight decay and the network stays memorised, too much
and it never learns. This script trains such a grid with the batched sweep engine (1,024 models
by default: 16 weight decays x 4 widths x 2 training-set sizes x 8 seeds), classifies every
member from its metrics (comprehension / grokking / memorisation / confusion), prints the phase of
each grid cell and writes the sweep folder with its results table and, through
``mechgrok.report``, the phase-map report.

The sweep folder is resumable: run the same command again after a kill and it continues.

    python analyses/parity_phase_map.py                          # 1,024 models, ~15-30 min on 2 CPU cores
    python analyses/parity_phase_map.py --quick --out /tmp/pm    # 48 small models, a minute
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import mechgrok as mg
from mechgrok.layout import SWEEP_FILES
from mechgrok.scripts import parse_sets
from mechgrok.sweep import EngineConfig, SweepSpec, run_sweep

parser = argparse.ArgumentParser(description="Sparse-parity phase map over weight decay x width x data size.")
parser.add_argument("--out", default="checkpoints/parity-phase-map", help="sweep folder")
parser.add_argument("--quick", action="store_true", help="a small grid of small models (checks the pipeline)")
parser.add_argument("--steps", type=int, default=3000, help="training steps per model (at most)")
parser.add_argument("--seeds", type=int, default=8, help="model seeds per grid point")
parser.add_argument("--max-batch", type=int, default=EngineConfig.max_batch, help="models trained at once")
parser.add_argument(
    "--grid",
    action="append",
    default=[],
    metavar="KEY=VALUES",
    help="replace the grid: one axis per option, as `mechgrok sweep --grid` (keep weight_decay, d_mlp, n_train)",
)
parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for every member")
args = parser.parse_args()
torch.set_num_threads(1)  # small matmuls: a second intra-op thread only spin-waits on a shared CPU

# 1. the grid: PAIR's parity task (30 bits, parity of the first 3) and the parity preset's MLP
base = mg.preset("parity").with_overrides(
    {
        "train.steps": args.steps,
        "train.eval_every": 20,  # test accuracy every 20 steps: event steps to within 20
        "train.checkpoint_every": 500,  # a member's checkpoints: every 500 steps + 8 log-spaced early ones
        "train.log_checkpoints": 8,
        "train.resume_every": 250,  # batch resume state every 250 steps
    }
)
grid = ["weight_decay=log:0.001:3:16", "d_mlp=16,32,64,128", "n_train=600,1200"]
seeds = args.seeds
if args.quick:
    base = base.with_overrides(
        {"task.n_bits": 12, "task.n_train": 200, "task.n_test": 400, "train.steps": min(args.steps, 600)}
    )
    grid = ["weight_decay=log:0.001:3:6", "d_mlp=16,32", "n_train=100,200"]
    seeds = 2
base = base.with_overrides(parse_sets(args.set))
grid = args.grid or grid
spec = SweepSpec.from_cli(base, grid, seeds=seeds)
engine = EngineConfig(max_batch=args.max_batch, log_every=20, early_stop=True, patience=300)
print(f"{spec.describe()}\n  -> {args.out}")

# 2. train (continues a killed sweep); members that generalised for 300 steps stop early
t0 = time.perf_counter()
sweep = run_sweep(spec, args.out, engine=engine)
elapsed = time.perf_counter() - t0
df = sweep.results()
steps_run = df["total_steps"].sum()
print(
    f"\n{len(df):,} models in {elapsed:,.0f} s ({steps_run:,.0f} model-steps, "
    f"{steps_run / max(elapsed, 1e-9):,.0f} model-steps/s;"
    f" {(df['stopped_early'] == 'generalised').sum():,} stopped early)"
)
counts = df["phase"].value_counts()
print("phases: " + ", ".join(f"{phase} {counts.get(phase, 0):,}" for phase in mg.PHASES))

# 3. the map as text: per (training-set size, width) row, the most common phase at each weight decay
short = {"comprehension": "C", "grokking": "G", "memorisation": "M", "confusion": "x"}
wds = sorted(df["weight_decay"].unique())
print(
    "\nmost common phase per grid point (C comprehension, G grokking, M memorisation, x confusion);"
    " lower case = under 3/4 of the seeds agree"
)
print(f"{'n_train':>8}{'d_mlp':>7}  " + " ".join(f"{w:>6.3g}" for w in wds) + "   <- weight decay")
for n_train in sorted(df["n_train"].unique()):
    for width in sorted(df["d_mlp"].unique()):
        cells = []
        for wd in wds:
            phases = df[(df["n_train"] == n_train) & (df["d_mlp"] == width) & np.isclose(df["weight_decay"], wd)][
                "phase"
            ]
            top = phases.value_counts()
            letter = short.get(top.index[0], "?") if len(top) else " "
            cells.append(
                f"{letter if top.iloc[0] >= 0.75 * len(phases) else letter.lower():>6}" if len(top) else f"{'':>6}"
            )
        print(f"{n_train:>8}{width:>7}  " + " ".join(cells))
grok = df[df["phase"] == "grokking"]
if len(grok):
    print(
        f"\ngrokking members: weight decay {grok['weight_decay'].min():.3g} .. {grok['weight_decay'].max():.3g}, "
        f"median lag {grok['lag'].median():,.0f} steps (memorised at {grok['memorised_step'].median():,.0f}, "
        f"generalised at {grok['generalised_step'].median():,.0f})"
    )

# 4. the phase-map report (figures come from mechgrok.report)
try:
    from mechgrok.report import write_sweep_report
except ImportError:
    print(
        f"\nresults table: {Path(args.out) / SWEEP_FILES['results']} (mechgrok.report is not available for the figure)"
    )
else:
    report = write_sweep_report(args.out, x="weight_decay", y="d_mlp")
    print(f"\nresults table: {Path(args.out) / SWEEP_FILES['results']}\nphase-map report: {report}")

"""Which irreducible representations do group MLPs learn, and how often? (Chughtai et al. 2023)

Trains a group preset (default ``group-s4-mlp``) for several seeds at once with the batched engine,
analyses every run (irrep spectra, key irreps, progress measures, events) and prints per seed the
phase, the grokking step and the key irreps, then how often each irrep is key. Writes the first
seed's report (the irrep spectrum heatmap with event lines) into that seed's folder.

    python analyses/group_irreps_seeds.py checkpoints/group-s4-seeds --preset group-s4-mlp --seeds 8
    python analyses/group_irreps_seeds.py checkpoints/group-d30-seeds --preset group-d30-mlp --seeds 8
    python analyses/group_irreps_seeds.py /tmp/tiny --preset group-s4-mlp --seeds 2 --set train.steps=300
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import torch

import mechgrok as mg
from mechgrok.layout import RUN_FILES
from mechgrok.scripts import format_step, parse_sets
from mechgrok.sweep import train_batch

parser = argparse.ArgumentParser(description="Key irreps of a group preset over several seeds.")
parser.add_argument("out", nargs="?", default="checkpoints/group-s4-seeds", help="folder for the seed runs")
parser.add_argument("--preset", default="group-s4-mlp")
parser.add_argument("--seeds", type=int, default=8)
parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
args = parser.parse_args()
torch.set_num_threads(1)  # tiny models: extra threads only spin-wait

# 1. train the seeds that are not there yet, all at once
out = Path(args.out)
try:
    base = mg.preset(args.preset, parse_sets(args.set))
except mg.ConfigError as e:
    raise SystemExit(f"error: {e}") from None
if base.task.kind != "group":
    raise SystemExit(f"error: {args.preset} is not a group task")
configs = [base.with_overrides({"train.seed": s, "name": f"{base.name}-seed{s}"}) for s in range(args.seeds)]
folders = [out / c.name for c in configs]
todo = [i for i, f in enumerate(folders) if not (f / RUN_FILES["config"]).exists()]
if todo:
    train_batch([configs[i] for i in todo], [folders[i] for i in todo])

# 2. analyse every run: the pipeline names the key irreps of the last checkpoint
counts: Counter[str] = Counter()
print(f"{base.name}: group {base.task.group.upper()}, {base.task.train_fraction:.0%} of the table for training")
for folder in folders:
    res = mg.analyze(folder, progress=False)
    ev = res.events
    keys = [f"{k['name']} ({k['dim']}d)" for k in res.records["key_irreps"]]
    counts.update(keys)
    print(
        f"  {folder.name}: {ev.phase}, memorised {format_step(ev.memorised_step)}, generalised "
        f"{format_step(ev.generalised_step)}, final test acc {ev.final_test_acc:.3f}; "
        f"key irreps: {', '.join(keys) or 'none'}"
    )
print("how often each irrep is key:", ", ".join(f"{k} {n}/{len(folders)}" for k, n in counts.most_common()) or "none")

# 3. the first seed's report: irrep spectrum over training with the events
path = mg.write_run_report(folders[0])
print(f"report: {path}")

"""PAIR's 24-neuron MLP over many seeds: how often it groks, and with how many key frequencies.

PAIR's seed sweep of this model (source/grokking/mod-bot/seeds in PAIR-code/ai-explorables)
generalises in almost every seed with 3-4 key frequencies. This script trains ``--seeds`` members
of a preset with the batched sweep engine (each member: ``task.seed = train.seed = s``, as PAIR's
notebook seeds its numpy split and its JAX initialisation with one ``seed``; ``--fixed-split``
keeps the preset's split), then reads each member's final checkpoint: the step train accuracy
reaches 100%, the step test accuracy reaches 99%, the final test accuracy, and the key
frequencies of its logits (``mg.key_frequencies``). Members already trained in ``OUT`` are reused.

    python analyses/pair_mlp24_seeds.py checkpoints/pair-mlp24-seeds --seeds 12            # ~25 min, 1 core
    python analyses/pair_mlp24_seeds.py checkpoints/mlp24-old --seeds 12 \\
        --set model.init=default --set model.dtype=float32 --set optim.loss_reduction=mean --set task.split=torch
    python analyses/pair_mlp24_seeds.py /tmp/tiny --seeds 2 --set task.p=13 --set model.d_model=32 --set train.steps=300
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import mechgrok as mg
from mechgrok.layout import RUN_FILES
from mechgrok.scripts import parse_sets

parser = argparse.ArgumentParser(description="Grok rate and key frequencies of a modular MLP preset over seeds.")
parser.add_argument("out", nargs="?", default="checkpoints/pair-mlp24-seeds", help="folder for the member runs")
parser.add_argument("--preset", default="modadd-mlp24")
parser.add_argument("--seeds", type=int, default=12, help="members (seeds seed-start .. seed-start + seeds - 1)")
parser.add_argument("--seed-start", type=int, default=None, help="first seed (default: the preset's train.seed)")
parser.add_argument("--fixed-split", action="store_true", help="keep the preset's task.seed for every member")
parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
parser.add_argument("--workers", type=int, default=1, help="engine threads (1 = one core)")
parser.add_argument("--json", default=None, help="also write the table as JSON here")
args = parser.parse_args()
torch.set_num_threads(1)  # tiny models: extra threads only spin-wait

# 1. the members: only the final checkpoint is needed, so checkpoint sparsely
overrides = {"train.checkpoint_every": 2500, "train.log_checkpoints": 0, **parse_sets(args.set)}
base = mg.preset(args.preset).with_overrides(overrides)
start = base.train.seed if args.seed_start is None else args.seed_start
seeds = list(range(start, start + args.seeds))
configs = [base.with_overrides({"train.seed": s, **({} if args.fixed_split else {"task.seed": s})}) for s in seeds]
out = Path(args.out)
folders = [out / f"seed{s}" for s in seeds]

# 2. train the members not yet finished (a folder without a summary is an interrupted run: redo it)
todo = [i for i, f in enumerate(folders) if not (f / RUN_FILES["summary"]).exists()]
for i in todo:
    if folders[i].exists():
        raise SystemExit(f"error: {folders[i]} holds an unfinished run; remove it to retrain that seed")
if todo:
    print(f"training {len(todo)} x {base.name} ({base.train.steps:,} steps) into {out}")
    mg.train_batch(
        [configs[i] for i in todo],
        [folders[i] for i in todo],
        engine=mg.EngineConfig(workers=args.workers, log_every=base.train.eval_every),
    )

# 3. per member: events from the metrics, key frequencies of the final checkpoint
rows = []
for s, folder in zip(seeds, folders):
    run = mg.Run.open(folder)
    summary = json.loads((folder / RUN_FILES["summary"]).read_text())
    freqs = mg.key_frequencies(run)
    rows.append(
        {
            "seed": s,
            "step_train_100": summary.get("step_train_acc_100"),
            "step_test_99": summary.get("step_test_acc_99"),
            "final_test_acc": summary.get("final_test_acc"),
            "grokked": (summary.get("final_test_acc") or 0.0) >= 0.99,
            "key_frequencies": freqs,
        }
    )

# 4. the table
fmt = lambda v: "-" if v is None else f"{v:,}"
print(
    f"\n{base.name}: init={base.model.init} dtype={base.model.dtype} loss={base.optim.loss_reduction} "
    f"split={base.task.split}{' (fixed)' if args.fixed_split else ''}, {base.train.steps:,} steps"
)
print(f"{'seed':>5} {'train 100%':>11} {'test 99%':>9} {'final test':>10}  key frequencies")
for r in rows:
    print(
        f"{r['seed']:>5} {fmt(r['step_train_100']):>11} {fmt(r['step_test_99']):>9} "
        f"{r['final_test_acc']:>10.3f}  {len(r['key_frequencies'])}: {r['key_frequencies']}"
    )
grokked = [r for r in rows if r["grokked"]]
counts = sorted(len(r["key_frequencies"]) for r in grokked)
print(f"\ngrokked (final test accuracy >= 99%): {len(grokked)}/{len(rows)}; key frequencies of those: {counts}")
if args.json:
    Path(args.json).write_text(
        json.dumps({"config": base.to_dict(), "fixed_split": args.fixed_split, "rows": rows}, indent=1)
    )

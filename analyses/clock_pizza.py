"""Clock or pizza: which algorithm each trained modular-addition model uses (Zhong et al. 2023).

Reads run folders (a sweep folder's members, or run folders named one by one), computes Zhong et
al.'s signatures at each run's last checkpoint (``mg.algorithm_signatures``: distance
irrelevance, gradient symmetricity, circularity, and the clock / pizza / neither rule) and prints
one row per run plus, per attention rate, the fraction of clock and pizza models and the median
signatures. Train the sweep first, e.g. (p = 31, 8 seeds per rate; RESULTS.md)::

    mechgrok sweep modadd-pizza --grid model.attn_rate=0,0.25,0.5,0.75,1 --seeds 8 --set task.p=31 \\
        --set train.steps=1200 --threads 1 --out checkpoints/pizza31
    python analyses/clock_pizza.py checkpoints/pizza31
    python analyses/clock_pizza.py checkpoints/pair-mlp24-seeds/*/      # PAIR's 24-neuron MLPs
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

import mechgrok as mg
from mechgrok.layout import RUN_FILES, SWEEP_FILES

parser = argparse.ArgumentParser(description="Clock / pizza signatures of trained modular-addition runs.")
parser.add_argument("paths", nargs="+", help="a sweep folder, or run folders")
parser.add_argument("--samples", type=int, default=100, help="triples for the gradient symmetricity")
parser.add_argument("--json", default=None, help="also write the rows as JSON here")
args = parser.parse_args()
torch.set_num_threads(1)  # tiny models: extra threads only spin-wait


def run_dirs(paths: list[str]) -> list[Path]:
    found = []
    for p in map(Path, paths):
        if (p / RUN_FILES["config"]).exists():
            found.append(p)
        elif (p / SWEEP_FILES["members"]).is_dir():
            found += sorted(d for d in (p / SWEEP_FILES["members"]).iterdir() if (d / RUN_FILES["config"]).exists())
    if not found:
        raise SystemExit(f"error: no run folders in {' '.join(paths)}")
    return found


rows = []
print(f"{'run':<28} {'rate':>5} {'width':>5} {'acc':>6} {'dist':>6} {'gsym':>6} {'circ':>6}  algorithm")
for path in run_dirs(args.paths):
    traj = mg.Run.open(path).trajectory()
    sig = mg.algorithm_signatures(traj.subset([len(traj) - 1]), n_samples=args.samples)
    m = traj.config.model
    row = {
        "run": str(path),
        "attn_rate": m.attn_rate if m.kind == "transformer" else None,
        "width": m.d_model,
        "seed": traj.config.train.seed,
        "step": int(sig["steps"][0]),
        "accuracy": float(sig["accuracy"][0]),
        "distance_irrelevance": float(sig["distance_irrelevance"][0]),
        "gradient_symmetricity": float(sig["gradient_symmetricity"][0]),
        "circularity": float(sig["circularity"][0]),
        "algorithm": sig["algorithm"][0],
    }
    rows.append(row)
    rate = "-" if row["attn_rate"] is None else f"{row['attn_rate']:.2f}"
    print(
        f"{path.name:<28} {rate:>5} {row['width']:>5} {row['accuracy']:6.3f} {row['distance_irrelevance']:6.3f} "
        f"{row['gradient_symmetricity']:6.3f} {row['circularity']:6.3f}  {row['algorithm']}"
    )

print(
    f"\n{'rate':>5} {'n':>3} {'clock':>6} {'pizza':>6} {'neither':>7} {'med dist':>8} {'med gsym':>8} {'med circ':>8}"
)
for rate in sorted({r["attn_rate"] for r in rows}, key=lambda v: -1 if v is None else v):
    group = [r for r in rows if r["attn_rate"] == rate]
    count = {a: sum(r["algorithm"] == a for r in group) for a in mg.ALGORITHMS}
    med = {
        k: statistics.median(r[k] for r in group)
        for k in ("distance_irrelevance", "gradient_symmetricity", "circularity")
    }
    label = "-" if rate is None else f"{rate:.2f}"
    print(
        f"{label:>5} {len(group):>3} {count['clock']:>6} {count['pizza']:>6} {count['neither']:>7} "
        f"{med['distance_irrelevance']:8.3f} {med['gradient_symmetricity']:8.3f} {med['circularity']:8.3f}"
    )
if args.json:
    Path(args.json).write_text(json.dumps(rows, indent=1))

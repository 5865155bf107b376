"""Sparse parity, PAIR's story quantified over a few seeds of the ``parity`` preset.

PAIR ("Do ML models memorize or generalize?"): train accuracy reaches 100% first; test accuracy
jumps much later, when weight decay has pruned the last first-layer weights that read the
irrelevant bits; too little weight decay and the model stays memorised, too much and it never
learns.

Part 1, per model seed (the 1,200 training strings are the preset's, fixed): memorisation step,
pruning step (no irrelevant bit read any more: ``mechgrok.probes.parity_events``), flip-sensitivity
step, generalisation step and their lags, and the causal "prune now" check at the last checkpoint
before generalisation: zero every first-layer weight on an irrelevant bit (on a copy) and measure
test accuracy there, next to the checkpoint's own test accuracy.

Part 2, the weight-decay range: the preset at several weight decays (a few seeds each), each
run's phase (``mechgrok.probes.detect_events``: grokking / comprehension / memorisation /
confusion) and final accuracies.

    python analyses/parity_story_seeds.py                       # seeds 0 1 2, wd sweep
    python analyses/parity_story_seeds.py --seeds 0 1 2 3 4 --wd 0 0.03 0.1 1 --wd-seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from mechgrok import analyze, detect_events, ensure_run, loss_and_accuracy, make_dataset, preset, train
from mechgrok.scripts import format_step, parse_sets


def fmt(x) -> str:
    return format_step(x) if x is None or isinstance(x, int) else f"{x:.3f}"


def story(seed: int, out: Path, sets: dict) -> dict:
    cfg = preset("parity", {**sets, "train.seed": seed, "name": f"parity-seed{seed}"})
    run_dir = out / f"seed{seed}"
    # a finished run of this config is reused, a killed one resumed, another run refused (kept)
    run = ensure_run(run_dir, cfg, progress=False)
    an = analyze(run)
    ev = an.events
    steps = an.steps
    row = {
        "seed": seed,
        "memorised": ev.memorised_step,
        "pruned": ev.extra.get("pruned_step"),
        "sensitivity_zero": ev.extra.get("sensitivity_zero_step"),
        "generalised": ev.generalised_step,
        "prune_now_step": ev.extra.get("prune_now_step"),
        "phase": ev.phase,
    }
    row["lag_mem_to_gen"] = ev.lag
    row["lag_prune_to_gen"] = ev.extra.get("prune_lag")
    # the causal "prune now" check: zero the irrelevant-bit weights of a checkpoint (a copy) and
    # compare its test accuracy with the checkpoint's own - at the last checkpoint before
    # generalisation and at the one halfway between memorisation and generalisation
    if ev.generalised_step is not None and ev.memorised_step is not None:
        between = [i for i, s in enumerate(steps.tolist()) if ev.memorised_step <= s < ev.generalised_step]
        if between:
            data = make_dataset(cfg.task)
            for tag, i in (("mid", between[len(between) // 2]), ("last", between[-1])):
                with torch.no_grad():
                    _, acc = loss_and_accuracy(run.model(int(steps[i]))(data.test_x), data.test_y)
                row[f"{tag}_step"] = int(steps[i])
                row[f"{tag}_test_acc"] = float(acc)
                row[f"{tag}_pruned_acc"] = float(an["bits/prune_now_acc"][i])
    return row


def wd_phase(wd: float, seed: int, steps: int, sets: dict) -> dict:
    cfg = preset("parity", {**sets, "train.seed": seed, "optim.weight_decay": wd, "train.steps": steps})
    res = train(cfg, None, progress=False)
    ev = detect_events(res.metrics)
    return {
        "wd": wd,
        "seed": seed,
        "phase": ev.phase,
        "memorised": ev.memorised_step,
        "generalised": ev.generalised_step,
        "train_acc": ev.final_train_acc,
        "test_acc": ev.final_test_acc,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--wd", nargs="*", type=float, default=[0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0])
    ap.add_argument("--wd-seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--wd-steps", type=int, default=4000, help="steps per weight-decay run (the preset's length)")
    ap.add_argument("--out", type=Path, default=Path("checkpoints/parity-story"))
    ap.add_argument("--json", type=Path, help="also write every number here")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for every run, e.g. task.n_bits=8 (repeatable)",
    )
    args = ap.parse_args()
    sets = parse_sets(args.set)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)

    print("# Part 1: the story per seed (parity preset; steps are optimiser steps)")
    cols = [
        "seed",
        "memorised",
        "generalised",
        "pruned",
        "sensitivity_zero",
        "prune_now_step",
        "lag_mem_to_gen",
        "lag_prune_to_gen",
        "mid_step",
        "mid_test_acc",
        "mid_pruned_acc",
        "last_step",
        "last_test_acc",
        "last_pruned_acc",
        "phase",
    ]
    print(" ".join(f"{c:>10s}" for c in cols))
    rows = []
    for seed in args.seeds:
        row = story(seed, args.out, sets)
        rows.append(row)
        print(" ".join(f"{fmt(row.get(c)) if c != 'phase' else row[c]:>10s}" for c in cols), flush=True)
    for key in (
        "memorised",
        "generalised",
        "pruned",
        "sensitivity_zero",
        "prune_now_step",
        "lag_mem_to_gen",
        "lag_prune_to_gen",
    ):
        vals = [r[key] for r in rows if r.get(key) is not None]
        if vals:
            print(f"median {key}: {statistics.median(vals):,.0f}  (n={len(vals)}, range {min(vals):,}..{max(vals):,})")

    wd_rows = []
    if args.wd:
        print("\n# Part 2: weight-decay range (phase per seed; final train/test accuracy)")
        for wd in args.wd:
            cells = []
            for seed in args.wd_seeds:
                r = wd_phase(wd, seed, args.wd_steps, sets)
                wd_rows.append(r)
                cells.append(
                    f"{r['phase']}(mem {fmt(r['memorised'])}, gen {fmt(r['generalised'])}, "
                    f"{r['train_acc']:.2f}/{r['test_acc']:.2f})"
                )
            print(f"wd={wd:<6g} " + "  ".join(cells), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"story": rows, "wd": wd_rows}, indent=2))


if __name__ == "__main__":
    main()

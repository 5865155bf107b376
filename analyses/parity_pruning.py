"""Sparse parity: does pruning the irrelevant-bit weights trigger generalisation? (PAIR)

PAIR's story: train accuracy reaches 100% first (memorisation); much later test accuracy jumps,
when weight decay has pruned the last first-layer weights that read the irrelevant bits. This
script trains (or opens) a parity run, runs the bit-dependence probes on every checkpoint and
prints the story's steps side by side:

* memorised     - train accuracy first >= 99%;
* prune-now     - first checkpoint whose copy with every irrelevant-bit weight zeroed already
                  reaches 99% test accuracy (the causal check: is pruning all that is missing?);
* insensitive   - flipping an irrelevant bit changes <= 1% of predictions from here on;
* pruned        - no irrelevant-bit weight above 10% of the largest relevant-bit weight from here on;
* generalised   - test accuracy first >= 99%.

It writes RUN/parity_pruning.html: curves, first-layer weights with a step slider, per-bit
dependence, and the causal check.

    python analyses/parity_pruning.py                          # checkpoints/parity (trained if missing)
    python analyses/parity_pruning.py checkpoints/my-parity    # any parity run folder
    python analyses/parity_pruning.py /tmp/tiny --set task.n_bits=8 --set train.steps=300
"""

from __future__ import annotations

import math

import mechgrok as mg
from mechgrok.report import (
    Section,
    bit_dependence_figure,
    parity_weights_figure,
    prune_now_accuracy_figure,
    training_curves_figure,
    write_html,
)
from mechgrok.scripts import format_step, script_run

# 1. the run: open it, or train the preset (with --set overrides) into the empty folder
run, args = script_run(
    "Sparse parity: pruning and generalisation.", run_dir="checkpoints/parity", preset="parity", max_checkpoints=None
)
if run.config.task.kind != "parity":
    raise SystemExit(f"error: {run.path} is a {run.config.task.kind} run, not sparse parity")

# 2. probes on every checkpoint: bit dependence, the causal check, events
analysis = mg.analyze(run, max_checkpoints=args.max_checkpoints)
ev = analysis.events
x = ev.extra
steps = analysis.steps


print(
    f"\n{run.config.name}: relevant bits {x['relevant_bits']} of {run.config.task.n_bits}, "
    f"{len(steps)} checkpoints to step {int(steps[-1]):,}"
)
story = [
    ("memorised", ev.memorised_step),
    ("prune-now >= 99%", x.get("prune_now_step")),
    ("insensitive", x["sensitivity_zero_step"]),
    ("pruned", x["pruned_step"]),
    ("generalised", ev.generalised_step),
]
for name, step in sorted(story, key=lambda t: float("inf") if t[1] is None else t[1]):
    print(f"  {name:<18} {format_step(step, 8)}")
if x["pruned_step"] is not None and ev.generalised_step is not None:
    print(f"  generalised {ev.generalised_step - x['pruned_step']:+,} steps after the pruning event")

# the causal check at the last checkpoint between memorisation and generalisation
acc = analysis["bits/prune_now_acc"]
metrics = run.metrics()
if ev.memorised_step is not None and ev.generalised_step is not None:
    between = [i for i, s in enumerate(steps.tolist()) if ev.memorised_step <= s < ev.generalised_step]
    if between:
        i = between[-1]
        s = int(steps[i])
        real = [a for st, a in zip(metrics["step"], metrics["test_acc"]) if st <= s and not math.isnan(a)][
            -1
        ]  # NaN: not evaluated
        print(
            f"  at step {s:,} (memorised, not yet generalised): test accuracy {real:.3f}; "
            f"with the irrelevant-bit weights zeroed {float(acc[i]):.3f}"
        )

# 3. figures -> one offline HTML file
relevant = analysis["bits/relevant"]
traj = run.trajectory()
sections = [
    Section("Training curves", training_curves_figure(metrics, ev)),
    Section(
        "First-layer weights",
        parity_weights_figure(traj.steps, traj.params["blocks.0.mlp.W_in"], x["relevant_bits"], events=ev),
    ),
    Section(
        "Dependence on each bit",
        bit_dependence_figure(
            steps,
            {
                "weight norm": analysis["bits/weight_norm"],
                "gradient attribution": analysis["bits/grad_attr"],
                "flip sensitivity": analysis["bits/flip_sensitivity"],
            },
            relevant,
            ratio=analysis["bits/irrelevant_weight_ratio"],
            prune_threshold=x["prune_threshold"],
            events=ev,
        ),
    ),
    Section("Causal check", prune_now_accuracy_figure(steps, acc, metrics, events=ev)),
]
out = write_html(
    run.path / "parity_pruning.html", f"Parity pruning story: {run.config.name}", sections, subtitle=analysis.summary
)
print(f"\nreport: {out}")

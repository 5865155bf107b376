"""PAIR's five-neuron MLP with a fixed (cos, sin) embedding: the neurons end up on a circle.

The embedding of a is (cos 2πka/p, sin 2πka/p), so each hidden neuron's input weights are a point
(w_cos, w_sin) in that plane: a norm and a phase. PAIR's observation: after training all neurons
have similar norms and their phases sit evenly around the circle (5 neurons: 72° apart). This
script trains (or opens) such a run, runs the circle probes on every checkpoint, prints each
neuron's final norm and phase, the gaps between neighbouring phases against the even 360°/m, and
the spread / norm-equality measures at the start and at the end. It writes RUN/cossin_circle.html.

    python analyses/cossin_circle.py checkpoints/cossin5 --set train.steps=3000
    python analyses/cossin_circle.py /tmp/tiny --set task.p=11 --set train.steps=200
"""

from __future__ import annotations

import math

import torch

import mechgrok as mg
from mechgrok.models import cossin_embedding
from mechgrok.report import Section, modular_weights_figure, neuron_circles_figure, training_curves_figure, write_html
from mechgrok.scripts import script_run

# 1. the run: open it, or train the preset (with --set overrides) into the empty folder
run, args = script_run(
    "The cos/sin model's neurons on a circle.", run_dir="checkpoints/modadd-cossin5", preset="modadd-cossin5"
)
if run.config.model.kind != "cossin_mlp":
    raise SystemExit(f"error: {run.path} holds a {run.config.model.kind!r} model, not the cos/sin MLP")

# 2. circle probes on every checkpoint
analysis = mg.analyze(run, max_checkpoints=args.max_checkpoints, circles=True)
norm, phase = analysis["circles/norm"], analysis["circles/phase"]  # [n, m]
spread, cv = analysis["circles/phase_spread"], analysis["circles/norm_cv"]  # [n]
m = norm.shape[1]

print(f"\n{run.config.name}: {analysis.summary}\n")
print(f"  last checkpoint (step {int(analysis.steps[-1]):,}), neurons by phase:")
order = torch.argsort(torch.remainder(phase[-1], 2 * math.pi))
degrees = torch.rad2deg(torch.remainder(phase[-1][order], 2 * math.pi))
for j, deg in zip(order.tolist(), degrees.tolist()):
    print(f"    neuron {j}: norm {float(norm[-1, j]):7.3f}, phase {deg:6.1f}°")
gaps = torch.diff(torch.cat([degrees, degrees[:1] + 360]))
print(f"  gaps between neighbouring phases: {', '.join(f'{g:.0f}°' for g in gaps.tolist())} (even: {360 / m:.0f}°)")
print(
    f"  phase spread (1 = even) {float(spread[0]):.2f} -> {float(spread[-1]):.2f}; "
    f"norm CV (0 = equal norms) {float(cv[0]):.2f} -> {float(cv[-1]):.2f}"
)

# 3. figures -> one offline HTML file
traj = run.trajectory([int(s) for s in analysis.steps])
sections = [
    Section("Training curves", training_curves_figure(run.metrics(), analysis.events)),
    Section(
        "Neuron circles",
        neuron_circles_figure(
            analysis.steps,
            analysis["circles/cos"],
            analysis["circles/sin"],
            freq=analysis["circles/freq"],
            spread=spread,
            norm_cv=cv,
            events=analysis.events,
        ),
    ),
    Section(
        "Neuron input over the operand",
        modular_weights_figure(
            traj.steps,
            None,
            traj.params["blocks.0.mlp.W_in"],
            fixed_embedding=cossin_embedding(run.config.task.p, run.config.model.frequency),
            events=analysis.events,
        ),
    ),
]
out = write_html(
    run.path / "cossin_circle.html", f"Neuron circle: {run.config.name}", sections, subtitle=analysis.summary
)
print(f"\nreport: {out}")

"""Modular addition with PAIR's 24-neuron MLP: the weights start noisy and become periodic.

PAIR's main model ((a + b) mod 67, tied embedding, 24 ReLU neurons): after grokking, each neuron's
input weights over the operand a are a wave of one frequency, and a DFT of the embedding shows a
few dominant frequencies. This script trains (or opens) such a run, computes the DFT of

* the embedding ``W_E [p, d_model]`` along a (per-frequency norms over all dimensions), and
* each neuron's input from a, ``(W_E W_in)[a, neuron]`` (the direct path),

at every checkpoint, and prints how concentrated they are at the start and at the end (share of
the power in the top frequency, per neuron) plus the key frequencies the probes find. It writes
RUN/mlp24_fourier.html (weights with a step slider, spectra over training, key-frequency norms,
each neuron's dominant frequency).

    python analyses/mlp24_fourier.py checkpoints/mlp24 --set train.steps=24000   # groks near step 20,000
    python analyses/mlp24_fourier.py /tmp/tiny --set task.p=13 --set model.d_model=32 --set train.steps=400
"""

from __future__ import annotations

import plotly.graph_objects as go
import torch

import mechgrok as mg
from mechgrok.probes import frequency_norms
from mechgrok.report import (
    Section,
    fourier_spectrum_figure,
    key_frequency_norms_figure,
    modular_weights_figure,
    training_curves_figure,
    write_html,
)
from mechgrok.scripts import script_run

# 1. the run: open it, or train the preset (with --set overrides) into the empty folder
run, args = script_run(
    "The 24-neuron MLP's periodic weights and their DFT.", run_dir="checkpoints/modadd-mlp24", preset="modadd-mlp24"
)
if run.config.model.kind != "mlp":
    raise SystemExit(
        f"error: {run.path} holds a {run.config.model.kind!r} model; this script reads the MLP's W_E and W_in"
    )
p = run.config.task.p

# 2. probes (Fourier, key frequencies, progress measures) and the DFT of the weights themselves
analysis = mg.analyze(run, max_checkpoints=args.max_checkpoints)
traj = run.trajectory([int(s) for s in analysis.steps])
W_E = traj.params["embed.W_E"][:, :p].double()  # [n, p, d_model]
H = torch.einsum("npd,ndm->nmp", W_E, traj.params["blocks.0.mlp.W_in"].double())  # [n, neuron, a]
embed_spec = frequency_norms(W_E, dim=1, batch_dims=1)  # [n, p//2]
neuron_spec = frequency_norms(H, dim=2, batch_dims=2)  # [n, neuron, p//2]
power = neuron_spec.pow(2)
top_share = power.amax(-1) / power.sum(-1).clamp_min(1e-30)  # [n, neuron]: share of the top frequency
dominant = power.argmax(-1) + 1  # [n, neuron]: frequency k in 1..p//2

print(f"\n{run.config.name}: {analysis.summary}\n")
for label, i in (("first checkpoint", 0), ("last checkpoint", -1)):
    e = embed_spec[i].pow(2)
    top3 = e.topk(3)
    print(f"  {label} (step {int(traj.steps[i]):,}):")
    print(
        f"    embedding: top-3 frequencies {[int(k) + 1 for k in top3.indices]} "
        f"hold {float(top3.values.sum() / e.sum()):.0%} of the power"
    )
    print(
        f"    neurons: median share of the top frequency {float(top_share[i].median()):.0%} "
        f"(random weights: ~{2 / (p - 1):.0%} per frequency)"
    )
counts = torch.bincount(dominant[-1], minlength=p // 2 + 1)
print(
    "  neurons per dominant frequency at the end: "
    + ", ".join(f"k={k}: {int(c)}" for k, c in enumerate(counts.tolist()) if c)
)
print(f"  key frequencies (probes): {analysis.key_frequencies}")

# 3. figures -> one offline HTML file
bars = go.Figure(
    go.Bar(
        x=[f"n{j}" for j in range(H.shape[1])],
        y=top_share[-1].numpy(),
        text=[f"k={int(k)}" for k in dominant[-1]],
        marker={"color": dominant[-1].numpy(), "colorscale": "Turbo"},
    )
)
bars.update_layout(
    title="Share of each neuron's input power in its dominant frequency (last checkpoint)",
    template="plotly_white",
    yaxis={"range": [0, 1], "title": "share"},
    height=380,
)
sections = [
    Section("Training curves", training_curves_figure(run.metrics(), analysis.events)),
    Section(
        "Weights over the operand",
        modular_weights_figure(
            traj.steps, traj.params["embed.W_E"], traj.params["blocks.0.mlp.W_in"], p=p, events=analysis.events
        ),
    ),
    Section(
        "DFT over training",
        fourier_spectrum_figure(
            traj.steps,
            {"embedding W_E": embed_spec, "neuron inputs W_E W_in": neuron_spec.pow(2).sum(1).sqrt()},
            analysis.key_frequencies,
        ),
    ),
    Section(
        "Key-frequency norms",
        key_frequency_norms_figure(traj.steps, embed_spec, analysis.key_frequencies, events=analysis.events),
    ),
    Section("Dominant frequency per neuron", bars),
]
out = write_html(
    run.path / "mlp24_fourier.html", f"Periodic weights: {run.config.name}", sections, subtitle=analysis.summary
)
print(f"\nreport: {out}")

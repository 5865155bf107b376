"""Nanda et al. (2023) progress measures on any modular-addition run, or on an imported checkpoint.

Restricted loss (the logits' key-frequency components only) and excluded loss (those components
removed, on the training set) track the circuit long before the test loss moves; Fourier sparsity
rises as the network settles on a few key frequencies. This script takes

* a run folder (trained from ``--preset`` first if the folder holds no run), or
* a checkpoint file saved by the progress-measures paper's code (``.pth``), which is imported
  into mechgrok's transformer (next to the file, ``FILE.mechgrok/``) first,

computes the probes on every checkpoint and prints the key frequencies and when the restricted
loss drops, the excluded loss rises and the test accuracy reaches 99%. It writes
RUN/progress_measures.html.

    python analyses/progress_measures.py checkpoints/modadd-transformer
    python analyses/progress_measures.py grokking_runs/full_run_data.pth
    python analyses/progress_measures.py /tmp/tiny --set task.p=13 --set model.d_model=32 --set train.steps=300
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import mechgrok as mg
from mechgrok.report import (
    Section,
    fourier_spectrum_figure,
    key_frequency_norms_figure,
    progress_measures_figure,
    training_curves_figure,
    write_html,
)
from mechgrok.scripts import add_run_arguments, config_from_args, format_step, open_or_train

parser = argparse.ArgumentParser(description="Nanda et al.'s progress measures on a run or an imported checkpoint.")
add_run_arguments(
    parser,
    run_dir="checkpoints/modadd-transformer",
    preset_name="modadd-transformer",
    path_help="run folder (trained from --preset if it holds no run) or progress-measures-paper .pth file",
)
args = parser.parse_args()
torch.set_num_threads(1)  # tiny models: extra threads only spin-wait

# 1. the run: an imported file, an existing folder, or a preset trained into an empty folder
path = Path(args.run_dir)
run = mg.import_nanda_checkpoint(path) if path.is_file() else open_or_train(path, config_from_args(args))
if run.config.task.kind != "modular":
    raise SystemExit(f"error: {run.path} is a {run.config.task.kind} run; progress measures need modular arithmetic")

# 2. probes on every checkpoint
analysis = mg.analyze(run, max_checkpoints=args.max_checkpoints)
ev, x = analysis.events, analysis.events.extra


print(f"\n{run.config.name} ({run.config.model.kind}, p = {run.config.task.p}): {len(analysis.steps)} checkpoints")
print(
    f"  key frequencies: {analysis.key_frequencies or 'none'} "
    f"(in the logits' cut from step {format_step(x.get('key_freq_step'))})"
)
print(
    f"  memorised at step {format_step(ev.memorised_step)}; "
    f"excluded loss rises at {format_step(x.get('excluded_rise_step'))}; "
    f"restricted loss drops at {format_step(x.get('restricted_drop_step'))}; "
    f"generalised at {format_step(ev.generalised_step)}"
)
r, g = x.get("restricted_drop_step"), ev.generalised_step
if r is not None and g is not None:
    print(
        f"  the restricted loss drops {g - r:,} steps {'before' if g >= r else 'after'} the test accuracy reaches 99%"
    )
sp = analysis["fourier/sparsity"]
print(
    f"  Fourier sparsity {float(sp[0]):.2f} -> {float(sp[-1]):.2f}; "
    f"restricted / excluded loss at the end {float(analysis['progress/restricted_loss'][-1]):.3g} / "
    f"{float(analysis['progress/excluded_loss'][-1]):.3g}"
)

# 3. figures -> one offline HTML file
sections = []
if run.metrics_rows():
    sections.append(Section("Training curves", training_curves_figure(run.metrics(), ev)))
sections += [
    Section("Progress measures", progress_measures_figure(analysis.steps, analysis.tensors, events=ev)),
    Section(
        "Fourier spectrum",
        fourier_spectrum_figure(
            analysis.steps,
            {"embedding": analysis["fourier/embed_freq_norms"], "logits": analysis["fourier/logit_freq_norms"]},
            analysis.key_frequencies,
        ),
    ),
    Section(
        "Key-frequency norms",
        key_frequency_norms_figure(
            analysis.steps, analysis["fourier/embed_freq_norms"], analysis.key_frequencies, events=ev
        ),
    ),
]
out = write_html(
    run.path / "progress_measures.html", f"Progress measures: {run.config.name}", sections, subtitle=analysis.summary
)
print(f"\nreport: {out}")

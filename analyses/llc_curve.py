"""The local learning coefficient over training, against memorisation / generalisation.

Developmental interpretability reads grokking through the LLC (Lau et al. 2023; devinterp's
grokking example): a degeneracy measure of the loss landscape at each checkpoint, expected to rise
while the network memorises and fall as it generalises and cleans up. This script opens (or
trains) a run, optionally checks the sampler's settings at the last checkpoint (``--calibrate``:
epsilon x gamma in one vectorised pass), estimates the LLC of up to ``--max-checkpoints``
checkpoints (log-spaced, events kept) in one vectorised pass, prints it next to the train / test
accuracy, and writes RUN/llc_curve.html (the curve against the event lines, the chains' loss
traces, the calibration heatmap).

    python analyses/llc_curve.py checkpoints/modadd-mlp24 --max-checkpoints 30 --calibrate
    python analyses/llc_curve.py checkpoints/modadd-mlp24 --steps 0,250,1000,10000 --gamma 300
    python analyses/llc_curve.py /tmp/tiny --preset parity --set train.steps=300 --draws 50
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import mechgrok as mg
from mechgrok.probes.llc import LLCConfig, llc, llc_calibration
from mechgrok.report import Section, training_curves_figure, write_html
from mechgrok.report.llc import llc_calibration_figure, llc_figure, llc_traces_figure
from mechgrok.scripts import (
    add_run_arguments,
    config_from_args,
    format_step,
    open_or_train,
)

# 1. the run, and the sampler's settings (every LLCConfig field has a flag)
parser = argparse.ArgumentParser(description="The local learning coefficient over training.")
add_run_arguments(parser, run_dir="checkpoints/modadd-mlp24", preset_name="modadd-mlp24", max_checkpoints=30)
for name, default in (("epsilon", LLCConfig.epsilon), ("gamma", LLCConfig.gamma)):
    parser.add_argument(f"--{name}", type=float, default=default)
parser.add_argument("--nbeta", type=float, default=None, help="default n / log n")
for name in ("chains", "burnin", "draws"):
    parser.add_argument(f"--{name}", type=int, default=getattr(LLCConfig, name))
parser.add_argument("--batch-size", type=int, default=None)
parser.add_argument("--calibrate", action="store_true", help="sweep epsilon x gamma at the last checkpoint first")
parser.add_argument(
    "--steps", default=None, help="comma-separated checkpoint steps (default: --max-checkpoints log-spaced)"
)
args = parser.parse_args()
torch.set_num_threads(1)
try:
    run = open_or_train(args.run_dir, config_from_args(args))
    cfg = LLCConfig(
        epsilon=args.epsilon,
        gamma=args.gamma,
        nbeta=args.nbeta,
        chains=args.chains,
        burnin=args.burnin,
        draws=args.draws,
        batch_size=args.batch_size,
    )
except (mg.ConfigError, mg.StoreError) as e:
    raise SystemExit(f"error: {e}") from None

metrics = run.metrics()
events = mg.detect_events(metrics)
traj = run.trajectory()
if args.steps:
    rows = {traj.index_of(int(s)) for s in args.steps.split(",")}
else:
    logs = np.log10(np.maximum(traj.steps.numpy(), 1.0))
    rows = {int(np.abs(logs - g).argmin()) for g in np.linspace(logs[0], logs[-1], args.max_checkpoints or len(traj))}
    rows |= {traj.index_of(s) for s in (events.memorised_step, events.generalised_step) if s is not None}
traj = traj.subset(sorted(rows))

# 2. calibration at the last checkpoint: where does the estimate stop depending on epsilon?
sections = []
if args.calibrate:
    t = time.perf_counter()
    cal = llc_calibration(traj, config=cfg)
    print(
        f"calibration at step {cal.step:,} ({time.perf_counter() - t:.1f} s): rows epsilon, columns gamma "
        f"{cal.gammas} (! flagged, * stable)"
    )
    for i, e in enumerate(cal.epsilons):
        cells = [
            f"{float(cal.llc[0, i, j]):9.3g}{'!' if cal.flagged[0, i, j] else '*' if cal.stable[0, i, j] else ' '}"
            for j in range(len(cal.gammas))
        ]
        print(f"  eps {e:7.0e}: " + " ".join(cells))
    sections.append(Section("Calibration", llc_calibration_figure(cal)))

# 3. the curve: every (checkpoint x chain) one row of the batched SGLD
t = time.perf_counter()
res = llc(traj, cfg)
seconds = time.perf_counter() - t
step_col = np.asarray(metrics["step"])


def at(col: str, step: int) -> float:
    """The metric at the last evaluated row at or before ``step`` (test metrics are not logged every step)."""
    values = np.asarray(metrics[col], dtype=np.float64)[: int(np.searchsorted(step_col, step, side="right"))]
    values = values[~np.isnan(values)]
    return float(values[-1]) if values.size else float("nan")


print(
    f"\n{run.config.name}: LLC of {len(traj)} checkpoints x {cfg.chains} chains in {seconds:.1f} s "
    f"(n = {res.n}, n*beta = {res.nbeta:.4g}, eps = {cfg.epsilon:g}, gamma = {cfg.gamma:g}, "
    f"{cfg.burnin} burn-in + {cfg.draws} draws)"
)
print(f"events: memorised {format_step(events.memorised_step)}, generalised {format_step(events.generalised_step)}")
print("     step  train acc  test acc      LLC  +- std  flags")
for k, s in enumerate(res.steps.tolist()):
    flags = ("negative " if res.negative[k].any() else "") + ("diverged" if res.diverged[k].any() else "")
    print(
        f"  {s:7,}  {at('train_acc', s):9.3f} {at('test_acc', s):9.3f} {float(res.llc[k]):8.2f} "
        f"{float(res.llc_std[k]):7.2f}  {flags}"
    )
peak = int(res.llc.argmax())
print(f"peak LLC {float(res.llc[peak]):.2f} at step {int(res.steps[peak]):,}; last {float(res.llc[-1]):.2f}")

# 4. figures -> one offline HTML file
sections = [
    Section("Training curves", training_curves_figure(metrics, events)),
    Section(
        "Local learning coefficient", llc_figure(res.steps, res.llc, res.llc_std, flagged=res.flagged, events=events)
    ),
    Section("SGLD chains", llc_traces_figure(res.steps, res.trace, res.init_loss, nbeta=res.nbeta, burnin=cfg.burnin)),
] + sections
out = write_html(run.path / "llc_curve.html", f"Local learning coefficient: {run.config.name}", sections)
print(f"report: {out}")

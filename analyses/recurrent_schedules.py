"""RNN / LSTM on ``<sos> x + y mod =`` (mod 91): grokking and weight-decay schedules.

The poster's findings, per architecture:

1. grokking happens (delayed generalisation after memorisation)            -> ``{cell}-mod91``
2. without weight decay, poor generalisation                               -> ``{cell}-mod91-nowd``
3. weight decay off at first, switched on late (0.02) still groks          -> ``{cell}-mod91-wd-late``
4. weight decay switched off early prevents grokking                       -> ``{cell}-mod91-wd-early-off``

and (``--fractions``) steps to generalise against the training-data fraction.

Each preset is trained into ``OUT/PRESET`` unless that folder already holds a finished run (then
it is reused, so the script can be re-run to just print the table); events come from
``mechgrok.detect_events`` on the logged metrics.

    python analyses/recurrent_schedules.py                              # all 8 presets
    python analyses/recurrent_schedules.py --cells rnn --variants=-nowd     # one variant (a leading "-" needs "=")
    python analyses/recurrent_schedules.py --cells lstm --fractions 0.3 0.5 0.8 --variants
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from mechgrok import Run, detect_events, preset, resume, train
from mechgrok.layout import RUN_FILES
from mechgrok.scripts import format_step, parse_sets


def run_or_reuse(name: str, out: Path, overrides: dict | None = None, sets: dict | None = None) -> Run:
    """The finished run of preset ``name`` with ``overrides`` (named in its folder) and ``sets``
    (the --set options, applied to every run) in ``OUT``: reused, resumed or trained."""
    folder = out / (name + "".join(f"-{k.split('.')[-1]}{v}" for k, v in (overrides or {}).items()))
    if (folder / RUN_FILES["summary"]).exists():
        return Run.open(folder)
    if (folder / RUN_FILES["config"]).exists():
        return resume(folder, progress=False).run
    return train(preset(name, {**(overrides or {}), **(sets or {})}), folder, progress=False).run


def describe(run: Run) -> str:
    m = run.metrics()
    ev = detect_events(m)
    s = run.summary() or {}
    evaluated = ~np.isnan(m["test_acc"])
    test, steps = m["test_acc"][evaluated], m["step"][evaluated]
    at_mem = float(test[steps <= ev.memorised_step][-1]) if ev.memorised_step is not None else float("nan")
    sched = run.config.optim.wd_schedule or "constant"
    return (
        f"{run.config.name:24s} frac {run.config.task.train_fraction:.2f} wd {run.config.optim.weight_decay:g} "
        f"sched {str(sched):28s} memorised {format_step(ev.memorised_step, 6)} (test acc then {at_mem:.2f}) "
        f"generalised {format_step(ev.generalised_step, 6)} final test {ev.final_test_acc:.3f} "
        f"max test {float(test.max()):.3f} -> {ev.phase}  [{s.get('steps', '?')} steps, {s.get('seconds', 0):.0f} s]"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", nargs="+", default=["rnn", "lstm"])
    ap.add_argument("--variants", nargs="*", default=["", "-nowd", "-wd-late", "-wd-early-off"])
    ap.add_argument("--fractions", nargs="*", type=float, default=[], help="train fractions for the base presets")
    ap.add_argument("--out", type=Path, default=Path("checkpoints/recurrent"))
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for every run, e.g. train.steps=500 (repeatable)",
    )
    args = ap.parse_args()
    sets = parse_sets(args.set)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    for cell in args.cells:
        for variant in args.variants:
            print(describe(run_or_reuse(f"{cell}-mod91{variant}", args.out, sets=sets)), flush=True)
        for frac in args.fractions:
            print(describe(run_or_reuse(f"{cell}-mod91", args.out, {"task.train_fraction": frac}, sets)), flush=True)


if __name__ == "__main__":
    main()

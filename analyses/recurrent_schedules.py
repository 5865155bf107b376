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
    python analyses/recurrent_schedules.py --cells rnn --variants "" -nowd
    python analyses/recurrent_schedules.py --cells lstm --fractions 0.3 0.5 0.8 --variants
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from mechgrok import Run, detect_events, preset, train
from mechgrok.layout import RUN_FILES


def run_or_reuse(name: str, out: Path, overrides: dict | None = None) -> Run:
    folder = out / (name + "".join(f"-{k.split('.')[-1]}{v}" for k, v in (overrides or {}).items()))
    if (folder / RUN_FILES["summary"]).exists():
        return Run.open(folder)
    if (folder / RUN_FILES["config"]).exists():
        train(None, folder, resume=True, progress=False)  # type: ignore[arg-type]
    else:
        cfg = preset(name).with_overrides(overrides or {})
        train(cfg, folder, progress=False)
    return Run.open(folder)


def describe(run: Run) -> str:
    m = run.metrics()
    ev = detect_events(m)
    s = run.summary() or {}
    test = m["test_acc"][~(m["test_acc"] != m["test_acc"])]  # evaluated rows
    steps = m["step"][~(m["test_acc"] != m["test_acc"])]
    at_mem = float(test[steps <= ev.memorised_step][-1]) if ev.memorised_step is not None else float("nan")
    sched = run.config.optim.wd_schedule or "constant"
    fmt = lambda x: "never" if x is None else f"{x:,}"  # noqa: E731
    return (f"{run.config.name:24s} frac {run.config.task.train_fraction:.2f} wd {run.config.optim.weight_decay:g} "
            f"sched {str(sched):28s} memorised {fmt(ev.memorised_step):>6s} (test acc then {at_mem:.2f}) "
            f"generalised {fmt(ev.generalised_step):>6s} final test {ev.final_test_acc:.3f} "
            f"max test {float(test.max()):.3f} -> {ev.phase}  [{s.get('steps', '?')} steps, {s.get('seconds', 0):.0f} s]")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", nargs="+", default=["rnn", "lstm"])
    ap.add_argument("--variants", nargs="*", default=["", "-nowd", "-wd-late", "-wd-early-off"])
    ap.add_argument("--fractions", nargs="*", type=float, default=[], help="train fractions for the base presets")
    ap.add_argument("--out", type=Path, default=Path("checkpoints/recurrent"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    for cell in args.cells:
        for variant in args.variants:
            print(describe(run_or_reuse(f"{cell}-mod91{variant}", args.out)), flush=True)
        for frac in args.fractions:
            print(describe(run_or_reuse(f"{cell}-mod91", args.out, {"task.train_fraction": frac})), flush=True)


if __name__ == "__main__":
    main()

"""Nanda et al. (2023), "Progress measures for grokking": the 1-layer transformer on (a + b) mod 113.

Trains the ``modadd-transformer`` preset (or continues / reuses the run folder), computes the
progress measures and Fourier probes on every checkpoint (``mechgrok.analyze``) and
locates the paper's three phases:

* **memorisation** - from the start until the train accuracy reaches 99% (``memorised_step``);
* **circuit formation** - from there until the test loss starts its fall: the restricted loss
  (key frequencies only) falls and the excluded loss (key frequencies removed) rises while the
  test loss stays high;
* **cleanup** - from the first checkpoint from which on the test loss stays below a tenth of its
  median after memorisation (it has left its plateau),
  until the later of: test accuracy >= 99% (``generalised_step``) and the test loss below the
  geometric mean of its peak and final value (the rule the probes use for the restricted loss,
  ``test_drop``); weight decay removes the memorising components.

The paper's claims checked here: restricted loss falls before test loss
(``restricted_drop_step < test_drop``, the same rule on both curves), excluded loss rises during circuit formation, a
few key frequencies, Fourier sparsity (Gini of the embedding spectrum) rising over training.

    python analyses/nanda_transformer.py                       # plain preset -> checkpoints/nanda
    python analyses/nanda_transformer.py --steps 16000         # shorter run
    python analyses/nanda_transformer.py --accelerated         # Grokfast-EMA + 3x lr (see RESULTS.md)
    python analyses/nanda_transformer.py --fast --steps 1000   # Grokfast-EMA lambda 5 + 10x lr + 3x wd
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from mechgrok import Run, analyze, load_analysis, preset, resume, train
from mechgrok.layout import ANALYSIS_FILES, RUN_FILES
from mechgrok.scripts import parse_sets

ACCELERATED = {"optim.grokfast_alpha": 0.98, "optim.grokfast_lambda": 2.0, "optim.lr": 3e-3, "optim.warmup_steps": 100}
# benchmarks/time_to_grok.py's fastest variant (grokfast5-lr10-wd3)
FAST = {
    "optim.grokfast_alpha": 0.98,
    "optim.grokfast_lambda": 5.0,
    "optim.lr": 1e-2,
    "optim.warmup_steps": 100,
    "optim.weight_decay": 3.0,
}


def first_stable_step(steps: torch.Tensor, cond: torch.Tensor) -> int | None:
    """First step from which ``cond`` holds at every later checkpoint (None if not at the last)."""
    if cond.numel() == 0 or not bool(cond[-1]):
        return None
    bad = torch.nonzero(~cond, as_tuple=False)
    return int(steps[int(bad[-1, 0]) + 1 if bad.numel() else 0])


def drop_step(steps: torch.Tensor, loss: torch.Tensor) -> int | None:
    """First checkpoint from which on ``loss`` stays below the geometric mean of its peak and its
    final value (None unless it falls at least 2x) - the rule the probes use for the restricted loss."""
    high, low = float(loss.max()), float(loss[-1])
    if not (math.isfinite(high) and high > 0 and low <= high / 2):
        return None
    return first_stable_step(steps, loss <= math.sqrt(high * max(low, 1e-300)))


def at(steps: torch.Tensor, series: torch.Tensor, step: int | None) -> str:
    if step is None:
        return "-"
    i = int(torch.searchsorted(steps, torch.tensor(step), right=True)) - 1
    return f"{float(series[max(i, 0)]):.3g}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="run folder (default checkpoints/nanda or checkpoints/nanda-accelerated)")
    ap.add_argument("--steps", type=int, help="override train.steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--accelerated", action="store_true", help="Grokfast-EMA (0.98, 2) and lr 3e-3 with 100 warmup steps"
    )
    ap.add_argument("--fast", action="store_true", help="Grokfast-EMA (0.98, 5), lr 1e-2 with 100 warmup steps, wd 3")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--analyse-only", action="store_true", help="analyse the run folder as it is (e.g. stopped early)")
    ap.add_argument("--reanalyze", action="store_true", help="recompute the stored analysis")
    ap.add_argument("--max-checkpoints", type=int, default=None, help="analyse an evenly spaced subset")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, applied after the variant's (repeatable)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    over: dict[str, object] = {"train.seed": args.seed, "train.device": args.device}
    if args.steps:
        over["train.steps"] = args.steps
    if args.accelerated and args.fast:
        raise SystemExit("--accelerated and --fast: choose one")
    if args.accelerated:
        over.update(ACCELERATED)
    if args.fast:
        over.update(FAST)
    cfg = preset("modadd-transformer", {**over, **parse_sets(args.set)})
    name = "nanda-accelerated" if args.accelerated else "nanda-fast" if args.fast else "nanda"
    out = args.out or Path("checkpoints") / name

    # train, continue a killed run, or reuse a finished one (--analyse-only: as it stands)
    if args.analyse_only:
        run = Run.open(out)
        print(f"analysing {out} as it stands ({len(run.steps)} checkpoints, last step {run.steps[-1]:,})")
    elif (out / RUN_FILES["summary"]).exists():
        run = Run.open(out)
        print(f"reusing finished run {out}")
    elif (out / RUN_FILES["config"]).exists():
        print(f"continuing {out}")
        run = resume(out).run
    else:
        train(cfg, out)
        run = Run.open(out)
    s = run.summary() or {}
    if s:
        print(
            f"training: {s.get('steps', '?'):,} steps in {s.get('seconds', float('nan')):.0f} s "
            f"({s.get('steps_per_second', float('nan')):.2f} steps/s, device {run.config.train.device}, "
            f"{args.threads} thread(s))"
        )

    if (out / ANALYSIS_FILES["dir"] / ANALYSIS_FILES["records"]).exists() and not args.reanalyze:
        an = load_analysis(out)
    else:
        an = analyze(run, max_checkpoints=args.max_checkpoints, progress=True)
    steps = an.steps
    pr = an.group("progress")
    ev = an.events
    extra = ev.extra
    test_drop = drop_step(steps, pr["test_loss"])
    # the cleanup starts when the test loss leaves its plateau: below a tenth of its median after
    # memorisation from then on (the peak itself is spiky, a poor reference)
    after = pr["test_loss"][steps >= (ev.memorised_step or 0)]
    plateau = float(after.median()) if after.numel() else float(pr["test_loss"].max())
    test_fall = first_stable_step(steps, pr["test_loss"] <= plateau / 10)
    cleanup_end = (
        max(s for s in (test_drop, ev.generalised_step) if s is not None)
        if (test_drop or ev.generalised_step)
        else None
    )
    kf = an.key_frequencies
    sparsity = an.tensors.get("fourier/sparsity")

    print(f"\nkey frequencies (final model): {kf}")
    print(f"memorised (train acc >= 99%):          step {ev.memorised_step}")
    print(f"key frequencies established:           step {extra.get('key_freq_step')}")
    print(f"excluded loss >= 10x train loss from:  step {extra.get('excluded_rise_step')}")
    print(f"restricted loss drop:                  step {extra.get('restricted_drop_step')}")
    print(
        f"test loss below plateau/10 from:       step {test_fall}  (plateau = median after memorisation, {plateau:.3g})"
    )
    print(f"test loss drop (same rule as restr.):  step {test_drop}")
    print(f"generalised (test acc >= 99%):         step {ev.generalised_step}")
    print("\nphases (Nanda et al.: memorisation / circuit formation / cleanup):")
    print(f"  memorisation       0 .. {ev.memorised_step}")
    print(f"  circuit formation  {ev.memorised_step} .. {test_fall}")
    print(f"  cleanup            {test_fall} .. {cleanup_end}")
    rd = extra.get("restricted_drop_step")
    verdict = "yes" if rd is not None and test_drop is not None and rd < test_drop else "no"
    print(f"restricted loss falls before test loss: {verdict} ({rd} vs {test_drop})")

    print("\nat the phase boundaries:")
    print(
        f"{'step':>8s} {'train_loss':>11s} {'test_loss':>10s} {'restricted':>11s} {'excluded':>10s} "
        f"{'sum_sq_w':>9s} {'gini(W_E)':>9s}"
    )
    marks = [
        0,
        ev.memorised_step,
        extra.get("excluded_rise_step"),
        rd,
        test_fall,
        test_drop,
        ev.generalised_step,
        int(steps[-1]),
    ]
    for m in sorted({m for m in marks if m is not None}):
        print(
            f"{m:8d} {at(steps, pr['train_loss'], m):>11s} {at(steps, pr['test_loss'], m):>10s} "
            f"{at(steps, pr['restricted_loss'], m):>11s} {at(steps, pr['excluded_loss'], m):>10s} "
            f"{at(steps, pr['sum_sq_weights'], m):>9s} {at(steps, sparsity, m) if sparsity is not None else '-':>9s}"
        )
    print(f"\n{an.summary}")


if __name__ == "__main__":
    main()

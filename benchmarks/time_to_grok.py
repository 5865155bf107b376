"""Time to grok: steps and seconds to >= 99% test accuracy, plain vs accelerated, side by side.

For each preset (default: ``modadd-mlp24`` and ``modadd-transformer``), each seed and each
variant, train until the test accuracy first reaches the threshold (evaluated every
``--eval-every`` steps) or the step budget runs out, and print steps, seconds and the ratios
plain / variant. Variants (``--variants``, names below) are overrides of the preset:

* ``plain``        - the preset as it is;
* ``grokfast``     - Grokfast-EMA, alpha 0.98, lambda 2 (Lee et al. 2024's EMA setting for their
  algorithmic task; their README: ``--filter ema --alpha 0.98 --lamb 2.0``);
* ``grokfast5``    - Grokfast-EMA, alpha 0.98, lambda 5 (lambda 5 is their MA-filter setting);
* ``lr3``          - 3x the preset's learning rate with 100 warmup steps;
* ``grokfast-lr3`` - both;
* ``grokfast5-lr3``, ``grokfast-lr10``, ``grokfast5-lr10``, ``grokfast5-lr20``, ``grokfast8-lr10`` -
  Grokfast-EMA (alpha 0.98) with lambda 2/5/8 and 3x/10x/20x the learning rate (100 warmup steps);
* ``grokfast5-lr3-wd3``, ``grokfast5-lr10-wd3`` - the same with 3x the weight decay.
  ``grokfast5-lr10-wd3`` is the fastest found for the transformer (RESULTS.md, section 2).

Each run repeats the trainer's update exactly (same model init, AdamW, float64 loss, Grokfast,
warmup, schedules) in a loop that can stop at the threshold; ``--verify`` (on by default) first
checks that a few steps of this loop give bitwise the weights of :func:`mechgrok.train`.
At the end of an accelerated run the key frequencies of the final model are printed (with
``mechgrok.probes.key_frequencies``) next to those of the plain run, to check the mechanism.

Seconds are wall-clock on whatever else the machine is doing (the 1-minute load average is
printed); steps are the robust measure.

    python benchmarks/time_to_grok.py                                  # defaults below
    python benchmarks/time_to_grok.py modadd-mlp24 --seeds 0 1 2 --variants plain grokfast
    python benchmarks/time_to_grok.py modadd-transformer --seeds 0 --max-steps 30000
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass

import torch

from mechgrok import RunConfig, build_model, loss_and_accuracy, make_dataset, preset, train
from mechgrok.train import grokfast_update

VARIANTS: dict[str, dict[str, object]] = {
    "plain": {},
    "grokfast": {"optim.grokfast_alpha": 0.98, "optim.grokfast_lambda": 2.0},
    "grokfast5": {"optim.grokfast_alpha": 0.98, "optim.grokfast_lambda": 5.0},
    "lr3": {"optim.lr": "x3", "optim.warmup_steps": 100},
    "grokfast-lr3": {
        "optim.grokfast_alpha": 0.98,
        "optim.grokfast_lambda": 2.0,
        "optim.lr": "x3",
        "optim.warmup_steps": 100,
    },
    "grokfast5-lr3": {
        "optim.grokfast_alpha": 0.98,
        "optim.grokfast_lambda": 5.0,
        "optim.lr": "x3",
        "optim.warmup_steps": 100,
    },
    "grokfast-lr10": {
        "optim.grokfast_alpha": 0.98,
        "optim.grokfast_lambda": 2.0,
        "optim.lr": "x10",
        "optim.warmup_steps": 100,
    },
    "grokfast5-lr10": {
        "optim.grokfast_alpha": 0.98,
        "optim.grokfast_lambda": 5.0,
        "optim.lr": "x10",
        "optim.warmup_steps": 100,
    },
    "grokfast5-lr3-wd3": {
        "optim.grokfast_alpha": 0.98,
        "optim.grokfast_lambda": 5.0,
        "optim.lr": "x3",
        "optim.warmup_steps": 100,
        "optim.weight_decay": "x3",
    },
    "grokfast5-lr10-wd3": {
        "optim.grokfast_alpha": 0.98,
        "optim.grokfast_lambda": 5.0,
        "optim.lr": "x10",
        "optim.warmup_steps": 100,
        "optim.weight_decay": "x3",
    },
    "grokfast5-lr20": {
        "optim.grokfast_alpha": 0.98,
        "optim.grokfast_lambda": 5.0,
        "optim.lr": "x20",
        "optim.warmup_steps": 100,
    },
    "grokfast8-lr10": {
        "optim.grokfast_alpha": 0.98,
        "optim.grokfast_lambda": 8.0,
        "optim.lr": "x10",
        "optim.warmup_steps": 100,
    },
}
# "xK": K times the preset's value of that field

# budgets (steps) and evaluation cadence per preset; the transformer's plain run is ~10k+ steps
# at ~0.1-0.3 s/step on a shared 2-core CPU, so it gets one seed by default
DEFAULTS = {
    "modadd-mlp24": {"seeds": [0, 1, 2], "max_steps": 50_000, "eval_every": 10},
    "modadd-transformer": {"seeds": [0], "max_steps": 25_000, "eval_every": 10},
}


def variant_config(base: RunConfig, name: str, seed: int) -> RunConfig:
    over: dict[str, object] = {"train.seed": seed}
    for key, value in VARIANTS[name].items():
        if isinstance(value, str) and value.startswith("x"):
            section, field = key.split(".")
            value = float(value[1:]) * getattr(getattr(base, section), field)
        over[key] = value
    return base.with_overrides(over).with_overrides({"name": f"{base.name}:{name}"})


class Loop:
    """The trainer's full-batch update (mechgrok.train._train) as a steppable loop."""

    def __init__(self, cfg: RunConfig):
        oc, tc = cfg.optim, cfg.train
        self.cfg = cfg
        self.data = make_dataset(cfg.task)
        if oc.l1 > 0 or oc.l1_schedule or 0 < oc.batch_size < self.data.train_x.shape[0]:
            raise SystemExit(f"{cfg.name}: time_to_grok handles full-batch presets without L1 only")
        self.model = build_model(cfg.model, cfg.task, seed=tc.seed)
        self.params = list(self.model.parameters())
        self.opt = torch.optim.AdamW(self.params, lr=oc.lr, betas=oc.betas, eps=oc.eps, weight_decay=oc.weight_decay)
        self.ema: list[torch.Tensor] | None = None
        self.step = 0

    def update(self) -> None:
        oc = self.cfg.optim
        loss, _ = loss_and_accuracy(self.model(self.data.train_x), self.data.train_y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in self.params if p.grad is not None]
        if oc.grokfast_lambda > 0:
            self.ema = grokfast_update(grads, self.ema, oc.grokfast_alpha, oc.grokfast_lambda)
        if oc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, oc.grad_clip)
        for group in self.opt.param_groups:
            group["lr"] = oc.lr_at(self.step)
            group["weight_decay"] = oc.weight_decay_at(self.step)
        self.opt.step()
        self.step += 1

    @torch.no_grad()
    def test_acc(self) -> float:
        return float(loss_and_accuracy(self.model(self.data.test_x), self.data.test_y)[1])


def verify(cfg: RunConfig, steps: int = 5) -> None:
    """The loop must reproduce the trainer bitwise (else the benchmark measures something else)."""
    short = cfg.with_overrides({"train.steps": steps})
    ref = train(short, progress=False).model.state_dict()
    loop = Loop(short)
    for _ in range(steps):
        loop.update()
    for name, value in loop.model.state_dict().items():
        if not torch.equal(value, ref[name]):
            raise SystemExit(f"verify: {cfg.name}: the benchmark loop diverges from mechgrok.train at {name}")


@dataclass
class Result:
    preset: str
    variant: str
    seed: int
    steps: int | None  # None: did not reach the threshold within the budget
    seconds: float
    final_acc: float
    key_freqs: list[int] | None


def time_one(
    cfg: RunConfig, threshold: float, max_steps: int, eval_every: int
) -> tuple[int | None, float, float, torch.nn.Module]:
    loop = Loop(cfg)
    t0 = time.perf_counter()
    acc = 0.0
    while loop.step < max_steps:
        loop.update()
        if loop.step % eval_every == 0:
            acc = loop.test_acc()
            if acc >= threshold:
                return loop.step, time.perf_counter() - t0, acc, loop.model
    return None, time.perf_counter() - t0, acc, loop.model


def plain_from_run(run_dir: str, cfg: RunConfig, threshold: float) -> tuple[int | None, float, float, torch.nn.Module]:
    """Steps/seconds to the threshold read from a finished run folder of the same configuration.

    Saves re-training the slow plain transformer when its run already exists (e.g. from
    ``analyses/nanda_transformer.py``). Seconds = steps to threshold / the run's steps per second
    (its training loop also evaluated and checkpointed, so this slightly overstates the time).
    """
    from mechgrok import Run

    run = Run.open(run_dir)
    same = lambda c: (c.task, c.model, c.optim, c.train.seed)
    if same(run.config) != same(cfg):
        raise SystemExit(f"--plain-from {run_dir}: its config differs from {cfg.name} (task/model/optim/seed)")
    summary = run.summary()
    steps = next((int(r["step"]) for r in run.metrics_rows() if r.get("test_acc", 0.0) >= threshold), None)
    acc = max(r.get("test_acc", 0.0) for r in run.metrics_rows())
    if summary is not None:
        secs = (steps if steps is not None else summary["steps"]) / summary["steps_per_second"]
    else:
        # a run stopped before its end (no summary): time between the checkpoint files of step 0
        # and of the first checkpoint at or after the threshold step
        if steps is None:
            raise SystemExit(f"--plain-from {run_dir}: unfinished and never reached the threshold")
        at = min(s for s in run.steps if s >= steps)
        secs = run.checkpoint_path(at).stat().st_mtime - run.checkpoint_path(0).stat().st_mtime
    return steps, secs, acc, run.model(run.steps[-1])


def key_freqs_of(model: torch.nn.Module, cfg: RunConfig) -> list[int] | None:
    try:
        from mechgrok.probes import key_frequencies
    except ImportError:  # the probes land separately
        return None
    return key_frequencies(model.eval(), cfg.task)


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "presets", nargs="*", default=list(DEFAULTS), help="presets (default: modadd-mlp24 modadd-transformer)"
    )
    ap.add_argument("--variants", nargs="+", default=["plain", "grokfast", "grokfast-lr3"], choices=list(VARIANTS))
    ap.add_argument("--seeds", nargs="+", type=int, help="model seeds (default per preset: mlp24 0 1 2, transformer 0)")
    ap.add_argument("--max-steps", type=int, help="step budget per run (default per preset)")
    ap.add_argument("--eval-every", type=int, help="test-accuracy cadence (default 10)")
    ap.add_argument("--threshold", type=float, default=0.99)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-verify", dest="verify", action="store_false")
    ap.add_argument(
        "--plain-from",
        action="append",
        default=[],
        metavar="PRESET=RUN",
        help="read the plain run of PRESET (seed 0) from a finished run folder instead of training it",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    results: list[Result] = []
    print(
        f"# threshold test acc >= {args.threshold}, {args.threads} thread(s), torch {torch.__version__}, "
        f"load avg at start {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    print(
        f"{'preset':20s} {'variant':13s} {'seed':>4s} {'steps':>7s} {'seconds':>8s} {'acc':>6s}  key frequencies",
        flush=True,
    )
    for name in args.presets:
        d = DEFAULTS.get(name, {"seeds": [0], "max_steps": 20_000, "eval_every": 10})
        seeds = args.seeds or d["seeds"]
        max_steps = args.max_steps or d["max_steps"]
        eval_every = args.eval_every or d["eval_every"]
        base = preset(name)
        for seed in seeds:
            for variant in args.variants:
                cfg = variant_config(base, variant, seed)
                reuse = dict(x.split("=", 1) for x in args.plain_from).get(name)
                if variant == "plain" and reuse and seed == 0:
                    steps, secs, acc, model = plain_from_run(reuse, cfg, args.threshold)
                else:
                    if args.verify:
                        verify(cfg)
                    steps, secs, acc, model = time_one(cfg, args.threshold, max_steps, eval_every)
                kf = key_freqs_of(model, cfg) if base.task.kind == "modular" else None
                results.append(Result(name, variant, seed, steps, secs, acc, kf))
                print(
                    f"{name:20s} {variant:13s} {seed:4d} {_fmt(steps, '7d') if steps else f'>{max_steps}':>7s} "
                    f"{secs:8.1f} {acc:6.3f}  {kf if kf is not None else '(probe unavailable)'}",
                    flush=True,
                )

    print("\n# ratios (plain / variant), per seed and median; '>' = plain did not reach the threshold in its budget")
    for name in args.presets:
        for variant in args.variants:
            if variant == "plain":
                continue
            step_r, sec_r = [], []
            for r in results:
                if r.preset != name or r.variant != variant:
                    continue
                plain = next(
                    (q for q in results if q.preset == name and q.variant == "plain" and q.seed == r.seed), None
                )
                if plain is None or r.steps is None:
                    continue
                p_steps = (
                    plain.steps
                    if plain.steps is not None
                    else (args.max_steps or DEFAULTS.get(name, {}).get("max_steps", 0))
                )
                step_r.append(p_steps / r.steps)
                sec_r.append(plain.seconds / r.seconds)
            if step_r:
                tag = ">" if any(q.steps is None for q in results if q.preset == name and q.variant == "plain") else ""
                print(
                    f"{name:20s} {variant:13s} steps x{tag}{statistics.median(step_r):.1f} "
                    f"(per seed {', '.join(f'{x:.1f}' for x in step_r)}), seconds x{tag}{statistics.median(sec_r):.1f}"
                )
    print(f"# load avg at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

"""Bring your own task: a dataset factory named in the config (``task.kind="custom"``).

The task here is one of Power et al.'s original grokking tables, (a^2 + a b + b^2) mod p, which
mechgrok does not build in. :func:`make` below is the factory: it receives the run's TaskConfig and
returns the train / test split as int64 tokens ``[n, 2]`` (MLP ``pairs`` format) and labels in
[0, p). The config names it by import path (``custom_task:make``; run this file from anywhere -
its folder is on ``sys.path`` when Python runs it), so the config stays plain JSON and any later
process (``mechgrok analyze``, ``mechgrok report``, a resumed run) rebuilds the same data.

Everything that needs no task structure works on it: training, phases and events, progress bars,
reports, sweeps. Writes the run's report into the run folder.

    python analyses/custom_task.py checkpoints/custom-quadratic
    python analyses/custom_task.py /tmp/tiny --set task.p=11 --set train.steps=300
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import mechgrok as mg
from mechgrok.scripts import format_step, open_or_train, parse_sets


def make(task: mg.TaskConfig) -> dict[str, torch.Tensor]:
    """(a^2 + a b + b^2) mod p over all pairs, split by the task's seed and train fraction."""
    p = task.p
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    a, b = a.flatten(), b.flatten()
    y = (a * a + a * b + b * b) % p
    perm = torch.randperm(p * p, generator=torch.Generator().manual_seed(task.seed))
    n_train = round(task.train_fraction * p * p)
    x = torch.stack([a, b], dim=-1)
    train, test = perm[:n_train], perm[n_train:]
    return {"train_x": x[train], "train_y": y[train], "test_x": x[test], "test_y": y[test]}


CONFIG = mg.RunConfig(
    name="custom-quadratic",
    task=mg.TaskConfig(kind="custom", factory="custom_task:make", p=47, format="pairs", train_fraction=0.5),
    model=mg.ModelConfig(kind="mlp", d_model=128, d_mlp=256, tied_embed=False),
    optim=mg.OptimConfig(lr=1e-3, weight_decay=1.0),
    train=mg.TrainConfig(steps=10_000, checkpoint_every=100, log_checkpoints=30, eval_every=10),
)

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="A user-defined task through task.factory.")
    parser.add_argument("run_dir", nargs="?", default="checkpoints/custom-quadratic")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny models: extra threads only spin-wait
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # the factory's module, for any caller
    try:
        run = open_or_train(args.run_dir, CONFIG.with_overrides(parse_sets(args.set)))
        res = mg.analyze(run.path, progress=False)
    except (mg.ConfigError, mg.StoreError) as e:
        raise SystemExit(f"error: {e}") from None
    ev = res.events
    print(
        f"{run.config.name}: {ev.phase}; memorised at step {format_step(ev.memorised_step)}, "
        f"generalised at step {format_step(ev.generalised_step)}"
    )
    print(res.summary)
    print(f"report: {mg.write_run_report(run.path)}")

"""Grokking at the edge of numerical stability (Prieto et al. 2025), without weight decay.

Trains one preset (default ``modadd-mlp24``, with ``--set`` overrides) four ways, all with
weight decay 0:

* ``ce-float32`` - cross-entropy whose softmax runs in float32: the logits scale up, the
  training samples' losses round to exactly 0 (softmax collapse) and learning stalls;
* ``ce-float64`` - the same loss in float64 (mechgrok's default): collapse is postponed;
* ``stablemax``  - StableMax cross-entropy in float32;
* ``orthograd``  - float32 cross-entropy with ⊥Grad wrapping AdamW (``optim.orthograd``);

and prints, per variant, the step test accuracy first reaches 99%, the final test accuracy, the
softmax-collapse fraction (final and largest), the gradient-weight alignment and the logit norm
at the last checkpoint (``mechgrok.stability_over_training``).

    python analyses/stability_no_wd.py checkpoints/stability --set train.steps=20000
    python analyses/stability_no_wd.py /tmp/tiny --set task.p=13 --set model.d_model=32 --set train.steps=300
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import mechgrok as mg
from mechgrok.scripts import parse_sets

VARIANTS = {
    "ce-float32": {"optim.loss_dtype": "float32"},
    "ce-float64": {"optim.loss_dtype": "float64"},
    "stablemax": {"optim.loss": "stablemax", "optim.loss_dtype": "float32"},
    "orthograd": {"optim.orthograd": True, "optim.loss_dtype": "float32"},
}

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("out", nargs="?", default="checkpoints/stability", help="folder for one run folder per variant")
parser.add_argument("--preset", default="modadd-mlp24")
parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
args = parser.parse_args()
torch.set_num_threads(1)

try:
    base = mg.preset(args.preset).with_overrides(
        {**parse_sets(args.set), "optim.weight_decay": 0.0, "optim.wd_schedule": ""}
    )
except mg.ConfigError as e:
    raise SystemExit(f"error: {e}") from None

print(
    f"{'variant':<11} {'test>=99%':>9} {'final test':>10} {'collapse end':>12} {'collapse max':>12} "
    f"{'alignment':>9} {'logit norm':>10}"
)
for name in args.variants:
    folder = Path(args.out) / name
    run = (
        mg.Run.open(folder)
        if folder.exists()
        else mg.train(base.with_overrides(VARIANTS[name]), folder, progress=False).run
    )
    st = mg.stability_over_training(run)
    s = run.summary()
    grok = s["step_test_acc_99"]
    print(
        f"{name:<11} {grok if grok is not None else '-':>9} {s['final_test_acc']:>10.3f} "
        f"{float(st['collapse_fraction'][-1]):>12.1%} {float(st['collapse_fraction'].max()):>12.1%} "
        f"{float(st['alignment'][-1]):>9.2f} {float(st['logit_norm'][-1]):>10.3g}"
    )

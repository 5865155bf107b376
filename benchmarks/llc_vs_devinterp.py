"""mechgrok's LLC against devinterp's on the same checkpoint with the same settings (not CI).

Needs ``devinterp`` (1.x: ``devinterp.slt.sampler.estimate_learning_coeff_with_summary`` with
``devinterp.optim.SGLD``) installed in a *side* environment next to mechgrok (it pulls in large
dependencies; do not install it into the project's venv). Without it the script says so and exits
with status 0.

Both run SGLD from the checkpoint with the same step size (devinterp's ``lr``), localisation,
``nbeta``, chains, burn-in and draws, full-batch on the run's training set, with the per-example
mean cross-entropy as the loss. The estimates are random: expect agreement within the chains'
spread, not to the digit (the generators differ). Known differences: devinterp's ``init_loss`` is
the first batch's loss at ``w*`` (here the whole set: identical with a full batch); devinterp's
default ``nbeta`` is ``batch_size / log(batch_size)``, so pass ``--nbeta`` or rely on the full
batch making it ``n / log n`` for both.

    python benchmarks/llc_vs_devinterp.py checkpoints/modadd-mlp24 --step -1 --chains 4 --draws 200
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import time

import torch
import torch.nn.functional as F

import mechgrok as mg
from mechgrok.probes.llc import LLCConfig, llc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--step", type=int, default=-1, help="checkpoint row (default: the last)")
    ap.add_argument("--epsilon", type=float, default=LLCConfig.epsilon)
    ap.add_argument("--gamma", type=float, default=LLCConfig.gamma)
    ap.add_argument("--nbeta", type=float, default=None)
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--burnin", type=int, default=LLCConfig.burnin)
    ap.add_argument("--draws", type=int, default=LLCConfig.draws)
    args = ap.parse_args()
    if importlib.util.find_spec("devinterp") is None:
        print("devinterp is not installed here: skipped (install it in a side environment to compare)")
        return 0
    torch.set_num_threads(1)

    run = mg.Run.open(args.run)
    traj = run.trajectory()
    row = args.step % len(traj)
    data = mg.make_dataset(run.config.task)
    n = int(data.train_y.shape[0])
    nbeta = args.nbeta if args.nbeta is not None else n / math.log(n)
    cfg = LLCConfig(
        epsilon=args.epsilon, gamma=args.gamma, nbeta=nbeta, chains=args.chains, burnin=args.burnin, draws=args.draws
    )

    t = time.perf_counter()
    ours = llc(traj, cfg, rows=[row])
    t_ours = time.perf_counter() - t
    print(
        f"{run.path} step {int(traj.steps[row]):,}: n = {n}, nbeta = {nbeta:.4g}, eps = {cfg.epsilon:g}, "
        f"gamma = {cfg.gamma:g}, {cfg.chains} chains, {cfg.burnin} burn-in, {cfg.draws} draws"
    )
    print(f"mechgrok : llc {float(ours.llc[0]):8.3f} +- {float(ours.llc_std[0]):.3f}   ({t_ours:.1f} s)")

    from devinterp.optim import SGLD
    from devinterp.slt.sampler import estimate_learning_coeff_with_summary

    model = traj.model(row)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(data.train_x, data.train_y), batch_size=n, shuffle=True
    )

    def evaluate(m, batch):
        x, y = batch
        logits = m(x).double()
        loss = (
            F.binary_cross_entropy_with_logits(logits[..., 0], y.double())
            if logits.shape[-1] == 1
            else F.cross_entropy(logits, y)
        )
        return loss, {}

    kwargs = {
        "sampling_method": SGLD,
        "optimizer_kwargs": {"lr": cfg.epsilon, "localization": cfg.gamma, "nbeta": nbeta},
        "num_chains": cfg.chains,
        "num_draws": cfg.draws,
        "num_burnin_steps": cfg.burnin,
        "num_steps_bw_draws": 1,
        "device": "cpu",
        "verbose": False,
        "seed": cfg.seed,
    }
    t = time.perf_counter()
    theirs = estimate_learning_coeff_with_summary(model, loader, evaluate=evaluate, **kwargs)
    t_theirs = time.perf_counter() - t
    mean = float(theirs.get("llc/mean", theirs.get("llc_average", float("nan"))))
    std = float(theirs.get("llc/std", theirs.get("llc_std", float("nan"))))
    print(f"devinterp: llc {mean:8.3f} +- {std:.3f}   ({t_theirs:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

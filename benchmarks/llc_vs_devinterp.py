"""mechgrok's LLC against devinterp's on the same checkpoint with the same settings (not CI).

Prints both estimates (mean +- std over chains), both wall times and the time per chain-step;
``--checkpoints K`` also times what a devinterp user does for a curve (devinterp called once per
checkpoint, its chains one after the other) against mechgrok's vectorised ``llc(traj, cfg,
rows=...)`` on the same last ``K`` checkpoints.

devinterp pulls in large dependencies (2.x: HF ``datasets``, ``xarray``, ``zarr``, ``pydantic``,
``transformers``): run this from a *side* environment, never the project's venv, with mechgrok
installed there without its dependency tree (``pip install -e .`` would also pull wandb and
accelerate through transformer-lens)::

    python -m venv /work/dvenv && /work/dvenv/bin/pip install devinterp torch
    /work/dvenv/bin/pip install --no-deps -e . einops plotly narwhals transformer-lens==4.3.0 \\
        jaxtyping wadler_lindig fancy-einsum beartype typeguard
    OMP_NUM_THREADS=1 /work/dvenv/bin/python benchmarks/llc_vs_devinterp.py RUN --checkpoints 10

devinterp 1.x (e.g. 1.3.2) runs through ``estimate_learning_coeff_with_summary`` instead; a second
side environment can borrow torch and mechgrok from the first::

    python -m venv /work/dvenv1
    echo "import site; site.addsitedir('/work/dvenv/lib/python3.11/site-packages')" \\
        > /work/dvenv1/lib/python3.11/site-packages/zz_dvenv.pth
    /work/dvenv1/bin/pip install --no-deps 'devinterp<2' cloudpickle

Without devinterp the script prints one line and exits with status 0.

What is the same: the start ``w*`` (the checkpoint, in the precision ``--dtype`` names: float32,
mechgrok's default ``LLCConfig.dtype``, hands devinterp a float32 copy of the model; ``model``
runs both in the run's own precision), the update ``w <- w - (eps/2) (nbeta grad L(w) + gamma (w -
w*)) + sqrt(eps) N(0, 1)`` (devinterp's ``lr`` is our ``epsilon``; its ``localization`` our
``gamma``: in 2.x ``SGMCMC.sgld`` a ``GaussianPrior(localization, center="initial")`` whose
gradient is ``localization * (w - w*)``, added to ``nbeta * grad`` before the ``lr/2`` step, as
in 1.x ``SGLD`` and in mechgrok; ``noise_level`` 1 and no weight decay / ``llc_weight_decay`` 0
for both), ``nbeta`` (passed explicitly: 2.x has no default, 1.x's default is ``batch_size /
log(batch_size)``, which with the full batch is our ``n / log n``), chains, burn-in, draws, one
step between draws, the full training set as one batch every step, and the per-example mean
cross-entropy (BCE for one logit) without weight decay. Draw ``k`` is the loss at the start of
step ``burnin + k``, before that step's update, in all three.

Differences found in the sources (devinterp 2.0.1 ``slt/sampling.py``, ``slt/sampler.py``,
``slt/llc.py``, ``optim/sgmcmc.py``, ``optim/prior.py``; 1.3.2 ``slt/sampler.py``,
``backends/default/slt/sampler.py``, ``slt/llc.py``, ``optim/sgld.py``, ``utils.py``):

* 2.x's ``llc_mean`` / ``llc_per_chain`` average the loss over *every* step, burn-in included
  (``compute_llc``: "averages sampling_loss_micro over every step (including burn-in)"), so with
  100 burn-in steps from ``w*`` it is lower than the draws-only estimate of 1.x and mechgrok. The
  table prints both definitions for both tools: "draws" (mechgrok's and 1.x's) and "all steps"
  (2.x's; recomputed from mechgrok's trace, which holds the same ``burnin + draws`` losses).
* 2.x's ``llc_std`` is xarray's population std (``ddof=0``); mechgrok and 1.x use ``ddof=1``.
  The table uses ``ddof=1`` for every row; 2.x's own numbers are printed on a separate line.
* ``init_loss``: 2.x averages ``num_init_loss_batches`` (default 32) batches of its shuffled,
  cycled loader per chain and then over chains, in float32; 1.x averages ``num_chains`` batches
  (at most one epoch) as Python floats; mechgrok takes the full-batch ``L_n(w*)`` in float64. With
  the full batch all are ``L_n(w*)`` (2.x is called with ``num_init_loss_batches=1`` so as not to
  evaluate the same batch 32 times). All three subtract it.
* Losses: 2.x calls ``loss_fn(model, input_ids) -> [batch, seq-1]`` per-token losses, casts them
  to float32, backpropagates their mean, stores them in a zarr store as float32 and averages
  them with xarray; 1.x keeps the draws' losses in float32 and multiplies by a float32 ``nbeta``;
  mechgrok sums per-example losses in float64. mechgrok's float32 chains also use a float32
  soft-max (devinterp here: the cross-entropy in the model's precision).
* Data: 2.x only takes an HF ``datasets.Dataset`` with an ``input_ids`` column of sequences of
  length >= 2 and predicts the next token; a classifier is plugged in here through a ``loss_fn``
  that reads the example index from ``input_ids[:, 0]`` (rows ``[i, i]``) and returns its loss as
  a ``[batch, 1]`` column. Minibatches (not used here) would differ: 2.x's ``epoch_mode="cycle"``
  replays the first epoch's shuffle and by default gives every chain the same batches; mechgrok
  draws a fresh subset per step and chain.
* Noise and seeds: devinterp draws the noise from the *global* torch generator reseeded per chain
  (2.x ``set_seed(init_seed + chain)`` also reseeds numpy and ``random``; 1.x seeds from
  ``SeedSequence(seed)``); mechgrok gives each chain its own generator seeded from ``(seed,
  chain)`` and leaves the global state alone. Same distribution, different numbers: the
  estimates agree within the chains' spread, not to the digit.
* Steps: devinterp runs ``burnin + draws * steps_between_draws`` steps, mechgrok ``burnin +
  (draws - 1) * steps_between_draws + 1``; 1.x records draw ``k`` at step ``burnin + (k + 1) *
  steps_between_draws - 1``, 2.x and mechgrok at ``burnin + k * steps_between_draws``. All the
  same with one step between draws, the only setting used here.
* devinterp 2.x takes any module with ``cfg.n_heads`` for a TransformerLens model (it calls
  ``model.to(device, print_details=False)`` and, without a ``loss_fn``, ``model(input_ids,
  return_type="logits")``); mechgrok's models have such a ``cfg``, so they are handed over behind
  a plain wrapper module (same parameters, same forward).
* 1.x returns no ``init_loss``: its row in the table shows the one implied by its own numbers
  (mean draw loss - llc / nbeta, in float32). 1.x records no burn-in losses ("not recorded").
* Failures: 2.x warns and leaves a chain's remaining steps unwritten on a NaN loss; mechgrok keeps
  going and flags the chain (``diverged``).
* Work per step beyond the update: 2.x writes every step's per-example losses and input ids to a
  zarr store (a temporary directory here, as without ``output_path``), deep-copies the model per
  chain and runs ``gc.collect()`` around every chain; 1.x cloudpickles the loader and the
  evaluate function per chain. These are part of its wall time, as for any user.

Both tools are warmed up once (one chain, two draws) before the timed calls.

    python benchmarks/llc_vs_devinterp.py checkpoints/modadd-mlp24 --step -1 --chains 4 --draws 200
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import sys
import tempfile
import time
import warnings

# devinterp 2.x's per-chain progress bars: tqdm reads its TQDM_* defaults when it is first imported
os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np
import torch
import torch.nn.functional as F

import mechgrok as mg
from mechgrok.probes.llc import LLCConfig, default_nbeta, llc


def per_example_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """mechgrok's likelihood: cross-entropy over the classes, or BCE for a single logit."""
    if logits.dim() != 2:
        raise SystemExit(f"expected logits [batch, classes] from the model, got {tuple(logits.shape)}")
    if logits.shape[-1] == 1:
        return F.binary_cross_entropy_with_logits(logits[:, 0], y.to(logits.dtype), reduction="none")
    return F.cross_entropy(logits, y, reduction="none")


class Plain(torch.nn.Module):
    """The mechgrok model behind a plain module: its ``cfg.n_heads`` makes devinterp 2.x take it for a
    TransformerLens model (``model.to(device, print_details=False)``, which a mechgrok model refuses)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class Devinterp2:
    """devinterp 2.x: ``devinterp.slt.llc.llc`` on an ``input_ids`` dataset of example indices."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, workdir: str):
        from datasets import Dataset
        from devinterp.slt.llc import llc as di_llc

        self.llc, self.x, self.y, self.workdir, self.calls = di_llc, x, y, workdir, 0
        idx = torch.arange(len(y))
        self.dataset = Dataset.from_dict({"input_ids": torch.stack([idx, idx], 1).tolist()}).with_format("torch")

    def loss_fn(self, model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        i = input_ids[:, 0]
        return per_example_loss(model(self.x[i]), self.y[i])[:, None]  # [batch, seq-1 = 1]

    def __call__(self, model: torch.nn.Module, cfg: LLCConfig, nbeta: float) -> dict:
        self.calls += 1  # sample() returns a cached result if output_path exists: a fresh one per call
        res = self.llc(
            model,
            self.dataset,
            {},
            lr=cfg.epsilon,
            n_beta=nbeta,
            loss_fn=self.loss_fn,
            num_chains=cfg.chains,
            num_draws=cfg.draws,
            num_burnin_steps=cfg.burnin,
            num_steps_bw_draws=1,
            batch_size=len(self.y),
            num_init_loss_batches=1,
            init_seed=cfg.seed,
            localization=cfg.gamma,
            noise_level=1.0,
            llc_weight_decay=0.0,
            device="cpu",
            output_path=os.path.join(self.workdir, f"samples-{self.calls}.zarr"),
        )
        trace = np.asarray(res.loss_trace.values, dtype=np.float64)  # [chain, burnin + draws]
        init = float(res.init_loss.values)
        return {
            "draws": nbeta * (trace[:, cfg.burnin : cfg.burnin + cfg.draws].mean(-1) - init),
            "all": np.asarray(res.llc_per_chain.values, dtype=np.float64),
            "init_loss": init,
            "reported": (float(res.llc_mean.values), float(res.llc_std.values)),
        }


class Devinterp1:
    """devinterp 1.x: ``estimate_learning_coeff_with_summary`` with its ``SGLD``."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, workdir: str):
        from devinterp.optim import SGLD
        from devinterp.slt.sampler import estimate_learning_coeff_with_summary

        self.sgld, self.estimate = SGLD, estimate_learning_coeff_with_summary
        n = len(y)
        data = torch.utils.data.TensorDataset(x, y)
        self.loader = torch.utils.data.DataLoader(data, batch_size=n, shuffle=True)

    @staticmethod
    def evaluate(model: torch.nn.Module, batch) -> tuple[torch.Tensor, dict]:
        x, y = batch
        return per_example_loss(model(x), y).mean(), {}

    def __call__(self, model: torch.nn.Module, cfg: LLCConfig, nbeta: float) -> dict:
        res = self.estimate(
            model,
            self.loader,
            evaluate=self.evaluate,
            sampling_method=self.sgld,
            # a fresh dict per call: sample_single_chain adds a "metrics" entry to it
            optimizer_kwargs={"lr": cfg.epsilon, "localization": cfg.gamma, "nbeta": nbeta, "noise_level": 1.0},
            num_chains=cfg.chains,
            num_draws=cfg.draws,
            num_burnin_steps=cfg.burnin,
            num_steps_bw_draws=1,
            device="cpu",
            verbose=False,
            seed=cfg.seed,
        )
        chain = np.array([res[f"llc-chain/{c}"] for c in range(cfg.chains)], dtype=np.float64)
        trace = np.asarray(res["loss/trace"], dtype=np.float64)  # [chain, draws]: no burn-in recorded
        return {
            "draws": chain,
            "all": None,
            "init_loss": float(np.mean(trace.mean(-1) - chain / nbeta)),  # not returned: recovered
            "reported": (float(res["llc/mean"]), float(res["llc/std"])),
        }


def mean_std(values: np.ndarray | torch.Tensor | None) -> str:
    if values is None:
        return f"{'(not recorded)':>17}"
    v = np.asarray(values, dtype=np.float64)
    std = v.std(ddof=1) if v.size > 1 else 0.0
    return f"{v.mean():8.3f} +- {std:6.3f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--step", type=int, default=-1, help="checkpoint row (default: the last)")
    ap.add_argument("--epsilon", type=float, default=LLCConfig.epsilon)
    ap.add_argument("--gamma", type=float, default=LLCConfig.gamma)
    ap.add_argument("--nbeta", type=float, default=None, help="default n / log n of the training set")
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--burnin", type=int, default=LLCConfig.burnin)
    ap.add_argument("--draws", type=int, default=LLCConfig.draws)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=["float32", "model"], default=LLCConfig.dtype, help="as LLCConfig.dtype")
    ap.add_argument("--checkpoints", type=int, default=0, help="also time both over the last K checkpoints")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = ap.parse_args()
    if importlib.util.find_spec("devinterp") is None:
        print("devinterp is not installed here: skipped (install it in a side environment to compare)")
        return 0
    warnings.filterwarnings("ignore")  # devinterp's advice on burn-in vs draws, seeds, nbeta, deprecations
    torch.set_num_threads(args.threads)
    version = importlib.metadata.version("devinterp")

    run = mg.Run.open(args.run)
    traj = run.trajectory()
    row = args.step % len(traj)
    data = mg.make_dataset(run.config.task)
    x, y = data.train_x, data.train_y
    n = int(y.shape[0])
    nbeta = args.nbeta if args.nbeta is not None else default_nbeta(n)
    cfg = LLCConfig(
        epsilon=args.epsilon,
        gamma=args.gamma,
        nbeta=nbeta,
        chains=args.chains,
        burnin=args.burnin,
        draws=args.draws,
        seed=args.seed,
        dtype=args.dtype,
    )
    chain_steps = cfg.chains * cfg.n_steps  # SGLD steps of one checkpoint, all chains

    def live(r: int) -> torch.nn.Module:  # the model devinterp samples from
        model = traj.model(r)
        return Plain(model.float() if cfg.dtype == "float32" else model)

    with tempfile.TemporaryDirectory(prefix="llc_vs_devinterp-") as workdir:
        theirs_fn = (Devinterp1 if version.startswith(("0.", "1.")) else Devinterp2)(x, y, workdir)
        warm = LLCConfig(**{**cfg.to_dict(), "chains": 1, "burnin": 0, "draws": 2})
        llc(traj, warm, rows=[row])
        theirs_fn(live(row), warm, nbeta)

        t = time.perf_counter()
        ours = llc(traj, cfg, rows=[row])
        t_ours = time.perf_counter() - t
        t = time.perf_counter()
        theirs = theirs_fn(live(row), cfg, nbeta)
        t_theirs = time.perf_counter() - t

        print(
            f"{run.path} step {int(traj.steps[row]):,} (row {row} of {len(traj)}): n = {n}, nbeta = {nbeta:.4g}, "
            f"eps = {cfg.epsilon:g}, gamma = {cfg.gamma:g}, {cfg.chains} chains, {cfg.burnin} burn-in, "
            f"{cfg.draws} draws, full batch, {cfg.dtype}, {torch.get_num_threads()} thread(s)"
        )
        print(
            f"{'':16} {'llc (draws)':>19} {'llc (all steps)':>19} {'L_n(w*)':>10} {'seconds':>8} {'ms/chain-step':>14}"
        )
        ours_all = nbeta * (ours.trace[0].mean(-1) - ours.init_loss[0])  # 2.x's definition, per chain
        for name, draws_, all_, init, sec in (
            ("mechgrok", ours.chain_llc[0], ours_all, float(ours.init_loss[0]), t_ours),
            (f"devinterp {version}", theirs["draws"], theirs["all"], theirs["init_loss"], t_theirs),
        ):
            print(
                f"{name:16} {mean_std(draws_):>19} {mean_std(all_):>19} {init:10.4g} {sec:8.2f} "
                f"{1e3 * sec / chain_steps:14.3f}"
            )
        rep_mean, rep_std = theirs["reported"]
        what = "all steps, population std" if theirs["all"] is not None else "draws, ddof=1"
        print(f"devinterp {version} reports llc {rep_mean:.3f} +- {rep_std:.3f} ({what})")
        print(f"wall time devinterp / mechgrok: {t_theirs / t_ours:.2f}x")

        K = min(args.checkpoints, len(traj))
        if K <= 0:
            return 0
        rows = list(range(len(traj) - K, len(traj)))
        t = time.perf_counter()
        curve = llc(traj, cfg, rows=rows)
        t_ours = time.perf_counter() - t
        t = time.perf_counter()
        looped = [theirs_fn(live(r), cfg, nbeta) for r in rows]
        t_theirs = time.perf_counter() - t

        print(f"\nlast {K} checkpoints x {cfg.chains} chains (llc over draws, mean +- std over chains):")
        print(f"{'step':>8} {'mechgrok':>19} {'devinterp':>19}")
        for k, r in enumerate(rows):
            print(f"{int(traj.steps[r]):8,} {mean_std(curve.chain_llc[k]):>19} {mean_std(looped[k]['draws']):>19}")
        steps = K * chain_steps
        for name, sec in (
            ("mechgrok llc(traj, cfg, rows=...) vectorised", t_ours),
            ("devinterp looped over checkpoints x chains", t_theirs),
        ):
            print(f"{name:45} {sec:8.2f} s ({1e3 * sec / steps:.3f} ms/chain-step)")
        print(f"ratio devinterp / mechgrok: {t_theirs / t_ours:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Seconds of the LLC curve of a run: the vectorised pass against loops over checkpoints and chains.

A trajectory of synthetic checkpoints of a preset's model (weights random-walking from its
initialisation: SGLD costs the same on any weights) is estimated with the same settings and seeds,
side by side in one run:

- ``vectorised``: every (checkpoint x chain) a row of one batched forward/backward
  (:func:`mechgrok.probes.llc.llc`);
- ``plain loop``: the baseline a user would write without mechgrok (as ``devinterp`` runs it): for
  every checkpoint and chain, SGLD through the live hooked model, ``loss.backward()`` by autograd,
  the update on the module's parameters (same update rule, float64 cross-entropy, same chain
  generators, so its estimates match the vectorised ones to float tolerance);
- ``loop (kernel)``: mechgrok's own per-row kernel one chain at a time (``vectorize=False``; the
  reference the tests check the batched pass against): how much of the speed-up is batching alone.

All are timed single-threaded unless ``--threads`` says otherwise. With ``--run RUN`` the run's own
checkpoints are used instead (the headline: seconds for the whole run's curve).

    python benchmarks/bench_llc.py                                   # modadd-mlp24, 100 x 4 chains
    python benchmarks/bench_llc.py --preset parity --checkpoints 50
    python benchmarks/bench_llc.py --loop-engine loop                # kernel loop through functional_call
    python benchmarks/bench_llc.py --run checkpoints/modadd-mlp24 --no-loop
    python benchmarks/bench_llc.py --device cuda --no-kernel-loop    # on a GPU (benchmarks/gpu_check.sh)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import torch
import torch.nn.functional as F

from mechgrok import Run, build_model, preset
from mechgrok.probes.llc import LLCConfig, _chain_generator, default_nbeta, llc
from mechgrok.store import Trajectory
from mechgrok.tasks import make_dataset


def synthetic(name: str, k: int, seed: int = 0) -> Trajectory:
    config = preset(name)
    model = build_model(config.model, config.task, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    state = {n: v.detach() for n, v in model.state_dict().items()}
    rows = {n: [] for n in state}
    for _ in range(k):
        for n, v in state.items():
            if v.is_floating_point():
                state[n] = v + 0.01 * v.std().clamp_min(1e-3) * torch.randn(v.shape, generator=gen)
            rows[n].append(state[n])
    return Trajectory(torch.arange(k, dtype=torch.int64) * 100, {n: torch.stack(r) for n, r in rows.items()}, config)


def plain_loop(traj: Trajectory, cfg: LLCConfig) -> torch.Tensor:
    """LLC per checkpoint the way a user writes it by hand: one chain at a time through the live
    model with autograd. Same update rule and chain streams as mechgrok's (minibatch indices, then
    one normal per parameter entry in ``named_parameters`` order), so the estimates agree."""
    config = traj.config
    device = torch.device(cfg.device)
    model = build_model(config.model, config.task, seed=0).to(device)
    data = make_dataset(config.task).to(device)
    x, y = data.train_x, data.train_y
    n = int(y.shape[0])
    nbeta = cfg.nbeta if cfg.nbeta is not None else default_nbeta(n)
    batch = None if cfg.batch_size is None or cfg.batch_size >= n else cfg.batch_size
    params = dict(model.named_parameters())
    draws = set(range(cfg.burnin, cfg.n_steps, cfg.steps_between_draws))
    out = torch.empty(len(traj), dtype=torch.float64)
    for k in range(len(traj)):
        chain_llc = []
        for c in range(cfg.chains):
            gen = _chain_generator(cfg.seed, c, device)
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(traj.params[name][k].to(device))
                w_star = {name: p.detach().clone() for name, p in params.items()}
                init = float(F.cross_entropy(model(x).double(), y))
            total = 0.0
            for t in range(cfg.n_steps):
                xb, yb = (x, y)
                if batch is not None:
                    idx = torch.randperm(n, generator=gen, device=device)[:batch]
                    xb, yb = x[idx], y[idx]
                noise = {
                    name: torch.randn(p.shape, generator=gen, dtype=p.dtype, device=device)
                    for name, p in params.items()
                }
                model.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(xb).double(), yb)
                loss.backward()
                if t in draws:
                    total += loss.item()
                with torch.no_grad():
                    for name, p in params.items():
                        drift = nbeta * p.grad + cfg.gamma * (p - w_star[name])
                        p.add_(-cfg.epsilon / 2 * drift + cfg.epsilon**0.5 * noise[name])
            chain_llc.append(nbeta * (total / cfg.draws - init))
        out[k] = sum(chain_llc) / len(chain_llc)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="modadd-mlp24")
    ap.add_argument("--run", default=None, help="a run folder: time the curve of its checkpoints")
    ap.add_argument("--checkpoints", type=int, default=100)
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--burnin", type=int, default=0)
    ap.add_argument("--draws", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="torch device of every variant (LLCConfig.device), e.g. cuda")
    ap.add_argument("--dtype", default="float32", help="LLCConfig.dtype: float32 (default) or model")
    ap.add_argument("--no-loop", action="store_true", help="skip both (slow) loops")
    ap.add_argument("--no-kernel-loop", action="store_true", help="skip the loop over mechgrok's per-row kernel")
    ap.add_argument(
        "--loop-engine",
        default="auto",
        help="forward of the loop: auto (the same fused kernels, one row at a time) or loop (the hooked "
        "model through functional_call, as a plain per-chain SGLD loop would run it)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    traj = Run.open(args.run).trajectory() if args.run else synthetic(args.preset, args.checkpoints)
    cfg = LLCConfig(
        chains=args.chains,
        burnin=args.burnin,
        draws=args.draws,
        batch_size=args.batch_size,
        dtype=args.dtype,
        device=args.device,
    )
    what = args.run or f"{args.preset} (synthetic)"
    print(
        f"{what}: {len(traj)} checkpoints x {cfg.chains} chains x {cfg.n_steps} SGLD steps, "
        f"batch {cfg.batch_size or 'full'}, chains in {cfg.dtype} on {cfg.device}, {args.threads} thread(s), "
        f"load {os.getloadavg()[0]:.1f}"
    )

    t = time.perf_counter()
    vec = llc(traj, cfg)
    t_vec = time.perf_counter() - t
    print(f"vectorised: {t_vec:8.2f} s   llc first/last {vec.llc[0]:.2f} / {vec.llc[-1]:.2f}")
    if args.no_loop:
        return
    t = time.perf_counter()
    plain = plain_loop(traj, cfg)
    t_plain = time.perf_counter() - t
    diff = float((vec.llc - plain).abs().max())
    print(
        f"plain loop (hooked model, autograd): {t_plain:8.2f} s   speed-up {t_plain / t_vec:.1f}x   "
        f"max |llc difference| {diff:.2e}"
    )
    if args.no_kernel_loop:
        return
    t = time.perf_counter()
    loop = llc(traj, dataclasses.replace(cfg, engine=args.loop_engine), vectorize=False)
    t_loop = time.perf_counter() - t
    diff = float((vec.llc - loop.llc).abs().max())
    print(
        f"loop (mechgrok kernel, {args.loop_engine}): {t_loop:8.2f} s   speed-up {t_loop / t_vec:.1f}x   "
        f"max |llc difference| {diff:.2e}"
    )


if __name__ == "__main__":
    main()

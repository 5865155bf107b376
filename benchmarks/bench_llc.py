"""Seconds of the LLC curve of a run: the vectorised pass against a loop over checkpoints and chains.

A trajectory of synthetic checkpoints of a preset's model (weights random-walking from its
initialisation: SGLD costs the same on any weights) is estimated twice with the same settings and
seeds: once with every (checkpoint x chain) a row of one batched forward/backward
(:func:`mechgrok.probes.llc.llc`), once chain by chain (``vectorize=False``). Both are timed
single-threaded unless ``--threads`` says otherwise, and their estimates compared. With ``--run
RUN`` the run's own checkpoints are used instead (the headline: seconds for the whole run's curve).

    python benchmarks/bench_llc.py                                   # modadd-mlp24, 100 x 4 chains
    python benchmarks/bench_llc.py --preset parity --checkpoints 50
    python benchmarks/bench_llc.py --loop-engine loop                # against the hooked model, chain by chain
    python benchmarks/bench_llc.py --run checkpoints/modadd-mlp24 --no-loop
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import torch

from mechgrok import Run, build_model, preset
from mechgrok.probes.llc import LLCConfig, llc
from mechgrok.store import Trajectory


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
    ap.add_argument("--no-loop", action="store_true", help="skip the (slow) loop reference")
    ap.add_argument(
        "--loop-engine",
        default="auto",
        help="forward of the loop: auto (the same fused kernels, one row at a time) or loop (the hooked "
        "model through functional_call, as a plain per-chain SGLD loop would run it)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    traj = Run.open(args.run).trajectory() if args.run else synthetic(args.preset, args.checkpoints)
    cfg = LLCConfig(chains=args.chains, burnin=args.burnin, draws=args.draws, batch_size=args.batch_size)
    what = args.run or f"{args.preset} (synthetic)"
    print(
        f"{what}: {len(traj)} checkpoints x {cfg.chains} chains x {cfg.n_steps} SGLD steps, "
        f"batch {cfg.batch_size or 'full'}, {args.threads} thread(s), load {os.getloadavg()[0]:.1f}"
    )

    t = time.perf_counter()
    vec = llc(traj, cfg)
    t_vec = time.perf_counter() - t
    print(f"vectorised: {t_vec:8.2f} s   llc first/last {vec.llc[0]:.2f} / {vec.llc[-1]:.2f}")
    if args.no_loop:
        return
    t = time.perf_counter()
    loop = llc(traj, dataclasses.replace(cfg, engine=args.loop_engine), vectorize=False)
    t_loop = time.perf_counter() - t
    diff = float((vec.llc - loop.llc).abs().max())
    print(
        f"loop ({args.loop_engine}): {t_loop:8.2f} s   speed-up {t_loop / t_vec:.1f}x   max |llc difference| {diff:.2e}"
    )


if __name__ == "__main__":
    main()

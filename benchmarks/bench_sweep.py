"""The batched sweep engine against a loop of single-model trainers, and against matmul peak.

For each model and each N, in one run:

* engine   - model-steps/s of the batched engine training N models of the model (each its own
             seed); a model-step is one AdamW update of one model, timed over the engine's real
             loop (per-model schedules, chunked forward/backward, fused AdamW) with no logging or
             evaluation inside the timed steps; the fastest of three windows of steps;
* loop     - model-steps/s of single-model training steps as ``mechgrok.train`` does them (forward,
             float64 loss, backward, ``torch.optim.AdamW``), timed on a few models and extrapolated
             to N (a loop of N trainers costs N times one trainer's step); timed again after every
             row, and the fastest time so far is used (the ratio is never flattered by load); with
             ``--threads T`` the loop runs on T intra-op threads or on 1, whichever is faster;
* ratio    - engine / loop;
* GFLOP/s  - FLOPs the engine executes per second (its matmuls, forward and backward), and that
             as a percentage of a plain 2048 x 2048 fp32 matmul measured in the same run (before
             each model; the highest so far is the reference, so load never flatters it).

Models: ``modadd-mlp24`` (PAIR's 24-neuron modular-addition MLP), ``parity-mlp24`` (the parity
preset at 24 hidden neurons) and ``parity`` (the preset, 128 neurons). Times are wall-clock and
CPU time of this process; on a machine shared with other jobs the CPU-time columns are the
steadier ones.

    python benchmarks/bench_sweep.py                          # N = 1, 16, 128, 1024, 1 thread
    python benchmarks/bench_sweep.py --ns 1 16 --models parity-mlp24 --engines fused vmap
    python benchmarks/bench_sweep.py --threads 2 --workers 2 --engines fused   # the whole 2-core machine
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from mechgrok import build_model, make_dataset, preset
from mechgrok.config import RunConfig
from mechgrok.metrics import loss_and_accuracy
from mechgrok.sweep import EngineConfig
from mechgrok.sweep._pool import Member, Pool

MODELS = {
    "modadd-mlp24": lambda: preset("modadd-mlp24"),
    "parity-mlp24": lambda: preset("parity", {"model.d_mlp": 24}),
    "parity": lambda: preset("parity"),
}
QUIET = {"train.eval_every": 10**9, "train.checkpoint_every": 10**9, "train.log_checkpoints": 0}


def executed_macs(cfg: RunConfig, engine: str, n: int) -> float:
    """Multiply-adds per model-step of the engine's matmuls (forward + backward); the parity
    kernel's zero pad column is not counted (its products are not useful work)."""
    mc, tc = cfg.model, cfg.task
    m = mc.d_mlp
    if mc.kind == "parity_mlp" and engine == "fused":
        k = tc.n_bits + (1 if mc.bias else 0)
        return 2.0 * n * k * m + n * m + k * m  # x @ W and x^T @ (g mask); post @ w_out; sum_k W raw
    if mc.kind == "parity_mlp":
        return 3.0 * (n * tc.n_bits * m + n * m * mc.n_out)
    p, d = tc.p, (2 if mc.kind == "cossin_mlp" else mc.d_model)
    w_level = 4.0 * p * d * m + (2.0 * p * d * m if mc.kind == "mlp" else 0.0)  # E W_in, W_out E^T and their grads
    if engine == "fused":
        return w_level + 5.0 * n * p * m  # one-hot gather/scatter as matmuls, logits, 2 backward
    return w_level + 3.0 * n * p * m


def matmul_gflops(size: int = 2048, reps: int = 3) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2.0 * size**3 / best / 1e9


def best_loop_step_time(cfg: RunConfig, threads: int, models: int = 3) -> tuple[float, float]:
    """The loop's time on its best thread count: ``threads`` intra-op threads, or 1 when that is
    faster (tiny models often are: a second thread only adds synchronisation)."""
    times = []
    for t in sorted({1, threads}):
        torch.set_num_threads(t)
        times.append(loop_step_time(cfg, models=models))
    torch.set_num_threads(threads)
    return min(times)


def loop_step_time(cfg: RunConfig, models: int = 3, steps: int = 30) -> tuple[float, float]:
    """(wall, cpu) seconds per model-step of single-model trainer steps (median over models)."""
    data = make_dataset(cfg.task)
    x, y = data.train_x, data.train_y
    walls, cpus = [], []
    for seed in range(models):
        model = build_model(cfg.model, cfg.task, seed=seed)
        oc = cfg.optim
        opt = torch.optim.AdamW(model.parameters(), lr=oc.lr, betas=oc.betas, eps=oc.eps, weight_decay=oc.weight_decay)

        def step() -> None:
            loss, _ = loss_and_accuracy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        for _ in range(3):
            step()
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            step()
        walls.append((time.perf_counter() - t0) / steps)
        cpus.append((time.process_time() - c0) / steps)
    return statistics.median(walls), statistics.median(cpus)


def engine_step_time(
    cfg: RunConfig, n_models: int, engine: str, steps: int, workers: int = 1, windows: int = 3
) -> tuple[float, float]:
    """(wall, cpu) seconds per model-step of the batched engine: ``steps`` timed steps cut into
    ``windows`` consecutive windows, the fastest window's mean (the loop's time is also its
    fastest repeat: the same statistic on both sides)."""
    warm = 2
    per = max(1, steps // windows)
    cfg = cfg.with_overrides({**QUIET, "train.steps": warm + per * windows + 1})
    members = [Member(cfg.with_overrides({"train.seed": i}), key=i) for i in range(n_models)]
    marks: list[tuple[float, float]] = []
    pool = Pool(
        members,
        EngineConfig(engine=engine, log_every=10**9, workers=workers),
        keep_results=False,
        on_steps=lambda _: marks.append((time.perf_counter(), time.process_time())),
    )
    pool.run()
    best = min(range(windows), key=lambda i: marks[warm - 1 + (i + 1) * per][0] - marks[warm - 1 + i * per][0])
    (w0, c0), (w1, c1) = marks[warm - 1 + best * per], marks[warm - 1 + (best + 1) * per]
    return (w1 - w0) / (per * n_models), (c1 - c0) / (per * n_models)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--ns", nargs="+", type=int, default=[1, 16, 128, 1024])
    ap.add_argument("--engines", nargs="+", default=["fused", "vmap"], choices=["fused", "vmap"])
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (loop and engine)")
    ap.add_argument("--workers", type=int, default=1, help="engine chunk threads (EngineConfig.workers)")
    ap.add_argument("--budget", type=float, default=4.0, help="seconds of timed engine steps per row (about)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    peak0 = matmul_gflops()
    print(
        f"# {platform.machine()}, torch {torch.__version__}, {args.threads} intra-op thread(s), {args.workers} engine "
        "worker(s); loop = single-model steps on "
        f"{'1 thread' if args.threads == 1 else f'1 or {args.threads} threads, the faster'}"
    )
    print(f"# fp32 matmul 2048^3: {peak0:.1f} GFLOP/s")
    header = (
        f"{'model':<14}{'N':>6} {'engine':<6}{'ms/model-step':>14}{'(cpu)':>8}{'model-steps/s':>15}"
        f"{'loop steps/s':>14}{'(cpu)':>8}{'ratio':>7}{'(cpu)':>7}{'GFLOP/s':>9}{'% peak':>8}"
    )
    print(header)
    peaks = [peak0]
    for name in args.models:
        peak = max(peaks)
        cfg = MODELS[name]()
        n_train = make_dataset(cfg.task).train_x.shape[0]
        loop_wall, loop_cpu = best_loop_step_time(cfg, args.threads)
        first = (loop_wall, loop_cpu)
        for n_models in args.ns:
            for engine in args.engines:
                # size the timed steps to the budget from a guess of the engine's cost per model-step
                est = loop_wall / (3.0 if engine == "fused" else 1.0)
                steps = int(max(6, min(200, args.budget / max(est * n_models, 1e-4))))
                wall, cpu = engine_step_time(cfg, n_models, engine, steps, args.workers)
                # the loop is timed again right after each row and the faster time is used: load
                # from other processes must not make the loop look slower than it is
                again = best_loop_step_time(cfg, args.threads, models=2)
                loop_wall, loop_cpu = min(loop_wall, again[0]), min(loop_cpu, again[1])
                macs = executed_macs(cfg, engine, n_train)
                gflops = 2.0 * macs / wall / 1e9
                print(
                    f"{name:<14}{n_models:>6} {engine:<6}{wall * 1e3:>14.3f}{cpu * 1e3:>8.3f}{1 / wall:>15.0f}"
                    f"{1 / loop_wall:>14.0f}{1 / loop_cpu:>8.0f}{loop_wall / wall:>7.1f}{loop_cpu / cpu:>7.1f}"
                    f"{gflops:>9.1f}{100 * gflops / peak:>7.0f}%",
                    flush=True,
                )
        print(
            f"# {name}: single-model step {first[0] * 1e3:.3f} ms at the start, fastest {loop_wall * 1e3:.3f} ms "
            f"(cpu {first[1] * 1e3:.3f} / {loop_cpu * 1e3:.3f}); the engine executes "
            f"{2 * executed_macs(cfg, 'fused', n_train) / 1e6:.1f} MFLOP per model-step (fused)",
            flush=True,
        )
        peaks.append(matmul_gflops())
    print(
        f"# fp32 matmul peak over the run: {min(peaks):.1f} .. {max(peaks):.1f} GFLOP/s "
        "(% peak: the highest before the row)"
    )


if __name__ == "__main__":
    main()

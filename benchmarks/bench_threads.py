"""Training-step speed per preset: mechgrok's automatic thread count vs torch's default, on an idle
machine and beside a competing busy process.

For each preset (one per model family and size) the script times full-batch training steps - the
model, data, AdamW and loss that ``mechgrok.train`` uses - for ``--seconds`` (at most ``--steps``
steps) under each thread setting, first alone, then while a subprocess keeps every core busy with
a torch matmul loop (its own OpenMP threads, like another user's job). It prints ms per step and
the ratio default / auto (> 1: the automatic count is faster).

    OMP_NUM_THREADS= .venv/bin/python benchmarks/bench_threads.py            # every preset
    .venv/bin/python benchmarks/bench_threads.py --presets parity,modadd-transformer --seconds 3

"torch default" is the count torch starts with (one per core, or ``OMP_NUM_THREADS``); run the
script without ``OMP_NUM_THREADS`` to see what a user gets out of the box.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import torch

from mechgrok import build_model, make_dataset, preset
from mechgrok._threads import auto_threads, available_cores, intra_op_threads, work_per_step
from mechgrok.train import loss_and_accuracy

PRESETS = ["parity", "parity-l1", "modadd-mlp24", "modadd-cossin5", "modadd-transformer", "rnn-mod91", "lstm-mod91"]

BUSY = """
import torch
torch.set_num_threads({threads})
a = torch.randn(384, 384)
while True:
    a = (a @ a).tanh()
"""


def time_steps(name: str, threads: int, seconds: float, max_steps: int) -> tuple[float, int]:
    """Seconds per training step of preset ``name`` with ``threads`` intra-op threads."""
    cfg = preset(name)
    data = make_dataset(cfg.task)
    model = build_model(cfg.model, cfg.task, seed=0)
    oc = cfg.optim
    opt = torch.optim.AdamW(model.parameters(), lr=oc.lr, betas=oc.betas, eps=oc.eps, weight_decay=oc.weight_decay)
    bs = oc.batch_size
    gen = torch.Generator().manual_seed(1)

    def step():
        if 0 < bs < len(data.train_x):
            idx = torch.randint(len(data.train_x), (bs,), generator=gen)
            x, y = data.train_x[idx], data.train_y[idx]
        else:
            x, y = data.train_x, data.train_y
        loss, _ = loss_and_accuracy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    with intra_op_threads(threads):
        for _ in range(3):  # warm-up: allocator, OpenMP pool
            step()
        n, t0 = 0, time.perf_counter()
        while n < max_steps and (n < 5 or time.perf_counter() - t0 < seconds):
            step()
            n += 1
        return (time.perf_counter() - t0) / n, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--seconds", type=float, default=2.0, help="time per measurement (>= 5 steps)")
    ap.add_argument("--steps", type=int, default=400, help="at most this many steps per measurement")
    ap.add_argument("--busy-threads", type=int, default=0, help="competitor's threads (0 = every core)")
    ap.add_argument("--no-busy", action="store_true", help="only the idle measurements")
    ap.add_argument(
        "--auto",
        type=int,
        default=0,
        help="use this many threads instead of the automatic count (to measure what the automatic choice should be)",
    )
    args = ap.parse_args()
    default = torch.get_num_threads()
    cores = available_cores()
    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPUs ({cores} usable), torch default threads {default}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '(unset)')}"
    )
    names = [n.strip() for n in args.presets.split(",") if n.strip()]
    settings = {name: args.auto or auto_threads(work_per_step(preset(name))) for name in names}
    rows = []
    loads = ["idle"] if args.no_busy else ["idle", "busy"]
    for load in loads:
        busy = None
        if load == "busy":
            code = BUSY.format(threads=args.busy_threads or os.cpu_count() or 1)
            busy = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
        try:
            for name in names:
                auto = settings[name]
                t_auto, n_auto = time_steps(name, auto, args.seconds, args.steps)
                t_def, n_def = time_steps(name, default, args.seconds, args.steps)
                rows.append((load, name, work_per_step(preset(name)), auto, t_auto, n_auto, default, t_def, n_def))
                r = rows[-1]
                print(
                    f"{load:4s} {name:20s} work {r[2]:8.2e}  "
                    f"auto {auto} thr {1e3 * t_auto:8.2f} ms/step ({n_auto} steps)"
                    f"  default {default} thr {1e3 * t_def:8.2f} ms/step ({n_def} steps)  "
                    f"default/auto {t_def / t_auto:6.2f}x",
                    flush=True,
                )
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
    print("\nsummary: ms per step (default / auto)")
    print(
        f"{'preset':20s} {'work':>9s} {'auto':>4s} "
        + " ".join(f"{load + ' auto':>10s} {load + ' dflt':>10s} {'ratio':>6s}" for load in loads)
    )
    for name in names:
        cells = []
        for load in loads:
            r = next(r for r in rows if r[0] == load and r[1] == name)
            cells.append(f"{1e3 * r[4]:10.2f} {1e3 * r[7]:10.2f} {r[7] / r[4]:6.2f}")
        print(f"{name:20s} {work_per_step(preset(name)):9.2e} {settings[name]:4d} " + " ".join(cells))


if __name__ == "__main__":
    main()

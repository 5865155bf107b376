"""Steps per second of each preset's model on this machine.

One "step" is what the trainer does per update: forward on the preset's batch (full batch or
``optim.batch_size``), float64 loss, backward, AdamW step - no evaluation, no checkpoint writes.
The transformer is timed twice: with the last-position shortcut (the default forward) and with
the full-positions path (``last_position_only = False``), interleaved so that load from other
processes hits both alike.

    python benchmarks/bench_train.py                       # every preset, 1 thread
    python benchmarks/bench_train.py modadd-transformer --steps 30 --threads 2
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from mechgrok import build_model, make_dataset, preset, preset_names
from mechgrok.models import OneLayerTransformer
from mechgrok.train import loss_and_accuracy


def _stepper(name: str, device: str):
    cfg = preset(name)
    data = make_dataset(cfg.task).to(device)
    model = build_model(cfg.model, cfg.task, seed=0).to(device)
    opt = torch.optim.AdamW(
        model.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay
    )
    n = data.train_x.shape[0]
    bs = cfg.optim.batch_size if 0 < cfg.optim.batch_size < n else n
    x, y = data.train_x[:bs], data.train_y[:bs]

    def step():
        loss, _ = loss_and_accuracy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return model, step, bs


def _time(step, steps: int, device: str) -> float:
    """Median seconds per step over ``steps`` timed steps, in 5 repeats (after 3 warm-up steps)."""
    for _ in range(3):
        step()
    reps = []
    per = max(1, steps // 5)
    for _ in range(5):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(per):
            step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        reps.append((time.perf_counter() - t0) / per)
    return statistics.median(reps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("presets", nargs="*", help="presets to time (default: all)")
    ap.add_argument("--steps", type=int, default=50, help="timed steps per preset (default 50)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = args.presets or preset_names()
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} thread(s), device {args.device}"
    )
    print(f"{'preset':30s} {'batch':>6s} {'ms/step':>9s} {'steps/s':>8s}")
    for name in names:
        model, step, bs = _stepper(name, args.device)
        if isinstance(model, OneLayerTransformer):
            fast, full = [], []
            for _ in range(2):  # interleave so background load hits both paths alike
                model.last_position_only = True
                fast.append(_time(step, args.steps, args.device))
                model.last_position_only = False
                full.append(_time(step, args.steps, args.device))
            t_fast, t_full = min(fast), min(full)
            print(f"{name + ' (full positions)':30s} {bs:6d} {t_full * 1e3:9.1f} {1 / t_full:8.1f}")
            print(
                f"{name + ' (last position)':30s} {bs:6d} {t_fast * 1e3:9.1f} {1 / t_fast:8.1f}   "
                f"speedup x{t_full / t_fast:.2f}"
            )
        else:
            t = _time(step, args.steps, args.device)
            print(f"{name:30s} {bs:6d} {t * 1e3:9.1f} {1 / t:8.1f}")


if __name__ == "__main__":
    main()

"""Seconds of the whole analysis of a run (``mechgrok analyze``) per preset, and of each probe.

For each model (default: the ``parity``, ``modadd-mlp24`` and ``modadd-cossin5`` presets with
1,000 checkpoints, ``modadd-transformer`` with fewer), a run folder of synthetic checkpoints (and
per-step metrics) is written to a temporary folder (weights random-walking from the preset's
initialisation: probes cost the same on any weights), then timed:

* ``analyze``     - :func:`analyze` on the run folder, single-threaded as asked: reading every
  checkpoint, every probe family in one pass, events, the summary and saving - what
  ``mechgrok analyze RUN`` costs. The headline: wall-clock and CPU seconds (the CPU seconds are
  the steadier number on a shared machine), with the analysis's own split (``load``, ``bits`` /
  ``modular_sweep``, the rest);
* each probe on its own, on a trajectory loaded once (``load``, ``Run.trajectory()``):
  parity ``bits`` (:func:`bit_dependence`, 512 held-out strings) and ``prune_now``
  (:func:`prune_now_accuracy`, the 5,000-string test set); modular ``fourier``
  (:func:`fourier_over_training`), ``progress`` (:func:`progress_measures`) and ``circles``
  (:func:`neuron_circles`) - each repeats the grid forward pass that ``analyze`` shares.

Wall-clock on whatever else the machine runs (the load average is printed). ``--keep DIR`` writes
the synthetic runs there and reuses them on the next call (writing 1,000 checkpoints takes longer
than analysing them).

    python benchmarks/bench_probes.py --threads 1
    python benchmarks/bench_probes.py --models parity modadd-mlp24 --checkpoints 200 --keep /tmp/bench_runs
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from mechgrok import Run, analyze, build_model, make_dataset, preset
from mechgrok.probes import (
    bit_dependence,
    fourier_over_training,
    neuron_circles,
    progress_measures,
    prune_now_accuracy,
)
from mechgrok.store import FILES, atomic_write_bytes

DEFAULT_MODELS = ("parity", "modadd-mlp24", "modadd-cossin5", "modadd-transformer")
# the transformer evaluates 12,769 inputs through a 512-neuron layer per checkpoint: fewer rows
CHECKPOINT_CAP = {"modadd-transformer": 20}


def write_synthetic_run(name: str, n: int, root: Path, folder: str | None = None) -> Run:
    """A run folder ``root/folder`` (default ``root/name``) with ``n`` checkpoints (10 steps
    apart) and a metrics row per step, like a trained run's (the accuracies are made up:
    memorised at 20%, generalised at 60% of the run)."""
    cfg = preset(name)
    run = Run.create(root / (folder or name), cfg)
    model = build_model(cfg.model, cfg.task, seed=0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    for i in range(n):
        run.write_checkpoint(i * 10, state)
        state = {k: v * 0.999 + 0.01 * torch.randn(v.shape, generator=gen) for k, v in state.items()}
    last = 10 * (n - 1)
    rows = [
        {
            "step": s,
            "train_loss": 1.0,
            "train_acc": 1.0 if s >= 0.2 * last else 0.5,
            "test_loss": 1.0,
            "test_acc": 1.0 if s >= 0.6 * last else 0.1,
        }
        for s in range(last + 1)
    ]
    atomic_write_bytes(run.path / FILES["metrics"], "".join(json.dumps(r) + "\n" for r in rows).encode())
    return run


def timed(fn, *args, **kwargs) -> float:
    t = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t


def bench_one(run: Run, threads: int | None) -> tuple[dict[str, float], dict[str, float]]:
    """(whole analysis: wall, cpu and the analysis's own timings; each probe's seconds)."""
    t, c = time.perf_counter(), time.process_time()
    result = analyze(run.path, threads=threads)
    whole = {"wall": time.perf_counter() - t, "cpu": time.process_time() - c}
    whole.update({f"[{k}]": v for k, v in result.timings.items() if k != "total"})
    probes: dict[str, float] = {}
    t = time.perf_counter()
    traj = run.trajectory()
    probes["load"] = time.perf_counter() - t
    data = make_dataset(run.config.task)
    if run.config.task.kind == "parity":
        probes["bits"] = timed(bit_dependence, traj, data)
        probes["prune_now"] = timed(prune_now_accuracy, traj, data)
    else:
        probes["fourier"] = timed(fourier_over_training, traj)
        probes["progress"] = timed(progress_measures, traj, data)
        if run.config.model.kind in ("mlp", "cossin_mlp", "transformer"):
            probes["circles"] = timed(neuron_circles, traj)
    return whole, probes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    ap.add_argument("--checkpoints", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--keep", type=Path, default=None, help="write the synthetic runs here and reuse them")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench_probes_"))
    try:
        for name in args.models:
            n = min(args.checkpoints, CHECKPOINT_CAP.get(name, args.checkpoints))
            folder = root / f"{name}-{n}"
            if args.keep is not None and (folder / FILES["metrics"]).exists():
                run = Run.open(folder)
            else:
                shutil.rmtree(folder, ignore_errors=True)
                run = write_synthetic_run(name, n, root, folder.name)
            whole, probes = bench_one(run, args.threads or torch.get_num_threads())
            split = "  ".join(f"{k} {v:.2f}" for k, v in whole.items() if k.startswith("["))
            print(
                f"{name:20s} {n:5d} ckpts  analyze {whole['wall']:6.2f} s wall, {whole['cpu']:6.2f} s cpu "
                f"({1000 * whole['wall'] / n:5.2f} ms/checkpoint; {split})"
            )
            print(f"{'':20s} {'':11s} probes alone, s: " + "  ".join(f"{k} {v:.2f}" for k, v in probes.items()))
            if args.keep is None:
                shutil.rmtree(run.path)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

"""The main job: train the three headline presets, analyse them, write their reports.

``mechgrok demo`` (and ``./run demo``) trains

* ``parity``          - sparse parity: memorisation, pruning of irrelevant-bit weights, generalisation;
* ``modadd-mlp24``    - the 24-neuron modular-addition MLP with seed 169 (split and weights),
  shortened to 12,000 steps: it reaches 99% test accuracy near step 8,100. The preset's seed, PAIR's
  165, groks late in PAIR's notebook and not within 50,000 steps here (RESULTS.md, section 6);
* ``modadd-cossin5``  - the five-neuron cos/sin model, the preset's 15,000 steps (with PAIR's
  column-normalised embedding it reaches 100% train and test accuracy together near step 11,000);

analyses every checkpoint, writes ``ROOT/PRESET/report.html`` and ``ROOT/index.html``, and prints
the headline numbers. A run folder that already holds the same finished run is reused; a killed
one is resumed; one holding a different run is refused (nothing is overwritten).
"""

from __future__ import annotations

import html
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import RunConfig
from .layout import REPORT_FILES, RUN_FILES
from .presets import preset
from .store import Run, StoreError

__all__ = ["DEMO_RUNS", "DemoRun", "demo_configs", "ensure_run", "run_demo", "headline"]

DEMO_RUNS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("parity", {}),
    ("modadd-mlp24", {"train.steps": 12_000, "train.seed": 169, "task.seed": 169}),
    ("modadd-cossin5", {}),
)
"""(preset, overrides) of the demo's runs."""

_QUICK = {
    "parity": {"train.steps": 600},
    "modadd-mlp24": {"train.steps": 800, "train.checkpoint_every": 100},
    # unit-length (cos, sin) rows learn ~20x faster than PAIR's column-normalised embedding (solved
    # by step ~550 instead of ~11,000), which a pipeline check of a few hundred steps needs
    "modadd-cossin5": {"train.steps": 800, "model.embed_norm": "rows"},
}


@dataclass
class DemoRun:
    """One demo run: where it is, its report, its analysis and how long each stage took."""

    config: RunConfig
    run_dir: Path
    report: Path
    analysis: Any
    headline: str
    seconds: dict[str, float] = field(default_factory=dict)


def demo_configs(quick: bool = False) -> list[RunConfig]:
    """The demo's configs (``quick``: a few hundred steps each, to check the pipeline)."""
    return [preset(name, {**over, **_QUICK[name]} if quick else over) for name, over in DEMO_RUNS]


def _at(event: str, step: int | None) -> str:
    return f"never {event}" if step is None else f"{event} at step {step:,}"


def headline(analysis: Any) -> str:
    """One line with a run's headline numbers, from its analysis records."""
    rec = analysis.records
    ev = rec["events"]
    extra = ev.get("extra") or {}
    name = rec.get("run", {}).get("name", "run")
    if rec.get("task") == "parity":
        pruned = extra.get("pruned_step")
        text = (
            f"{name}: {_at('memorised', ev['memorised_step'])}, "
            + (
                "irrelevant-bit weights never pruned"
                if pruned is None
                else f"last irrelevant-bit weight pruned at step {pruned:,}"
            )
            + f", {_at('generalised', ev['generalised_step'])} [{ev['phase']}]"
        )
        notes = []
        if extra.get("sensitivity_zero_step") is not None:
            notes.append(f"irrelevant-bit flip sensitivity ≈ 0 from step {extra['sensitivity_zero_step']:,}")
        if extra.get("prune_now_step") is not None:
            notes.append(
                f"zeroing the irrelevant-bit weights already generalises from step {extra['prune_now_step']:,}"
            )
        return text + (f"; {'; '.join(notes)}" if notes else "")
    text = (
        f"{name}: {_at('memorised', ev['memorised_step'])}, "
        f"{_at('generalised', ev['generalised_step'])} [{ev['phase']}]"
    )
    keys = rec.get("key_frequencies") or []
    text += f"; key frequencies {keys}" if keys else "; no key frequencies"
    t = analysis.tensors
    if "circles/phase_spread" in t:
        text += (
            f"; neuron circle: phase spread {float(t['circles/phase_spread'][-1]):.2f} (1 = even), "
            f"norm CV {float(t['circles/norm_cv'][-1]):.2f}"
        )
    elif "fourier/sparsity" in t:
        text += f"; Fourier sparsity {float(t['fourier/sparsity'][0]):.2f} → {float(t['fourier/sparsity'][-1]):.2f}"
    return text


def _prepare(config: RunConfig, run_dir: Path) -> tuple[str, Run | None]:
    """What to do with ``run_dir``: 'train', 'resume' or 'reuse' (refuses a different run)."""
    if not (run_dir / RUN_FILES["config"]).exists():
        return "train", None
    run = Run.open(run_dir)
    if run.config != config:
        raise StoreError(
            f"{run_dir}: holds a different run than {config.name!r}; move it away or choose another output folder"
        )
    if run.summary() is not None and run.steps and run.steps[-1] == config.train.steps:
        return "reuse", run
    return "resume", run


def ensure_run(
    run_dir: str | Path,
    config: RunConfig | None = None,
    *,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> Run:
    """The finished run in ``run_dir``, training it first when needed.

    Without ``config`` the folder must already hold a run. With one, an empty folder is trained,
    a killed run of the same config resumed, a finished one reused; a folder holding a different
    run is refused (nothing is overwritten).
    """
    from .train import train

    run_dir = Path(run_dir)
    if config is None:
        return Run.open(run_dir)
    action, run = _prepare(config, run_dir)
    if action == "reuse":
        if log:
            log(f"{config.name}: already trained in {run_dir}, reusing it")
        return run
    if log:
        log(
            f"{config.name}: {'resuming' if action == 'resume' else 'training'} "
            f"{config.train.steps:,} steps -> {run_dir}"
        )
    result = train(config, run_dir, resume=action == "resume", progress=progress)
    if log:
        s = result.summary
        log(
            f"      {s['steps']:,} steps in {s['seconds']:.0f} s; final train acc {s['final_train_acc']:.3f}, "
            f"test acc {s['final_test_acc']:.3f}"
        )
    return result.run


def _stored_analysis(run: Run) -> Any:
    from .analysis import load_analysis

    try:
        analysis = load_analysis(run.path)
    except StoreError:
        return None
    last = analysis.records.get("run", {}).get("last_step")
    return analysis if run.steps and last == run.steps[-1] else None


def _train_quietly(root: Path, configs: Sequence[RunConfig]) -> tuple[list[str], dict[str, float]]:
    """Child-process side of :func:`run_demo`: train ``configs`` without progress bars; returns the
    log lines and each run's training seconds."""
    import torch

    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
    lines: list[str] = []
    seconds: dict[str, float] = {}
    for cfg in configs:
        t = time.perf_counter()
        ensure_run(root / cfg.name, cfg, progress=False, log=lines.append)
        seconds[cfg.name] = time.perf_counter() - t
    return lines, seconds


def run_demo(
    root: str | Path = "checkpoints/demo",
    configs: Sequence[RunConfig] | None = None,
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
    max_checkpoints: int | None = 200,
    parallel: bool = False,
) -> list[DemoRun]:
    """Train, analyse and report each config into ``root/NAME``; returns one :class:`DemoRun` each.

    ``parallel``: train the longest run here while a second process trains the others (two CPU
    cores; the models are too small to use both cores within one run). ``max_checkpoints`` caps
    the checkpoints each analysis reads (evenly spaced) so the demo stays within a couple of
    minutes on 2 CPU cores.
    """
    from .analysis import analyze
    from .report import write_run_report

    root = Path(root)
    configs = list(configs) if configs is not None else demo_configs()
    # refuse a folder holding a different run before any work starts
    todo = [cfg for cfg in configs if _prepare(cfg, root / cfg.name)[0] != "reuse"]
    background: list[RunConfig] = []
    if parallel and len(todo) > 1:
        longest = max(todo, key=lambda c: c.train.steps)
        background = [c for c in todo if c is not longest]

    # 1. training (the longest run here, the others in a second process when parallel)
    train_seconds: dict[str, float] = {}
    pool = future = None
    if background:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        future = pool.submit(_train_quietly, root, background)
        log(f"training {', '.join(c.name for c in background)} in a second process ...")
    try:
        for i, cfg in enumerate(configs, start=1):
            if cfg in background:
                continue
            prefix = f"[{i}/{len(configs)}] "
            t = time.perf_counter()
            ensure_run(
                root / cfg.name, cfg, progress=progress, log=lambda m: log(m if m.startswith(" ") else prefix + m)
            )
            train_seconds[cfg.name] = time.perf_counter() - t
        if future is not None:
            lines, seconds = future.result()
            train_seconds.update(seconds)
            for line in lines:
                log(line)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)

    # 2. analysis and report of each run, in order
    results = []
    for cfg in configs:
        run = Run.open(root / cfg.name)
        seconds = {"train": train_seconds.get(cfg.name, 0.0)}
        t = time.perf_counter()
        analysis = _stored_analysis(run)  # a reused run's analysis, if it covers the last checkpoint
        if analysis is None:
            log(f"{cfg.name}: analysing {min(len(run.steps), max_checkpoints or len(run.steps))} checkpoints ...")
            analysis = analyze(run, max_checkpoints=max_checkpoints, progress=progress)
        seconds["analyse"] = time.perf_counter() - t
        t = time.perf_counter()
        report = write_run_report(run.path, analysis=analysis)
        seconds["report"] = time.perf_counter() - t
        log(f"      report: {report} ({report.stat().st_size / 1e6:.1f} MB)")
        results.append(DemoRun(cfg, run.path, report, analysis, headline(analysis), seconds))
    write_index(root / REPORT_FILES["index"], results)
    return results


def write_index(path: Path, results: Sequence[DemoRun]) -> Path:
    """A small page linking the demo's reports with their headlines."""
    from .report.html import write_public

    items = "".join(
        f'<li><a href="{html.escape(os.path.relpath(r.report, path.parent))}">{html.escape(r.config.name)}</a>: '
        f"{html.escape(r.headline)}</li>"
        for r in results
    )
    text = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>mechgrok demo</title>'
        "<style>body{font-family:sans-serif;max-width:900px;margin:40px auto;line-height:1.5}</style></head>"
        f"<body><h1>mechgrok demo</h1><ul>{items}</ul></body></html>\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_public(path, text.encode())
    return path

"""The ``mechgrok`` command.

Every command shows progress on long work and ends with a short human summary. Bad input (config
values, paths, damaged files) ends with a one-line ``error: ...`` on stderr and exit status 2,
never a traceback.
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from typing import get_args, get_type_hints

import typer
from rich.console import Console
from rich.table import Table

from ._util import format_step
from .config import ConfigError
from .layout import ANALYSIS_FILES, REPORT_FILES, RUN_FILES, SWEEP_FILES
from .probes.events import PHASE_RULES
from .probes.llc import LLCConfig
from .report._common import DEFAULT_MAX_FRAMES
from .scripts import parse_sets
from .store import StoreError
from .sweep import EngineConfig, SweepSpec
from .sweep.spec import MAX_MEMBERS

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Train small networks into grokking and explain the transition."
)
console = Console()

DEFAULT_ROOT = Path("checkpoints")
# option defaults come from the classes that own them, so the CLI and the API cannot drift apart
_ENGINE = EngineConfig()
_ENGINES = ", ".join(get_args(get_type_hints(EngineConfig)["engine"]))
_PHASE_RULE = PHASE_RULES[0]  # the accuracy rule; detect_events' default
_MAX_CONFIG_BYTES = 1 << 20  # a config is a few KB; do not read a stray big file


def _fmt_num(value, spec: str) -> str:
    """A summary number; ``None`` (no test set, or a diverged run) prints as "n/a"."""
    return "n/a" if value is None else format(value, spec)


@app.command()
def presets() -> None:
    """List the named presets."""
    from .presets import PRESETS, preset

    table = Table("preset", "model", "task", "steps", "description")
    for name, (_, desc) in PRESETS.items():
        cfg = preset(name)
        task = {
            "parity": f"parity n={cfg.task.n_bits}",
            "group": f"group {cfg.task.group} (order {cfg.task.p})",
            "custom": f"custom {cfg.task.factory}",
        }.get(cfg.task.kind, f"{cfg.task.op} mod {cfg.task.p}")
        table.add_row(name, cfg.model.kind, task, f"{cfg.train.steps:,}", desc)
    console.print(table)


@app.command()
def train(
    preset: str | None = typer.Argument(None, help="Preset name (see `mechgrok presets`)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config value: section.key=value (repeatable)."),
    out: Path | None = typer.Option(None, "--out", help="Run folder (default checkpoints/PRESET)."),
    resume: Path | None = typer.Option(None, "--resume", help="Continue the killed run in this folder."),
    config: Path | None = typer.Option(
        None, "--config", help=f"Train from a {RUN_FILES['config']} instead of a preset."
    ),
    threads: int = typer.Option(
        0, "--threads", help="Intra-op CPU threads (0 = train.threads, else automatic: 1 for small models)."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Train one model and write its run folder."""
    from .config import RunConfig
    from .presets import preset as get_preset
    from .train import resume as resume_run
    from .train import train as run_train

    if resume is not None:
        if preset or set_ or config:
            raise ConfigError("--resume: takes no preset, --set or --config (the run folder's config is used)")
        result = resume_run(resume, progress=not quiet, threads=threads)
        _print_train_summary(result)
        return
    if config is not None:
        from .config import load_json_text

        if not config.is_file():
            raise StoreError(f"{config}: no such config file")
        if config.stat().st_size > _MAX_CONFIG_BYTES:
            raise ConfigError(f"{config}: too large for a config file ({config.stat().st_size:,} bytes)")
        data = load_json_text(config.read_bytes(), str(config))
        try:
            cfg = RunConfig.from_dict(data.get("config", data) if isinstance(data, dict) else data)
        except ConfigError as e:
            raise ConfigError(f"{config}: {e}") from None
    elif preset is None:
        raise ConfigError("train: name a preset (see `mechgrok presets`), --config FILE or --resume RUN")
    else:
        cfg = get_preset(preset)
    cfg = cfg.with_overrides(parse_sets(set_)) if set_ else cfg
    out = out or DEFAULT_ROOT / cfg.name
    result = run_train(cfg, out, progress=not quiet, threads=threads)
    _print_train_summary(result)


def _print_train_summary(result) -> None:
    s = result.summary
    name = result.config.name
    where = f" -> {result.run.path}" if result.run is not None else ""
    console.print(
        f"[bold]{name}[/bold]{where}\n"
        f"  100% train accuracy at step {format_step(s['step_train_acc_100'])}, "
        f">= 99% test accuracy at step {format_step(s['step_test_acc_99'])}\n"
        f"  final: train acc {_fmt_num(s['final_train_acc'], '.3f')}, test acc {_fmt_num(s['final_test_acc'], '.3f')}, "
        f"test loss {_fmt_num(s['final_test_loss'], '.3g')}, weight norm {_fmt_num(s['final_weight_norm'], '.1f')}\n"
        f"  {s['steps']:,} steps in {s['seconds']:.1f} s ({s['steps_per_second']:.0f} steps/s)"
        + (f", resumed from step {s['resumed_from']:,}" if s.get("resumed_from") else "")
    )


# further commands (analyze, report, demo, sweep) register themselves below
@app.command()
def analyze(
    path: Path = typer.Argument(..., help="Run folder, or a progress-measures-paper checkpoint (.pth) to import."),
    max_checkpoints: int | None = typer.Option(
        None, "--max-checkpoints", help="Analyse at most this many checkpoints, evenly spaced."
    ),
    import_to: Path | None = typer.Option(
        None, "--import-to", help="Run folder for an imported .pth (default FILE.mechgrok/)."
    ),
    phase_rule: str = typer.Option(
        _PHASE_RULE, "--phase-rule", help="accuracy, or loss (PAIR's sweep rule on the loss curves)."
    ),
    chunk_size: int | None = typer.Option(
        None, "--chunk-size", help="Checkpoints in memory at once (default: what fits in 256 MB)."
    ),
    threads: int = typer.Option(0, "--threads", help="Intra-op CPU threads (0 = automatic: 1 for small models)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    their_config: Path | None = typer.Option(
        None,
        "--config",
        help="Zhong et al.'s config_<id>.json (import PATH, their model_<id>.pt, as a clock-and-pizza model) "
        "or Chughtai et al.'s cfg.json (PATH their group MLP's model.pt).",
    ),
    signatures: bool = typer.Option(
        False, "--signatures", help="Also print the clock/pizza signatures (always with --config)."
    ),
    llc: bool = typer.Option(
        False,
        "--llc",
        help="Add the local learning coefficient of every analysed checkpoint "
        "(SGLD; any --llc-* implies it; bound the cost with --max-checkpoints).",
    ),
    llc_epsilon: float | None = typer.Option(
        None, "--llc-epsilon", help=f"LLC: SGLD step size (default {LLCConfig.epsilon:g})."
    ),
    llc_gamma: float | None = typer.Option(
        None, "--llc-gamma", help=f"LLC: localisation strength (default {LLCConfig.gamma:g})."
    ),
    llc_nbeta: float | None = typer.Option(None, "--llc-nbeta", help="LLC: n*beta (default n / log n)."),
    llc_chains: int | None = typer.Option(
        None, "--llc-chains", help=f"LLC: chains per checkpoint (default {LLCConfig.chains})."
    ),
    llc_burnin: int | None = typer.Option(
        None, "--llc-burnin", help=f"LLC: burn-in steps (default {LLCConfig.burnin})."
    ),
    llc_draws: int | None = typer.Option(
        None, "--llc-draws", help=f"LLC: draws per chain (default {LLCConfig.draws})."
    ),
    llc_batch_size: int | None = typer.Option(
        None, "--llc-batch-size", help="LLC: minibatch size (default: the full training set)."
    ),
    llc_seed: int | None = typer.Option(
        None, "--llc-seed", help=f"LLC: seed of the chains (default {LLCConfig.seed})."
    ),
) -> None:
    """Run every probe that applies to a run; save RUN/analysis/ and print a summary."""
    from .analysis import analyze as run_analyze

    settings = {
        "epsilon": llc_epsilon,
        "gamma": llc_gamma,
        "nbeta": llc_nbeta,
        "chains": llc_chains,
        "burnin": llc_burnin,
        "draws": llc_draws,
        "batch_size": llc_batch_size,
        "seed": llc_seed,
    }
    settings = {k: v for k, v in settings.items() if v is not None}
    llc_config = LLCConfig(**settings) if llc or settings else None  # validated before any work starts
    source: Path | object = path
    if their_config is not None:
        from .importers import import_chughtai_checkpoint, import_zhong_checkpoint, is_chughtai_config

        if is_chughtai_config(their_config):  # Chughtai et al.'s cfg.json names a group
            source = import_chughtai_checkpoint(path, their_config, import_to)
        else:
            source = import_zhong_checkpoint(path, their_config, import_to)
            signatures = True
    result = run_analyze(
        source,
        max_checkpoints=max_checkpoints,
        import_to=import_to,
        progress=not quiet,
        phase_rule=phase_rule,
        chunk_size=chunk_size,
        threads=threads,
        llc=llc_config,
    )
    _print_analysis(result, result.run_dir / ANALYSIS_FILES["dir"])
    if signatures:
        _print_signatures(result.run_dir)


def _import_record(run_dir: Path | None) -> dict:
    """The run's import record (empty for a run trained here)."""
    import json

    from .layout import IMPORT_FILES

    try:
        record = json.loads((Path(run_dir) / IMPORT_FILES["record"]).read_text()) if run_dir else {}
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _print_signatures(run_dir: Path) -> None:
    """Zhong et al.'s signatures of the last checkpoint, and its classification."""
    from .probes.algorithms import algorithm_signatures
    from .store import Run

    traj = Run.open(run_dir).trajectory()
    last = traj.subset([len(traj) - 1])
    sig = algorithm_signatures(last)
    p = traj.config.task.p
    console.print(f"  step {int(sig['steps'][0]):,}: accuracy on all {p * p:,} pairs {float(sig['accuracy'][0]):.3f}")
    for key in ("distance_irrelevance", "gradient_symmetricity", "circularity"):
        console.print(f"  {key.replace('_', ' ')} {float(sig[key][0]):.3f}")
    console.print(f"  algorithm: {sig['algorithm'][0]}")


def _print_analysis(result, where) -> None:
    ev = result.events
    # names are printed, never parsed as markup (a run name may hold [brackets]), and cut to a line:
    # rich's line wrapping is quadratic in the length of a word (a 100 KB name took 60 s to print)
    name = str(result.records["run"]["name"])
    name = name if len(name) <= 80 else name[:77] + "..."
    console.print(f"{name} -> {where}", markup=False, highlight=False)
    if result.records.get("diverged"):
        console.print(f"  the run diverged: {result.records['diverged']}", markup=False, highlight=False)
    console.print(
        f"  phase: {ev.phase} ({ev.rule} rule); memorised at step {format_step(ev.memorised_step)}, "
        f"generalised at step {format_step(ev.generalised_step)}"
    )
    if result.task == "modular":
        console.print(f"  key frequencies: {result.key_frequencies or 'none'}")
    elif result.task == "group":
        from .analysis import key_irreps_line

        record = _import_record(result.run_dir)
        if "table_accuracy" in record:
            console.print(f"  accuracy on the whole table: {record['table_accuracy']:.4f}")
        console.print(f"  {key_irreps_line(result.records)}", markup=False, highlight=False)
    else:
        console.print(
            f"  pruned at step {format_step(ev.extra.get('pruned_step'))}, irrelevant-bit sensitivity ~0 "
            f"from step {format_step(ev.extra.get('sensitivity_zero_step'))}"
        )
    console.print(f"  {result.summary}", soft_wrap=True, markup=False, highlight=False)
    if result.records.get("llc"):
        r = result.records["llc"]
        flagged = f"; flagged at steps {r['flagged_steps'][:5]}" if r["flagged_steps"] else ""
        console.print(
            f"  local learning coefficient: peak {r['peak']:.3g} at step {format_step(r['peak_step'])}, "
            f"last {r['final']:.3g} (n*beta {r['nbeta']:.4g}{flagged})",
            markup=False,
            highlight=False,
        )
    console.print(f"  {result.records['run']['n_checkpoints']} checkpoints in {result.timings['total']:.1f} s")


@app.command()
def report(
    path: Path = typer.Argument(..., help="Run folder or sweep folder."),
    out: Path | None = typer.Option(None, "--out", help=f"HTML file to write (default PATH/{REPORT_FILES['run']})."),
    max_frames: int = typer.Option(
        DEFAULT_MAX_FRAMES, "--max-frames", help="At most this many slider frames per figure."
    ),
    no_analyze: bool = typer.Option(
        False, "--no-analyze", help="Do not run the probes when the run has no stored analysis."
    ),
    x: str | None = typer.Option(None, "--x", help="Sweep: parameter on the phase map's x axis."),
    y: str | None = typer.Option(None, "--y", help="Sweep: parameter on the phase map's y axis."),
    phase_rule: str | None = typer.Option(
        None,
        "--phase-rule",
        help=f"accuracy or loss (PAIR's rule); default: the stored analysis's / {SWEEP_FILES['results']}'s.",
    ),
    threads: int = typer.Option(0, "--threads", help="Intra-op CPU threads (0 = automatic: 1 for small models)."),
) -> None:
    """Write one self-contained, offline HTML report for a run or a sweep folder."""
    from .report import write_run_report, write_sweep_report

    if not path.is_dir():
        raise StoreError(f"{path}: no such run or sweep folder")
    if out is not None and out.is_dir():
        raise StoreError(f"{out}: is a folder; --out takes the HTML file to write (e.g. {out / REPORT_FILES['run']})")
    if out is not None and any(p.exists() and not p.is_dir() for p in out.parents):
        raise StoreError(
            f"{out}: cannot write there, {next(p for p in out.parents if p.exists() and not p.is_dir())} is a file"
        )
    if (path / RUN_FILES["config"]).exists():
        if x or y:
            raise ConfigError("--x/--y: only for sweep folders")
        with console.status(f"analysing and drawing {path} ..."):
            written = write_run_report(
                path, out, compute=not no_analyze, max_frames=max_frames, phase_rule=phase_rule, threads=threads
            )
    else:
        written = write_sweep_report(path, out, x=x, y=y, phase_rule=phase_rule, threads=threads)
    console.print(f"report: {written} ({written.stat().st_size / 1e6:.1f} MB)")


@app.command()
def demo(
    out: Path = typer.Option(DEFAULT_ROOT / "demo", "--out", help="Folder for the demo's runs and reports."),
    quick: bool = typer.Option(False, "--quick", help="A few hundred steps per run: checks the pipeline in seconds."),
    threads: int = typer.Option(0, "--threads", help="Intra-op CPU threads (0 = automatic: 1 for small models)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """The main job: train parity, modadd-mlp24 and modadd-cossin5, analyse them, write reports."""
    import time

    import torch

    from ._threads import ENV_VAR, threads_for
    from .demo import demo_configs, run_demo

    saved_env = os.environ.get(ENV_VAR)
    if threads:
        # through the environment: the demo trains in a spawned background process too
        os.environ[ENV_VAR] = str(threads_for(None, threads))
    elif "OMP_NUM_THREADS" not in os.environ:
        # these models are tiny: extra intra-op threads only spin-wait and slow a shared CPU down
        torch.set_num_threads(1)
    t0 = time.perf_counter()
    try:
        results = run_demo(
            out,
            demo_configs(quick),
            progress=not quiet,
            parallel=(os.cpu_count() or 1) >= 2,
            log=lambda s: console.print(s, highlight=False, markup=False),
        )
    finally:
        if saved_env is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = saved_env
    console.print(
        f"\n[bold]mechgrok demo[/bold] finished in {time.perf_counter() - t0:.0f} s; open the reports in a browser:"
    )
    for r in results:
        console.print(f"  {r.report}", highlight=False, markup=False)
    console.print(f"  {out / REPORT_FILES['index']} (all three)", highlight=False, markup=False)
    console.print("\n[bold]headline numbers[/bold]")
    for r in results:
        console.print(f"  {r.headline}", highlight=False, markup=False, soft_wrap=True)


@app.command()
def sweep(
    preset: str | None = typer.Argument(None, help="Preset every member starts from (see `mechgrok presets`)."),
    grid: list[str] = typer.Option(
        [], "--grid", help="Axis key=values: 0.1,1 | log:LOW:HIGH:N | lin:LOW:HIGH:N (repeatable)."
    ),
    seeds: int = typer.Option(SweepSpec.seeds, "--seeds", help="Model seeds per grid point."),
    max_members: int = typer.Option(MAX_MEMBERS, "--max-members", help="Refuse grids with more members than this."),
    set_: list[str] = typer.Option([], "--set", help="Override a base config value: section.key=value (repeatable)."),
    out: Path | None = typer.Option(None, "--out", help="Sweep folder (default checkpoints/sweep-PRESET)."),
    resume: Path | None = typer.Option(None, "--resume", help="Continue the killed sweep in this folder."),
    max_batch: int = typer.Option(_ENGINE.max_batch, "--max-batch", help="Models trained at once."),
    early_stop: bool = typer.Option(
        _ENGINE.early_stop, "--early-stop", help="Stop members once clearly generalised (or diverged)."
    ),
    patience: int = typer.Option(
        _ENGINE.patience, "--patience", help="Early stop: steps a member must stay generalised."
    ),
    log_every: int = typer.Option(
        _ENGINE.log_every, "--log-every", help="Metrics row every N steps (evaluation steps always logged)."
    ),
    engine: str = typer.Option(_ENGINE.engine, "--engine", help=f"Batched forward: {_ENGINES}."),
    device: str = typer.Option(_ENGINE.device, "--device", help="torch device (default: the preset's train.device)."),
    workers: int = typer.Option(
        0, "--workers", help="CPU threads training chunks side by side (0 = --threads, else one per core)."
    ),
    threads: int = typer.Option(
        0,
        "--threads",
        help="CPU threads for the sweep: that many chunk workers of one intra-op thread each (0 = one per core).",
    ),
    backend: str = typer.Option("local", "--backend", help="local, or ray (needs mechgrok[ray])."),
    ray_address: str | None = typer.Option(
        None, "--ray-address", help="Ray cluster to join (default: start a local one)."
    ),
    phase_rule: str = typer.Option(
        _PHASE_RULE, "--phase-rule", help=f"{SWEEP_FILES['results']} phases: accuracy, or loss (PAIR's sweep rule)."
    ),
    llc: bool = typer.Option(
        False,
        "--llc",
        help=f"Record each member's final local learning coefficient in {SWEEP_FILES['results']} "
        "(default LLCConfig; --llc-chains / --llc-draws imply it).",
    ),
    llc_chains: int | None = typer.Option(
        None, "--llc-chains", help=f"LLC: chains per member (default {LLCConfig.chains})."
    ),
    llc_draws: int | None = typer.Option(
        None, "--llc-draws", help=f"LLC: draws per chain (default {LLCConfig.draws})."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Train a grid of models at once (batched engine) into a sweep folder with a results table."""
    import time

    from ._threads import ENV_VAR, intra_op_threads, threads_for
    from .presets import preset as get_preset
    from .sweep import EngineConfig, SweepSpec, run_sweep

    # one CPU budget: --threads T (or $MECHGROK_THREADS) means T chunk workers, each on one
    # intra-op thread (the engine sets that while it runs); with --workers 1, T intra-op threads
    # for the single worker. Neither changes the trajectories (workers are bitwise neutral).
    budget = threads_for(None, threads) if threads or os.environ.get(ENV_VAR, "").strip() else 0
    eng = EngineConfig(
        max_batch=max_batch,
        engine=engine,
        device=device,
        log_every=log_every,
        early_stop=early_stop,
        patience=patience,
        workers=workers or budget,
    )
    settings = {k: v for k, v in {"chains": llc_chains, "draws": llc_draws}.items() if v is not None}
    llc_config = LLCConfig(**settings) if llc or settings else None
    if resume is not None:
        if preset or grid or set_ or seeds != SweepSpec.seeds:
            raise ConfigError("--resume: takes no preset, --grid, --set or --seeds (the sweep folder's spec is used)")
        spec, folder = None, resume
    else:
        if preset is None:
            raise ConfigError("sweep: name a preset (see `mechgrok presets`) or --resume SWEEP")
        base = get_preset(preset)
        base = base.with_overrides(parse_sets(set_)) if set_ else base
        spec = SweepSpec.from_cli(base, grid, seeds=seeds, max_members=max_members)
        folder = out or DEFAULT_ROOT / f"sweep-{preset}"
        console.print(f"sweep: {spec.describe()} -> {folder}", highlight=False, soft_wrap=True)
    t0 = time.perf_counter()
    with intra_op_threads(budget or 1):
        result = run_sweep(
            spec,
            folder,
            engine=eng,
            backend=backend,
            progress=not quiet,
            ray_address=ray_address,
            phase_rule=phase_rule,
            llc=llc_config,
        )
    counts = result.phase_counts(phase_rule)
    n = sum(counts.values())
    phases = ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])) or "none"
    console.print(
        f"[bold]sweep[/bold] {result.path}: {n:,} of {len(result):,} models finished in "
        f"{time.perf_counter() - t0:.1f} s\n  phases: {phases}\n  results: {result.path / SWEEP_FILES['results']}",
        highlight=False,
        soft_wrap=True,
    )


# -- commands: end --


_USER_PATH_ERRNOS = {
    errno.ENOENT,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EEXIST,
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOSPC,
    errno.EDQUOT,
    errno.ENAMETOOLONG,
    errno.ELOOP,
    errno.EFBIG,
    errno.ENOTEMPTY,
    errno.EXDEV,
}


def _os_error_line(e: OSError) -> str:
    """``PATH: reason`` for an OSError (both paths of a failed rename)."""
    reason = e.strerror or (str(e).splitlines() or [type(e).__name__])[0]
    paths = [p for p in (e.filename, e.filename2) if p is not None]
    if not paths:
        return reason
    names = " -> ".join(os.fsdecode(p) for p in paths)
    return f"{names}: {reason}"


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs the typer app, turning known errors into one line and exit code 2."""
    try:
        app(args=argv, standalone_mode=False)
    except (ConfigError, StoreError) as e:
        # bad input only: any other exception (ValueError, TypeError, ...) is a bug and keeps its traceback
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as e:
        # the OS refusing a user's path (missing, a file where a folder is needed, read-only,
        # disk full): one line naming the path; any other OSError is a bug and keeps its traceback
        if e.errno not in _USER_PATH_ERRNOS and not isinstance(e, FileNotFoundError):
            raise
        print(f"error: {_os_error_line(e)}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as e:
        # usage errors from click (vendored by typer >= 0.24 as typer._click, hence duck-typing)
        if hasattr(e, "format_message") and hasattr(e, "exit_code"):
            print(f"error: {e.format_message()}", file=sys.stderr)
            raise SystemExit(2) from None
        if type(e).__name__ == "Abort":
            raise SystemExit(1) from None
        raise


if __name__ == "__main__":
    main()

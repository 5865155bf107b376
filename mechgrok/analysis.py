"""Analyse a whole run: every probe that applies to its task, events, a summary, saved to disk.

:func:`analyze` computes, for every checkpoint of a run,

* parity runs: bit dependence (``bits/weight_norm``, ``bits/max_abs_weight``, ``bits/grad_attr``,
  ``bits/flip_sensitivity``, ``bits/relevant``), the causal check ``bits/prune_now_acc`` and the
  series the pruning events are read from (``bits/irrelevant_weight_ratio``,
  ``bits/irrelevant_sensitivity``, ``bits/irrelevant_grad_attr``);
* modular runs: the Fourier probes (``fourier/<key>`` of
  :func:`~mechgrok.probes.fourier.fourier_over_training`), the progress measures
  (``progress/<key>`` of :func:`~mechgrok.probes.progress.progress_measures`) and, for the cos/sin
  model always and for other MLP-layer models when their hidden layer has a dominant frequency
  (mean fraction of variance explained by each neuron's frequency >= ``circle_min_frac``, 0.5, at
  the last checkpoint), the neuron circles (``circles/<key>`` of
  :func:`~mechgrok.probes.circles.neuron_circles`);

for every run the numerical-stability probes (``stability/collapse_fraction``,
``stability/zero_grad_fraction``, ``stability/alignment`` and ``stability/alignment/<param>``,
``stability/logit_norm`` of :func:`~mechgrok.probes.stability.stability_over_training`, in the
run's own loss and loss precision; the summary quotes the final collapse fraction);

plus the run's :class:`~mechgrok.probes.events.GrokEvents` (its ``extra`` holding the task's
events: :func:`~mechgrok.probes.bits.parity_events` or
:func:`~mechgrok.probes.progress.modular_events`) and a one-paragraph summary.

On disk (next to the run's own files)::

    RUN/analysis/analysis.<generation>.safetensors   "steps" [n] and every tensor under its flat name
    RUN/analysis/analysis.json                       records: task, events, key_frequencies, summary,
                                                     the tensor file's name, and ``source``

The JSON is the commit point: it is written (atomically) after the tensor file it names, and the
previous generation's tensor file is removed only after it, so a kill at any moment leaves either
the old analysis or the new one, never the new records with old tensors. (Analyses saved before
generations existed name no file and are read from ``analysis.safetensors``.)

``records["source"]`` says what the analysis was computed from - the checkpoint index and each
checkpoint file's size and modification time, the metrics file's size and modification time, the
config's hash, the analysis options and the mechgrok version - so :func:`analysis_is_current`
can tell a stored analysis made mid-training (or before a resume, a re-import, another mechgrok)
from a current one; the report recomputes stale analyses instead of drawing them.

The trajectory is streamed: checkpoints are loaded ``chunk_size`` at a time (default: as many as
fit in ``chunk_mb``, 256 MB), every probe runs on the chunk and the per-checkpoint results are
concatenated; quantities of the whole run (key frequencies from the last checkpoint, events) are
computed before or after the chunks, so the result equals the unchunked analysis.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ._threads import with_threads
from ._util import format_step
from .config import ConfigError
from .importers import default_import_dir, importer_for, run_dataset
from .layout import ANALYSIS_FILES, IMPORT_FILES, RUN_FILES
from .probes._common import to_jsonable
from .probes._modular import modular_sweep
from .probes.bits import bit_dependence, irrelevant_series, parity_events, prune_now_accuracy
from .probes.circles import circles_from_coefficients
from .probes.events import PHASE_RULES, GrokEvents, detect_events, loss_scale_of
from .probes.fourier import FOURIER_KEYS
from .probes.progress import PROGRESS_KEYS, modular_events
from .probes.stability import stability_over_training
from .store import Run, StoreError, Trajectory, atomic_save_tensors, atomic_write_json
from .tasks import Dataset, make_dataset

__all__ = [
    "ANALYSIS_FILES",
    "Analysis",
    "analyze",
    "analysis_is_current",
    "analysis_source",
    "load_analysis",
    "resolve_run",
]

FORMAT_VERSION = 2
_GEN_PREFIX, _GEN_SUFFIX = ANALYSIS_FILES["generation"].split("{generation}")
# the tensor file names an analysis may record: a generation's, or the pre-generation name
_TENSOR_NAME = re.compile(
    f"{re.escape(ANALYSIS_FILES['tensors'])}|{re.escape(_GEN_PREFIX)}[0-9a-f]{{8,32}}{re.escape(_GEN_SUFFIX)}"
)
DEFAULT_CHUNK_MB = 256


@dataclass
class Analysis:
    """Probe results of one run: per-checkpoint tensors (leading axis aligned with ``steps``) and
    JSON records (``task``, ``events``, ``key_frequencies``, ``summary``, ...)."""

    steps: torch.Tensor
    tensors: dict[str, torch.Tensor]
    records: dict[str, Any]
    run_dir: Path | None = None
    timings: dict[str, float] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        groups = sorted({k.split("/", 1)[0] for k in self.tensors})
        return (
            f"Analysis({self.records.get('run', {}).get('name', '?')!r}, task={self.records.get('task')!r}, "
            f"checkpoints={len(self.steps)}, groups={groups}, run_dir={str(self.run_dir) if self.run_dir else None!r})"
        )

    def __getitem__(self, key: str) -> torch.Tensor:
        try:
            return self.tensors[key]
        except KeyError:
            raise KeyError(f"{key!r}: not in this analysis; have {', '.join(sorted(self.tensors))}") from None

    def __contains__(self, key: str) -> bool:
        return key in self.tensors

    @property
    def task(self) -> str:
        return self.records["task"]

    @property
    def summary(self) -> str:
        return self.records["summary"]

    @property
    def events(self) -> GrokEvents:
        return GrokEvents(**self.records["events"])

    @property
    def key_frequencies(self) -> list[int]:
        return list(self.records.get("key_frequencies", []))

    def group(self, prefix: str) -> dict[str, torch.Tensor]:
        """The tensors under ``prefix/`` with the prefix removed (e.g. ``group("bits")``)."""
        return {k.split("/", 1)[1]: v for k, v in self.tensors.items() if k.startswith(prefix + "/")}

    def save(self, run_dir: str | Path | None = None) -> Path:
        """Write the tensors under a new generation name, then ``analysis.json`` naming them (the
        commit point), then remove the older generations (module docstring)."""
        run_dir = Path(run_dir) if run_dir is not None else self.run_dir
        if run_dir is None:
            raise StoreError("analysis: no run folder to save into; pass one to save()")
        folder = run_dir / ANALYSIS_FILES["dir"]
        folder.mkdir(parents=True, exist_ok=True)
        generation = uuid.uuid4().hex[:16]
        name = ANALYSIS_FILES["generation"].format(generation=generation)
        tensors = {"steps": self.steps.to(torch.int64), **{k: _storable(v) for k, v in self.tensors.items()}}
        atomic_save_tensors(folder / name, tensors, {"format": str(FORMAT_VERSION), "generation": generation})
        records = {**self.records, "tensors_file": name, "generation": generation}
        atomic_write_json(folder / ANALYSIS_FILES["records"], to_jsonable(records))
        self.records = records
        self.run_dir = run_dir
        _remove_old_generations(folder)
        return folder


def _remove_old_generations(folder: Path) -> None:
    """Delete tensor files the committed records do not name (older generations, or one left by a
    kill before its records were written). The records are re-read so that a second process that
    committed meanwhile keeps its file."""
    try:
        keep = json.loads((folder / ANALYSIS_FILES["records"]).read_text()).get("tensors_file")
    except (OSError, ValueError, AttributeError):
        return
    for f in folder.glob(f"{_GEN_PREFIX.rstrip('.')}*{_GEN_SUFFIX}"):  # both kinds of name
        if f.name != keep and _TENSOR_NAME.fullmatch(f.name):
            f.unlink(missing_ok=True)


def _storable(t: torch.Tensor) -> torch.Tensor:
    # a copy: safetensors refuses tensors sharing memory (e.g. circles/freq is the neurons' freq)
    return t.detach().to("cpu").clone().contiguous()


def resolve_run(path: str | Path | Run, *, import_to: str | Path | None = None) -> Run:
    """A :class:`Run` from a run folder or a progress-measures-paper ``.pth`` file (imported into
    ``import_to``, default ``FILE.mechgrok/``)."""
    if isinstance(path, Run):
        return path
    path = Path(path)
    if path.is_file():
        importer = importer_for(path)
        if importer is None:
            raise StoreError(f"{path}: expected a run folder or a progress-measures-paper .pth file")
        return importer(path, import_to)
    return Run.open(path)


def load_analysis(run_dir: str | Path) -> Analysis:
    """Read the analysis saved in ``RUN/analysis/`` (``run_dir`` may also be an imported .pth)."""
    run_dir = Path(run_dir)
    if run_dir.is_file() and importer_for(run_dir) is not None:
        run_dir = default_import_dir(run_dir)
    folder = run_dir / ANALYSIS_FILES["dir"]
    records_path = folder / ANALYSIS_FILES["records"]
    if not records_path.exists():  # the commit point: tensors without records were never committed
        raise StoreError(f"{run_dir}: no analysis saved; run `mechgrok analyze {run_dir}` first")
    try:
        records = json.loads(records_path.read_text())
        if not isinstance(records, dict):
            raise ValueError("not a JSON object")
    except Exception as e:  # OSError / JSONDecodeError / ValueError
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise StoreError(f"{records_path}: unreadable analysis records ({msg})") from None
    name = records.get("tensors_file", ANALYSIS_FILES["tensors"])
    if not isinstance(name, str) or not _TENSOR_NAME.fullmatch(name):
        raise StoreError(f"{records_path}: tensors_file {str(name)[:80]!r} is not an analysis tensor file name")
    tensors_path = folder / name
    if not tensors_path.exists():
        raise StoreError(f"{tensors_path}: missing (named by {records_path}); run `mechgrok analyze {run_dir}` again")
    try:
        with safe_open(tensors_path, "pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(tensors_path)
    except Exception as e:  # safetensors raises several types for damaged files
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise StoreError(f"{tensors_path}: unreadable analysis tensors ({msg})") from None
    if "generation" in records and meta.get("generation") != records["generation"]:
        raise StoreError(
            f"{tensors_path}: generation {meta.get('generation')!r} does not match {records_path} "
            f"({records['generation']!r})"
        )
    steps = tensors.pop("steps", None)
    if steps is None:
        raise StoreError(f"{tensors_path}: no 'steps' tensor")
    return Analysis(steps, tensors, records, run_dir)


def _pick_rows(n: int, max_checkpoints: int | None) -> list[int] | None:
    if max_checkpoints is None or max_checkpoints >= n:
        return None
    if max_checkpoints < 2:
        raise ConfigError(f"max_checkpoints: must be >= 2, got {max_checkpoints}")
    return sorted({int(round(x)) for x in np.linspace(0, n - 1, max_checkpoints)})


def _has_evidence(m: dict[str, Any], split: str) -> bool:
    return any(
        k in m and np.isfinite(np.asarray(m[k], dtype=np.float64)).any() for k in (f"{split}_acc", f"{split}_loss")
    )


def _metrics_for_events(
    run: Run | None, fallback: Callable[[], dict[str, torch.Tensor]], steps: torch.Tensor
) -> dict[str, Any]:
    """The run's logged metrics when they have train and test evidence (accuracy or loss; an
    imported run has losses at every step and accuracy only at its checkpoints), else
    ``fallback()``'s checkpoint-derived columns (imported or hand-made trajectories)."""
    if run is not None:
        m = run.metrics()
        if m and "step" in m and len(m["step"]) and _has_evidence(m, "train") and _has_evidence(m, "test"):
            return m
    cols = fallback()
    return {"step": steps.numpy(), **{k: v.numpy() for k, v in cols.items()}}


def analysis_source(run: Run) -> dict[str, Any]:
    """What an analysis of ``run`` is computed from (module docstring); cheap: file stats, no reads
    of the checkpoints themselves."""
    from . import __version__  # lazy: the package imports this module

    def stat(path: Path) -> list[int] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return [int(st.st_size), int(st.st_mtime_ns)]

    steps = run.steps
    h = hashlib.sha256()
    for s in steps:
        h.update(f"{s}:{stat(run.checkpoint_path(s))};".encode())
    try:
        config_hash = hashlib.sha256((run.path / RUN_FILES["config"]).read_bytes()).hexdigest()
    except OSError:
        config_hash = None
    return {
        "checkpoints": {
            "n": len(steps),
            "first_step": steps[0] if steps else None,
            "last_step": steps[-1] if steps else None,
            "files_sha256": h.hexdigest(),
        },
        "metrics": stat(run.path / RUN_FILES["metrics"]),
        "split": stat(run.path / IMPORT_FILES["split"]),
        "config_sha256": config_hash,
        "mechgrok": __version__,
        "format": FORMAT_VERSION,
    }


def analysis_is_current(
    analysis: Analysis, run: Run | str | Path | None = None, *, options: dict[str, Any] | None = None
) -> tuple[bool, str]:
    """``(True, "")`` if ``analysis`` was computed from the run as it is now (and with ``options``,
    when given: only the keys given are compared), else ``(False, why)``."""
    run = Run.open(run) if isinstance(run, (str, Path)) else run
    if run is None:
        if analysis.run_dir is None:
            return False, "the analysis has no run folder"
        run = Run.open(analysis.run_dir)
    stored = analysis.records.get("source")
    if not isinstance(stored, dict):
        return False, "it records no source (saved by an older mechgrok)"
    now = analysis_source(run)
    if stored.get("format") != now["format"] or stored.get("mechgrok") != now["mechgrok"]:
        return False, f"it was made by mechgrok {stored.get('mechgrok')} (format {stored.get('format')})"
    if stored.get("config_sha256") != now["config_sha256"]:
        return False, "the run's config changed"
    old, new = stored.get("checkpoints") or {}, now["checkpoints"]
    if old.get("n") != new["n"] or old.get("last_step") != new["last_step"]:
        return False, (
            f"the run's checkpoints changed ({old.get('n')} to step {old.get('last_step')} -> "
            f"{new['n']} to step {new['last_step']})"
        )
    if old.get("files_sha256") != new["files_sha256"]:
        return False, "checkpoint files were rewritten"
    if stored.get("metrics") != now["metrics"] or stored.get("split") != now["split"]:
        return False, "the run's metrics or data split changed"
    if options:
        had = analysis.records.get("options") or {}
        diff = sorted(k for k, v in options.items() if had.get(k) != v)
        if diff:
            return False, f"its options differ ({', '.join(f'{k}={had.get(k)!r}' for k in diff)})"
    return True, ""


def _chunk_rows(n: int, per_checkpoint_bytes: int, chunk_size: int | None, chunk_mb: float) -> list[slice]:
    if chunk_size is not None and chunk_size < 1:
        raise ConfigError(f"chunk_size: must be >= 1, got {chunk_size}")
    size = chunk_size or max(1, int(chunk_mb * 2**20 // max(per_checkpoint_bytes, 1)))
    return [slice(i, min(n, i + size)) for i in range(0, n, size)]


def _iter_trajectory(
    run: Run | None, traj: Trajectory | None, wanted: list[int] | None, chunk_size: int | None, chunk_mb: float
):
    """Chunks of the trajectory, each a :class:`Trajectory`; damaged checkpoints are skipped with a
    warning naming the file (as ``Run.trajectory`` does)."""
    if traj is not None:
        per = sum(v[0].numel() * v.element_size() for v in traj.params.values()) if len(traj) else 1
        for rows in _chunk_rows(len(traj), per, chunk_size, chunk_mb):
            yield traj.subset(list(range(rows.start, rows.stop)))
        return
    assert run is not None and wanted is not None
    sizes = [run.checkpoint_path(s).stat().st_size for s in wanted[-1:] if run.checkpoint_path(s).exists()]
    for rows in _chunk_rows(len(wanted), sizes[0] if sizes else 1, chunk_size, chunk_mb):
        try:
            yield run.trajectory(wanted[rows], errors="warn")
        except StoreError:  # every checkpoint of this chunk was damaged (each already warned about)
            continue


def _concat(parts: list[dict[str, torch.Tensor]], keep: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Per-checkpoint tensors of the chunks joined along the leading axis; ``keep`` keys are
    per-run (the same in every chunk) and taken from the first."""
    out = {}
    for key in parts[0]:
        out[key] = parts[0][key] if key in keep else torch.cat([p[key] for p in parts])
    return out


@dataclass
class _Job:
    """What one analysis reads: a run (its checkpoints ``wanted``, streamed in chunks) or an
    in-memory trajectory, the dataset and config, and where load times are added up."""

    run: Run | None
    traj: Trajectory | None
    wanted: list[int] | None
    data: Dataset
    config: Any
    chunk_size: int | None
    chunk_mb: float
    progress: bool
    timings: dict[str, float] = field(default_factory=lambda: {"load": 0.0})

    @property
    def where(self) -> str:
        return str(self.run.path) if self.run is not None else "trajectory"

    def chunks(self):
        """The trajectory in chunks (:func:`_iter_trajectory`), under one progress bar; the time
        spent loading is added to ``timings["load"]``."""
        from tqdm.auto import tqdm

        it = _iter_trajectory(self.run, self.traj, self.wanted, self.chunk_size, self.chunk_mb)
        total = len(self.traj) if self.traj is not None else len(self.wanted or [])
        with tqdm(total=total, disable=not self.progress, desc="analysing", unit="checkpoint", leave=False) as bar:
            while True:
                t = time.perf_counter()
                chunk = next(it, None)
                self.timings["load"] += time.perf_counter() - t
                if chunk is None:
                    return
                yield chunk
                bar.update(len(chunk))

    def last_checkpoint(self) -> Trajectory:
        """The last readable checkpoint (damaged ones are skipped with a warning)."""
        if self.traj is not None:
            return self.traj.subset([len(self.traj) - 1])
        assert self.run is not None and self.wanted is not None
        readable = (_try_trajectory(self.run, s) for s in reversed(self.wanted))
        last = next((tr for tr in readable if tr is not None), None)
        if last is None:
            raise StoreError(f"{self.run.path}: no readable checkpoints")
        return last

    def over_chunks(
        self,
        probe: Callable[[Trajectory], dict[str, torch.Tensor]],
        timing: str,
        since: float,
        keep: tuple[str, ...] = (),
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The checkpoints' steps and ``probe`` of every chunk, joined (:func:`_concat`, ``keep``
        keys per-run); the time since ``since`` less the load time is ``timings[timing]``."""
        parts, step_parts = [], []
        for chunk in self.chunks():
            parts.append(probe(chunk))
            step_parts.append(chunk.steps)
        if not parts:
            raise StoreError(f"{self.where}: no readable checkpoints")
        self.timings[timing] = time.perf_counter() - since - self.timings["load"]
        return torch.cat(step_parts), _concat(parts, keep)

    def events_metrics(self, fallback: Callable[[], dict[str, torch.Tensor]], steps: torch.Tensor) -> dict[str, Any]:
        return _metrics_for_events(self.run, fallback, steps)


def _open_job(
    run_or_path: str | Path | Run | Trajectory,
    data: Dataset | None,
    max_checkpoints: int | None,
    import_to: str | Path | None,
    chunk_size: int | None,
    chunk_mb: float,
    progress: bool,
) -> tuple[_Job, dict[str, Any] | None]:
    """The job for a trajectory or a run folder / .pth file, and (for a run) its
    :func:`analysis_source`, taken before anything is read."""
    if isinstance(run_or_path, Trajectory):
        traj = run_or_path
        picked = _pick_rows(len(traj), max_checkpoints)
        if picked is not None:
            traj = traj.subset(picked)
        data = data if data is not None else make_dataset(traj.config.task)
        return _Job(None, traj, None, data, traj.config, chunk_size, chunk_mb, progress), None
    run = resolve_run(run_or_path, import_to=import_to)
    source = analysis_source(run)  # before reading anything: checkpoints written meanwhile make it stale
    all_steps = run.steps
    if not all_steps:
        raise StoreError(f"{run.path}: run has no checkpoints yet; nothing to analyse")
    rows = _pick_rows(len(all_steps), max_checkpoints)
    wanted = list(all_steps) if rows is None else [all_steps[i] for i in rows]
    data = data if data is not None else run_dataset(run)
    return _Job(run, None, wanted, data, run.config, chunk_size, chunk_mb, progress), source


@with_threads  # adds threads=: intra-op threads while analysing (0/None = automatic, as in training)
def analyze(
    run_or_path: str | Path | Run | Trajectory,
    *,
    data: Dataset | None = None,
    max_checkpoints: int | None = None,
    save: bool = True,
    import_to: str | Path | None = None,
    progress: bool = False,
    n_eval: int = 512,
    prune_threshold: float = 0.1,
    sensitivity_tol: float = 0.01,
    min_gap: float = 4.0,
    min_explained: float = 0.5,
    circles: bool | None = None,
    circle_min_frac: float = 0.5,
    phase_rule: str = "accuracy",
    chunk_size: int | None = None,
    chunk_mb: float = DEFAULT_CHUNK_MB,
    llc: Any = None,
) -> Analysis:
    """Compute every probe that applies to a run (module docstring) and save it in the run folder.

    ``run_or_path``: a run folder, a :class:`Run`, a progress-measures-paper ``.pth`` file
    (imported first, see :func:`~mechgrok.importers.nanda.import_nanda_checkpoint`) or a
    :class:`Trajectory` (then ``data`` defaults to the task's dataset and nothing is saved).
    ``max_checkpoints`` analyses an evenly spaced subset (first and last always included).
    ``circles``: None = automatic (see module docstring), True / False to force.
    ``phase_rule``: ``"accuracy"`` or ``"loss"`` (PAIR's sweep rule), see
    :func:`~mechgrok.probes.events.detect_events`.
    ``chunk_size`` / ``chunk_mb``: checkpoints held in memory at once (default: as many as fit in
    ``chunk_mb``); the result does not depend on them.
    ``llc``: an :class:`~mechgrok.probes.llc.LLCConfig` (``True``: the defaults) adds the local
    learning coefficient of every analysed checkpoint (tensors ``llc/llc``, ``llc/llc_std``,
    ``llc/llc_chains``, ``llc/llc_trace``, ...; n*beta and flagged steps in ``records["llc"]``).
    ``threads``: intra-op CPU threads while analysing (:func:`~mechgrok._threads.threads_for`;
    default automatic from the run's config); the caller's count is restored afterwards.
    """
    if phase_rule not in PHASE_RULES:
        raise ValueError(f"phase_rule: must be one of {', '.join(PHASE_RULES)}, got {phase_rule!r}")
    t_start = time.perf_counter()
    job, source = _open_job(run_or_path, data, max_checkpoints, import_to, chunk_size, chunk_mb, progress)
    run, config = job.run, job.config
    save = save and run is not None
    options = {
        "max_checkpoints": max_checkpoints,
        "n_eval": n_eval,
        "prune_threshold": prune_threshold,
        "sensitivity_tol": sensitivity_tol,
        "min_gap": min_gap,
        "min_explained": min_explained,
        "circles": circles,
        "circle_min_frac": circle_min_frac,
        "phase_rule": phase_rule,
    }
    records: dict[str, Any] = {"format": FORMAT_VERSION, "options": options, "source": source}
    if config.task.kind == "custom":
        steps, tensors, events = _analyze_custom(job, records, phase_rule=phase_rule)
    elif config.task.kind == "group":
        steps, tensors, events = _analyze_group(
            job, records, min_gap=min_gap, min_explained=min_explained, phase_rule=phase_rule
        )
    elif config.task.kind == "parity":
        steps, tensors, events = _analyze_parity(
            job,
            records,
            n_eval=n_eval,
            prune_threshold=prune_threshold,
            sensitivity_tol=sensitivity_tol,
            phase_rule=phase_rule,
        )
    else:
        steps, tensors, events = _analyze_modular(
            job,
            records,
            min_gap=min_gap,
            min_explained=min_explained,
            circles=circles,
            circle_min_frac=circle_min_frac,
            phase_rule=phase_rule,
        )
    tensors.update(_stability(job))
    if llc:
        _add_llc(job, steps, tensors, records, llc)
    diverged = _diverged(run, tensors)
    if diverged:
        records["diverged"] = diverged  # e.g. "train_loss is not finite from step 2"
    records["run"] = {
        "name": config.name,
        "model": config.model.kind,
        "n_checkpoints": int(steps.shape[0]),
        "first_step": int(steps[0]),
        "last_step": int(steps[-1]),
        "path": str(run.path) if run is not None else None,
    }
    records["config"] = config.to_dict()
    records["events"] = events.to_dict()
    records["summary"] = _summary(config, steps, events, tensors, records)
    timings = job.timings
    timings["total"] = time.perf_counter() - t_start
    records["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
    result = Analysis(steps, tensors, records, run.path if run is not None else None, timings)
    if save and run is not None:
        result.save(run.path)
    return result


def _add_llc(
    job: _Job, steps: torch.Tensor, tensors: dict[str, torch.Tensor], records: dict[str, Any], config: Any
) -> None:
    """The LLC of the analysed checkpoints (:func:`mechgrok.probes.llc.llc`), chunk by chunk like
    the other probes (the chunks replay the same chain streams: the numbers do not depend on them)."""
    from .probes.llc import LLCConfig, LLCResult
    from .probes.llc import llc as llc_probe

    config = LLCConfig() if config is True else config
    if not isinstance(config, LLCConfig):
        raise TypeError(f"llc: must be an LLCConfig or True, got {type(config).__name__}")
    t = time.perf_counter()
    res = LLCResult.concat([llc_probe(chunk, config) for chunk in job.chunks()])
    if res.steps.tolist() != steps.tolist():  # a checkpoint became unreadable between the passes
        raise StoreError(f"{job.where}: checkpoints changed while the LLC was estimated; analyse again")
    tensors.update(res.tensors("llc/"))
    records["options"]["llc"] = config.to_dict()
    peak = int(res.llc.nan_to_num(nan=-float("inf")).argmax())
    records["llc"] = {
        "nbeta": res.nbeta,
        "n": res.n,
        "final": float(res.llc[-1]),
        "peak": float(res.llc[peak]),
        "peak_step": int(res.steps[peak]),
        "flagged_steps": res.steps[res.flagged].tolist(),
    }
    job.timings["llc"] = time.perf_counter() - t


def _needs_checkpoint_accuracy(run: Run | None) -> bool:
    """Whether the events need accuracies computed at the checkpoints (no logged train and test
    evidence: a trajectory, or a run whose metrics lack them)."""
    if run is None:
        return True
    m = run.metrics()
    return not (_has_evidence(m, "train") and _has_evidence(m, "test"))


def _analyze_parity(
    job: _Job, records: dict[str, Any], *, n_eval: int, prune_threshold: float, sensitivity_tol: float, phase_rule: str
) -> tuple[torch.Tensor, dict[str, torch.Tensor], GrokEvents]:
    """Bit dependence, the prune-now check and the pruning events of a parity run; fills ``records``."""
    records["task"] = "parity"
    data, need_acc = job.data, _needs_checkpoint_accuracy(job.run)
    t = time.perf_counter()
    relevant = None

    def probe(chunk: Trajectory) -> dict[str, torch.Tensor]:
        nonlocal relevant
        bits = bit_dependence(chunk, data, n_eval=n_eval)
        relevant = bits["relevant"] if relevant is None else relevant
        part = {k: v for k, v in bits.items() if k != "relevant"}
        part["prune_now_acc"] = prune_now_accuracy(chunk, data, relevant=relevant)
        if need_acc:
            part["_train_acc"] = _checkpoint_acc(chunk, data, "train")
            part["_test_acc"] = _checkpoint_acc(chunk, data, "test")
        return part

    steps, cat = job.over_chunks(probe, "bits", t)
    acc = {k[1:]: cat.pop(k) for k in ("_train_acc", "_test_acc") if k in cat}
    bits = {**{k: v for k, v in cat.items() if k != "prune_now_acc"}, "relevant": relevant}
    tensors = {f"bits/{key}": value for key, value in bits.items()}
    tensors["bits/prune_now_acc"] = prune_acc = cat["prune_now_acc"]
    metrics = job.events_metrics(lambda: acc, steps)
    events = detect_events(metrics, rule=phase_rule, loss_scale=loss_scale_of(job.config))
    relevant_bits = [int(i) for i in torch.nonzero(relevant, as_tuple=False)[:, 0]]
    if bool(relevant.all()):
        # every bit is relevant: nothing to prune, so the irrelevant-bit measures are undefined
        extra: dict[str, Any] = {
            "pruned_step": None,
            "sensitivity_zero_step": None,
            "prune_now_step": None,
            "prune_threshold": prune_threshold,
            "sensitivity_tol": sensitivity_tol,
            "irrelevant_bits": "none: every bit is relevant, irrelevant-bit measures are undefined",
        }
    else:
        for key, value in irrelevant_series(bits).items():
            tensors[f"bits/{key}"] = value
        extra = parity_events(
            bits,
            steps,
            generalised_step=events.generalised_step,
            prune_threshold=prune_threshold,
            sensitivity_tol=sensitivity_tol,
            prune_now_acc=prune_acc,
            memorised_step=events.memorised_step,
        ).to_dict()
    extra["relevant_bits"] = relevant_bits
    events.extra.update(extra)
    records["relevant_bits"] = extra["relevant_bits"]
    records["key_frequencies"] = []
    return steps, tensors, events


def _analyze_modular(
    job: _Job,
    records: dict[str, Any],
    *,
    min_gap: float,
    min_explained: float,
    circles: bool | None,
    circle_min_frac: float,
    phase_rule: str,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], GrokEvents]:
    """Fourier probes, progress measures, neuron circles (when they apply) and the events of a
    modular run; fills ``records``."""
    records["task"] = "modular"
    config = job.config
    kind = config.model.kind
    want_circles = kind == "cossin_mlp" if circles is None else bool(circles)
    maybe_circles = circles is None and kind in ("mlp", "transformer")
    if (want_circles or maybe_circles) and kind not in ("mlp", "cossin_mlp", "transformer"):
        raise ValueError(f"circles: model {kind!r} has no MLP layer")
    parts_wanted = ["fourier", "logits", "progress"] + (["circles"] if want_circles or maybe_circles else [])
    t = time.perf_counter()
    # the key frequencies are the last checkpoint's: found first so every chunk uses them
    lastres = modular_sweep(job.last_checkpoint(), None, ("logits",), min_gap=min_gap, min_explained=min_explained)
    key_freqs = [int(k) + 1 for k in torch.nonzero(lastres["key_freq_mask"][0], as_tuple=False)[:, 0]]
    steps, res = job.over_chunks(
        lambda chunk: modular_sweep(
            chunk, job.data, parts_wanted, key_freqs=key_freqs, min_gap=min_gap, min_explained=min_explained
        ),
        "modular_sweep",
        t,
        keep=("key_frequencies",),
    )
    key_freqs = [int(k) for k in res.pop("key_frequencies")]
    tensors = {f"fourier/{key}": res[key] for key in FOURIER_KEYS if key in res}
    tensors.update({f"progress/{key}": res[key] for key in PROGRESS_KEYS})
    if maybe_circles:
        frac = res["neuron_frac_explained"][-1]
        mean_frac = float(frac.mean()) if frac.numel() else float("nan")
        # NaN weights (a diverged run) give a NaN fraction: no circles, said so in the records
        want_circles = bool(frac.numel()) and math.isfinite(mean_frac) and mean_frac >= circle_min_frac
        records["circles_rule"] = {"mean_frac_explained_last": mean_frac, "min": circle_min_frac}
    if want_circles:
        circ = circles_from_coefficients(res["circle_freq"], res["circle_cos"], res["circle_sin"])
        tensors.update({f"circles/{key}": value for key, value in circ.items()})
    records["key_frequencies"] = key_freqs
    curves = ("train_acc", "test_acc", "train_loss", "test_loss")
    metrics = job.events_metrics(lambda: {k: res[k] for k in curves}, steps)
    events = detect_events(metrics, rule=phase_rule, loss_scale=loss_scale_of(config))
    events.extra.update(modular_events(steps, res, res["key_freq_mask"], key_freqs, p=config.task.p).to_dict())
    return steps, tensors, events


_IRREP_KEYS = (
    "embed_irrep_norms",
    "neuron_dominant_irrep",
    "neuron_frac_explained",
    "logit_irrep_norms",
    "logit_irrep_frac",
    "sparsity",
    "sparsity_logits",
    "key_irrep_mask",
)


def _analyze_group(
    job: _Job, records: dict[str, Any], *, min_gap: float, min_explained: float, phase_rule: str
) -> tuple[torch.Tensor, dict[str, torch.Tensor], GrokEvents]:
    """The irrep probes (``irreps/<key>`` of :func:`~mechgrok.probes.irreps.irrep_sweep`), the
    progress measures with respect to the key irreps (``progress/<key>``) and the events of a
    group run; fills ``records`` (``key_irreps``: names and dimensions)."""
    from .probes.irreps import irrep_sweep, task_group

    records["task"] = "group"
    config = job.config
    group = task_group(config)
    t = time.perf_counter()
    last = irrep_sweep(job.last_checkpoint(), None, ("logits",), min_gap=min_gap, min_explained=min_explained)
    key = [int(k) + 1 for k in torch.nonzero(last["key_irrep_mask"][0], as_tuple=False)[:, 0]]
    steps, res = job.over_chunks(
        lambda chunk: irrep_sweep(chunk, job.data, key_irreps=key, min_gap=min_gap, min_explained=min_explained),
        "irrep_sweep",
        t,
        keep=("key_irreps",),
    )
    res.pop("key_irreps")
    tensors = {f"irreps/{k}": res[k] for k in _IRREP_KEYS if k in res}
    tensors.update({f"progress/{k}": res[k] for k in PROGRESS_KEYS})
    irreps = group.irreps()[1:]
    records["group"] = {
        "spec": group.spec,
        "name": group.name,
        "order": group.order,
        "irreps": [{"name": r.name, "dim": r.dim} for r in irreps],
    }
    records["key_irreps"] = [{"name": irreps[k - 1].name, "dim": irreps[k - 1].dim} for k in key]
    records["key_frequencies"] = []
    curves = ("train_acc", "test_acc", "train_loss", "test_loss")
    metrics = job.events_metrics(lambda: {k: res[k] for k in curves}, steps)
    events = detect_events(metrics, rule=phase_rule, loss_scale=loss_scale_of(config))
    extra = modular_events(steps, res, res["key_irrep_mask"], key, p=config.task.p).to_dict()
    # the modular events' names, read for irreps: key_freq_step is when every final key irrep is in the cut
    extra["key_irrep_step"] = extra.pop("key_freq_step", None)
    extra["key_irreps"] = extra.pop("key_frequencies", key)
    events.extra.update(extra)
    return steps, tensors, events


@torch.no_grad()
def _analyze_custom(
    job: _Job, records: dict[str, Any], *, phase_rule: str
) -> tuple[torch.Tensor, dict[str, torch.Tensor], GrokEvents]:
    """A user task (``task.kind="custom"``): nothing is known of its structure, so only what reads
    the model's losses on its own split - per-checkpoint losses / accuracies (``progress/<key>``),
    the weight norm, the phases and events; fills ``records``."""
    from .metrics import loss_and_accuracy
    from .probes._modular import sum_sq_weights

    records["task"] = "custom"
    data = job.data
    t = time.perf_counter()

    def probe(chunk: Trajectory) -> dict[str, torch.Tensor]:
        part: dict[str, list[float]] = {}
        for i in range(len(chunk)):
            model = chunk.model(i)
            for split, x, y in (("train", data.train_x, data.train_y), ("test", data.test_x, data.test_y)):
                loss, acc = loss_and_accuracy(model(x), y) if x.shape[0] else (torch.tensor(float("nan")),) * 2
                part.setdefault(f"{split}_loss", []).append(float(loss))
                part.setdefault(f"{split}_acc", []).append(float(acc))
        res = {k: torch.tensor(v, dtype=torch.float64) for k, v in part.items()}
        res["sum_sq_weights"] = sum_sq_weights(chunk)
        return res

    steps, res = job.over_chunks(probe, "custom", t)
    tensors = {f"progress/{k}": v for k, v in res.items()}
    records["key_frequencies"] = []
    records["factory"] = job.config.task.factory
    curves = ("train_acc", "test_acc", "train_loss", "test_loss")
    metrics = job.events_metrics(lambda: {k: res[k] for k in curves}, steps)
    events = detect_events(metrics, rule=phase_rule, loss_scale=loss_scale_of(job.config))
    return steps, tensors, events


def key_irreps_line(records: dict[str, Any]) -> str:
    """``key irreps: NAME (dim D), ...`` (or ``key irreps: none``) from a group analysis's records."""
    keys = records.get("key_irreps") or []
    return "key irreps: " + (", ".join(f"{k['name']} (dim {k['dim']})" for k in keys) if keys else "none")


def _try_trajectory(run: Run, step: int) -> Trajectory | None:
    try:
        return run.trajectory([step], errors="warn")
    except StoreError:
        return None


def _diverged(run: Run | None, tensors: dict[str, torch.Tensor]) -> str | None:
    """A one-line note when the run diverged (non-finite logged loss or weights), else None."""
    if run is not None:
        m = run.metrics()
        for key in ("train_loss", "weight_norm"):
            col = m.get(key)
            if col is not None and col.size and not np.isfinite(col).all():
                bad = np.nonzero(~np.isfinite(col))[0][0]
                return f"{key} is not finite from step {int(m['step'][bad]):,}"
    for key in ("progress/sum_sq_weights", "bits/weight_norm"):
        if key in tensors and not torch.isfinite(tensors[key]).all():
            return "its checkpoints hold non-finite weights"
    return None


@torch.no_grad()
def _checkpoint_acc(traj: Trajectory, data: Dataset, split: str) -> torch.Tensor:
    from .probes._batch import batched_loss_acc, parity_logits, parity_pre, row_chunks

    x, y = (data.train_x, data.train_y) if split == "train" else (data.test_x, data.test_y)
    out = torch.empty(len(traj), dtype=torch.float64)
    m = traj.config.model.d_mlp
    for rows in row_chunks(len(traj), x.shape[0] * m):
        params = {k: v[rows] for k, v in traj.params.items()}
        out[rows] = batched_loss_acc(parity_logits(params, parity_pre(params, x)), y)[1]
    return out


def _stability(job: _Job) -> dict[str, torch.Tensor]:
    """``stability/*``: softmax collapse, gradient-weight alignment and logit norm at every
    checkpoint (:func:`~mechgrok.probes.stability.stability_over_training`), in the run's loss."""
    t = time.perf_counter()
    parts = [stability_over_training(chunk, job.data) for chunk in job.chunks()]
    out = {
        f"stability/{k}": torch.cat([p[k] for p in parts])
        for k in ("collapse_fraction", "zero_grad_fraction", "alignment", "logit_norm")
    }
    for name in parts[0]["alignment_per_tensor"]:
        out[f"stability/alignment/{name}"] = torch.cat([p["alignment_per_tensor"][name] for p in parts])
    job.timings["stability"] = time.perf_counter() - t
    return out


def _stability_line(config, tensors: dict[str, torch.Tensor]) -> str:
    oc = config.optim
    loss = "StableMax" if oc.loss == "stablemax" else "softmax"
    return (
        f"Softmax collapse at the last checkpoint: {float(tensors['stability/collapse_fraction'][-1]):.1%} of training "
        f"samples have exactly zero loss in {oc.loss_dtype} ({loss}); gradient-weight alignment "
        f"{float(tensors['stability/alignment'][-1]):.2f}, "
        f"mean logit norm {float(tensors['stability/logit_norm'][-1]):.3g}."
    )


def _summary(
    config, steps: torch.Tensor, events: GrokEvents, tensors: dict[str, torch.Tensor], records: dict[str, Any]
) -> str:
    name = config.name if len(config.name) <= 80 else config.name[:77] + "..."
    head = (
        f"{name} ({config.model.kind}, "
        + (
            f"{config.task.n_bits}-bit parity"
            if config.task.kind == "parity"
            else f"group {records['group']['name']}"
            if config.task.kind == "group"
            else f"custom task {config.task.factory}"
            if config.task.kind == "custom"
            else f"{config.task.op} mod {config.task.p}"
        )
        + f"; {len(steps)} checkpoints to step {int(steps[-1]):,}): {events.describe()}."
    )
    x = events.extra
    parts = [head]
    if records.get("diverged"):
        parts.append(
            f"The run diverged ({records['diverged']}): probes of its non-finite checkpoints are undefined (NaN)."
        )
    if config.task.kind == "custom":
        w = tensors["progress/sum_sq_weights"]
        parts.append(
            f"Custom task: no task structure is known, so only the losses, accuracies and weight norm are "
            f"probed (sum of squared weights {float(w[0]):.3g} -> {float(w[-1]):.3g})."
        )
    elif config.task.kind == "group":
        x = events.extra
        parts.append(
            "K"
            + key_irreps_line(records)[1:]
            + (
                f"; all in the logit spectrum's cut from step {x['key_irrep_step']:,}."
                if x.get("key_irrep_step") is not None
                else "."
            )
        )
        parts.append(
            f"Restricted loss drops at step {format_step(x.get('restricted_drop_step'))}, excluded loss rises at "
            f"step {format_step(x.get('excluded_rise_step'))}."
        )
        sp = tensors["irreps/sparsity"]
        parts.append(f"Irrep sparsity (Gini of the embedding spectrum) {float(sp[0]):.2f} -> {float(sp[-1]):.2f}.")
    elif config.task.kind == "parity" and "bits/irrelevant_weight_ratio" not in tensors:
        parts.append(
            f"Relevant bits {x['relevant_bits']}: every bit is relevant, so there is nothing to prune and the "
            "irrelevant-bit measures (pruning, flip sensitivity, prune-now check) are undefined."
        )
    elif config.task.kind == "parity":
        ratio = tensors["bits/irrelevant_weight_ratio"]
        parts.append(f"Relevant bits {x['relevant_bits']}.")
        sens = x["sensitivity_zero_step"]
        if sens is None:
            parts.append(
                f"Irrelevant-bit flip sensitivity never stays <= {x['sensitivity_tol']:.0%}"
                f" (last {float(tensors['bits/irrelevant_sensitivity'][-1]):.1%})."
            )
        else:
            lag = x.get("sensitivity_lag")
            rel = "" if lag is None else f" ({abs(lag):,} steps {'before' if lag >= 0 else 'after'} generalising)"
            parts.append(f"Irrelevant-bit flip sensitivity <= {x['sensitivity_tol']:.0%} from step {sens:,}{rel}.")
        if x["pruned_step"] is None:
            parts.append(
                f"No pruning event: the largest irrelevant-bit weight is still {float(ratio[-1]):.0%} of the "
                f"largest relevant one at the last checkpoint (threshold {x['prune_threshold']:.0%})."
            )
        else:
            lag = x.get("prune_lag")
            rel = "" if lag is None else f" ({abs(lag):,} steps {'before' if lag >= 0 else 'after'} generalising)"
            parts.append(
                f"Irrelevant-bit weights pruned below {x['prune_threshold']:.0%} of the relevant ones from "
                f"step {x['pruned_step']:,}{rel}."
            )
        pn = x.get("prune_now_step")
        parts.append(
            "Zeroing the irrelevant-bit weights "
            + (
                f"already gives >= 99% test accuracy from step {pn:,} (causal check)."
                if pn is not None
                else "never gives >= 99% test accuracy after memorisation (causal check)."
            )
        )
    else:
        keys = records.get("key_frequencies", [])
        if keys:
            kf = x.get("key_freq_step")
            parts.append(
                f"Key frequencies {keys}"
                + (f", all in the logit spectrum's cut from step {kf:,}." if kf is not None else ".")
            )
        else:
            parts.append("No key frequencies at the last checkpoint (no sparse logit spectrum).")
        parts.append(
            f"Restricted loss drops at step {format_step(x.get('restricted_drop_step'))}, excluded loss rises at "
            f"step {format_step(x.get('excluded_rise_step'))}."
        )
        sp = tensors["fourier/sparsity"]
        parts.append(f"Fourier sparsity (Gini of the embedding spectrum) {float(sp[0]):.2f} -> {float(sp[-1]):.2f}.")
        if "circles/phase_spread" in tensors:
            ps, cv = float(tensors["circles/phase_spread"][-1]), float(tensors["circles/norm_cv"][-1])
            parts.append(
                f"Neuron circles at the end: phase spread {ps:.2f} (1 = even), norm CV {cv:.2f}."
                if not math.isnan(ps)
                else f"Neuron circles at the end: norm CV {cv:.2f}."
            )
    if "stability/collapse_fraction" in tensors:
        parts.append(_stability_line(config, tensors))
    return " ".join(parts)

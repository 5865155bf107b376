"""Sweep folders: the spec, one ordinary run folder per member, resume state and the results table.

Layout (file names live in :data:`mechgrok.layout.SWEEP_FILES`)::

    SWEEP/
      sweep.json          SweepSpec + EngineConfig + library versions (written once)
      members/m00000/     member 0: a normal run folder (config, metrics, checkpoints, summary)
      state/              batch resume state while a sweep runs (removed as batches finish)
      results.csv         one row per finished member: hyperparameters, events, phase
      llc.json            the final local learning coefficient per finished member (optional)
      .lock               held while a process drives the sweep

A member is finished when its run folder has ``summary.json``; a killed sweep continues from each
unfinished member's latest batch state (or from its start), so re-running the same command (or
``mechgrok sweep --resume SWEEP``) finishes it. Every probe and report works on a member folder.
"""

from __future__ import annotations

import csv
import io
import json
import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ConfigError, RunConfig
from ..layout import NAME_PATTERNS, SWEEP_FILES
from ..store import (
    FILES,
    Run,
    RunLock,
    StoreError,
    atomic_write_bytes,
    atomic_write_json,
    library_versions,
    remove_temporary,
)
from ._pool import Member, Pool
from ._saved import SavedStates
from .engine_config import EngineConfig, group_key
from .ray_backend import run_on_ray
from .spec import SweepSpec, column_name

__all__ = ["SWEEP_FILES", "Sweep", "SweepMember", "run_sweep", "RESULT_COLUMNS"]


# hyperparameters every results row carries (besides the swept ones)
_ALWAYS = ("optim.lr", "optim.weight_decay", "model.d_mlp", "train.steps")
RESULT_COLUMNS = (
    "phase",
    "phase_rule",
    "memorised_step",
    "generalised_step",
    "lag",
    "ratio",
    "final_train_acc",
    "final_test_acc",
    "final_train_loss",
    "final_test_loss",
    "final_weight_norm",
    "total_steps",
    "stopped_early",
    "seconds",
)
# machine-specific engine settings that may change when a sweep is resumed
_MACHINE_FIELDS = ("device", "max_batch", "chunk_mb", "writers")


@dataclass(frozen=True)
class SweepMember:
    """One member: its index, swept values, full config and run folder."""

    index: int
    values: dict[str, Any]
    config: RunConfig
    path: Path

    @property
    def finished(self) -> bool:
        return (self.path / FILES["summary"]).exists()


class Sweep:
    """A sweep folder on disk.

    >>> sweep = Sweep.open("checkpoints/parity-sweep")
    >>> df = sweep.results()              # pandas DataFrame, one row per member
    >>> run = sweep.run(12)               # member 12 as a Run: probes and reports work on it
    """

    def __init__(self, path: str | Path, spec: SweepSpec, engine: EngineConfig):
        self.path = Path(path)
        self.spec = spec
        self.engine = engine

    @classmethod
    def create(cls, path: str | Path, spec: SweepSpec, engine: EngineConfig, *, lock: RunLock | None = None) -> Sweep:
        """Create the sweep folder and write ``sweep.json``.

        The check for an existing sweep and the write happen under the folder's lock (``lock``,
        already held by the caller, or taken here for the duration): two processes started at once
        on a new folder would otherwise both pass the check and one spec would overwrite the other.
        """
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise StoreError(f"{path}: exists and is not a folder")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"{path}: cannot create the sweep folder ({e.strerror or e})") from None
        own = RunLock(path).acquire() if lock is None else None
        try:
            if (path / SWEEP_FILES["spec"]).exists():
                raise StoreError(f"{path}: already holds a sweep; use --resume to continue it or choose another --out")
            if not _holds_nothing(path):
                raise StoreError(f"{path}: folder is not empty and holds no sweep; choose another --out")
            remove_temporary(path)  # a killed create's sweep.json
            record = {
                "spec": spec.to_dict(),
                "engine": engine.to_dict(),
                "size": spec.size,
                "versions": library_versions(),
                "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            }
            atomic_write_json(path / SWEEP_FILES["spec"], record)
            (path / SWEEP_FILES["members"]).mkdir(exist_ok=True)
        finally:
            if own is not None:
                own.release()
        return cls(path, spec, engine)

    @classmethod
    def open(cls, path: str | Path) -> Sweep:
        path = Path(path)
        spec_path = path / SWEEP_FILES["spec"]
        if not path.is_dir():
            raise StoreError(f"{path}: no such sweep folder")
        if not spec_path.exists():
            raise StoreError(f"{path}: not a mechgrok sweep folder (no {SWEEP_FILES['spec']})")
        try:
            record = json.loads(spec_path.read_text())
            spec = SweepSpec.from_dict(record["spec"])
            engine = EngineConfig.from_dict(record.get("engine", {}))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise StoreError(f"{spec_path}: unreadable sweep spec ({e})") from None
        except ConfigError as e:
            raise StoreError(f"{spec_path}: {e}") from None
        return cls(path, spec, engine)

    # -- members -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.spec.size

    def member_path(self, index: int) -> Path:
        return self.path / SWEEP_FILES["members"] / NAME_PATTERNS["member"].format(index=index)

    def member(self, index: int) -> SweepMember:
        return SweepMember(index, self.spec.point(index), self.spec.config(index), self.member_path(index))

    def members(self) -> list[SweepMember]:
        return [self.member(i) for i in range(self.spec.size)]

    def run(self, index: int) -> Run:
        """Member ``index``'s run folder (raises if it has not started)."""
        return Run.open(self.member_path(index))

    def finished(self) -> list[int]:
        return [i for i in range(self.spec.size) if (self.member_path(i) / FILES["summary"]).exists()]

    # -- results -------------------------------------------------------------------------------
    def result_rows(self, phase_rule: str = "accuracy") -> list[dict[str, Any]]:
        """One dict per finished member: index, folder, hyperparameters, events, phase.

        ``phase_rule``: ``"accuracy"`` (the events in each member's summary) or ``"loss"`` (PAIR's
        loss rule, read from each member's metrics); see :func:`mechgrok.probes.detect_events`.
        The ``phase_rule`` column says which one the row's phase and event steps come from.
        """
        from ..probes.events import PHASE_RULES, detect_events, loss_scale_of

        if phase_rule not in PHASE_RULES:
            raise ConfigError(f"phase_rule: must be one of {', '.join(PHASE_RULES)}, got {phase_rule!r}")
        keys = [k for k, _ in self.spec.grid]
        if self.spec.seeds > 1 or "train.seed" not in keys:
            keys.append("train.seed")
        keys += [k for k in _ALWAYS if k not in keys]
        llc_path = self.path / SWEEP_FILES["llc"]
        try:
            llc_rows = json.loads(llc_path.read_text())["members"] if llc_path.exists() else None
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise StoreError(f"{llc_path}: unreadable LLC record ({e})") from None
        rows = []
        for i in range(self.spec.size):
            path = self.member_path(i)
            summary_path = path / FILES["summary"]
            if not summary_path.exists():
                continue
            try:
                summary = json.loads(summary_path.read_text())
            except json.JSONDecodeError as e:
                raise StoreError(f"{summary_path}: unreadable summary ({e})") from None
            cfg = self.spec.config(i).to_dict()
            row: dict[str, Any] = {"member": i, "run_dir": str(path.relative_to(self.path))}
            for key in keys:
                section, name = key.split(".", 1)
                value = cfg[section][name]
                row[column_name(key)] = json.dumps(value) if isinstance(value, list) else value
            if self.spec.base.task.kind != "parity":  # modular, group and custom tasks split a table
                row.setdefault("train_fraction", cfg["task"]["train_fraction"])
            else:
                row.setdefault("n_train", cfg["task"]["n_train"])
            events = dict(summary.get("events") or {})
            if events.get("rule", "accuracy") != phase_rule:
                try:
                    cfg_i = self.spec.config(i)
                    events.update(
                        detect_events(
                            Run(path, cfg_i).metrics(), rule=phase_rule, loss_scale=loss_scale_of(cfg_i)
                        ).to_dict()
                    )
                except ValueError:  # no loss columns: the rule cannot say
                    events.update(phase="unknown", memorised_step=None, generalised_step=None, lag=None, ratio=None)
            events["phase_rule"] = phase_rule
            for col in RESULT_COLUMNS:
                if col in events:
                    row[col] = events[col]
                elif col in summary:
                    row[col] = summary[col]
                else:
                    row[col] = None
            if llc_rows is not None:  # members finished after record_llc ran get empty cells
                rec = llc_rows.get(str(i)) or {}
                for col, key in (("final_llc", "llc"), ("final_llc_std", "llc_std"), ("final_llc_flagged", "flagged")):
                    row[col] = rec.get(key)
            rows.append(row)
        return rows

    def record_llc(self, config: Any = True) -> Path:
        """The local learning coefficient of every finished member's last checkpoint
        (:func:`mechgrok.probes.llc.llc` with ``config``, an ``LLCConfig`` or True for the
        defaults), written to ``SWEEP_FILES["llc"]``; :meth:`result_rows` adds it as the columns
        ``final_llc``, ``final_llc_std`` and ``final_llc_flagged``. Members with the same task and
        model are stacked into one vectorised pass (optimiser settings do not enter the loss)."""
        import torch

        from ..probes.llc import LLCConfig
        from ..probes.llc import llc as llc_probe
        from ..store import Trajectory

        config = LLCConfig() if config is True else config
        if not isinstance(config, LLCConfig):
            raise ConfigError(f"llc: must be an LLCConfig or True, got {type(config).__name__}")
        groups: dict[str, list[int]] = {}
        for i in self.finished():
            cfg = self.spec.config(i).to_dict()
            groups.setdefault(json.dumps([cfg["task"], cfg["model"]], sort_keys=True), []).append(i)
        members: dict[str, Any] = {}
        for ids in groups.values():
            lasts = []
            for i in ids:
                run = self.run(i)
                lasts.append(run.trajectory([run.steps[-1]], errors="raise"))
            stacked = Trajectory(
                torch.cat([t.steps for t in lasts]),
                {k: torch.cat([t.params[k] for t in lasts]) for k in lasts[0].params},
                self.spec.config(ids[0]),
            )
            res = llc_probe(stacked, config)
            for j, i in enumerate(ids):
                members[str(i)] = {
                    "step": int(res.steps[j]),
                    "llc": float(res.llc[j]),
                    "llc_std": float(res.llc_std[j]),
                    "flagged": bool(res.flagged[j]),
                    "nbeta": res.nbeta,
                }
        path = self.path / SWEEP_FILES["llc"]
        atomic_write_json(path, {"config": config.to_dict(), "members": members})
        return path

    def write_results(self, phase_rule: str = "accuracy") -> Path:
        """Write ``results.csv`` (atomically) from the finished members' summaries, phases by
        ``phase_rule`` (see :meth:`result_rows`)."""
        rows = self.result_rows(phase_rule)
        buf = io.StringIO()
        if rows:
            writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            for row in rows:
                writer.writerow(
                    {k: ("" if v is None or (isinstance(v, float) and math.isnan(v)) else v) for k, v in row.items()}
                )
        path = self.path / SWEEP_FILES["results"]
        atomic_write_bytes(path, buf.getvalue().encode())
        return path

    def results(self):
        """The results table as a pandas DataFrame (written first if missing)."""
        try:
            import pandas as pd
        except ImportError:
            raise StoreError(
                "Sweep.results: needs pandas (pip install pandas); the table is in " + SWEEP_FILES["results"]
            ) from None
        path = self.path / SWEEP_FILES["results"]
        if not path.exists():
            self.write_results()
        if path.stat().st_size == 0:
            return pd.DataFrame()
        return pd.read_csv(path)

    def phase_counts(self, phase_rule: str = "accuracy") -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self.result_rows(phase_rule):
            counts[row["phase"]] = counts.get(row["phase"], 0) + 1
        return counts

    def lock(self) -> RunLock:
        """Exclusive lock on the sweep folder (``SWEEP/.lock``) for the process driving it."""
        return RunLock(self.path)

    def __repr__(self) -> str:
        return f"Sweep({str(self.path)!r}, {self.spec.describe()})"


def _clean_state_dir(state_dir: Path, finished: set[int]) -> None:
    """Remove what a kill leaves in ``state/``: temporary files, committed states whose members
    have all finished (the kill came before the pool removed them), and batch tensors that no
    committed state names (written, but the kill came before their JSON commit point)."""
    remove_temporary(state_dir)
    named = set()
    for meta_path in state_dir.glob("*.json"):
        try:
            meta = json.loads(meta_path.read_text())
            tensors, members = meta["tensors"], set(meta["members"])
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
            return  # reported by SavedStates, and nothing is deleted on a guess
        if members <= finished:
            meta_path.unlink(missing_ok=True)  # the commit point first, then what it named
        else:
            named.add(tensors)
    for t in state_dir.glob("*.safetensors"):
        if t.name not in named:
            t.unlink(missing_ok=True)


def _holds_nothing(path: Path) -> bool:
    """Whether a folder holds nothing but what a create killed before ``sweep.json`` leaves (the
    lock and temporary files): such a folder may still become a sweep."""
    return all(
        p.name == SWEEP_FILES["lock"] or (p.name.startswith(".") and p.name.endswith(".tmp")) for p in path.iterdir()
    )


# ----------------------------------------------------------------------------------------------
# driving a sweep


def pending_groups(sweep: Sweep) -> list[list[int]]:
    """Unfinished member indices, grouped by what a batch must share (in member order)."""
    groups: dict[str, list[int]] = {}
    for i in range(sweep.spec.size):
        if not (sweep.member_path(i) / FILES["summary"]).exists():
            groups.setdefault(group_key(sweep.spec.config(i)), []).append(i)
    return list(groups.values())


def train_members(
    sweep: Sweep,
    indices: list[int],
    engine: EngineConfig,
    *,
    on_steps: Callable[[int], None] | None = None,
    on_done: Callable[[Any, dict[str, Any]], None] | None = None,
) -> None:
    """Train members ``indices`` (one group) in one pool, writing their run folders and batch
    resume state; continues members from saved state. Used by every backend."""
    state_dir = sweep.path / SWEEP_FILES["state"]
    state_dir.mkdir(exist_ok=True)
    saved = SavedStates(state_dir)
    # members with saved state first: they were running when the sweep stopped
    order = sorted(indices, key=lambda i: (i not in saved.where, i))
    members = [Member(sweep.spec.config(i), sweep.member_path(i), None, key=i) for i in order]
    claimed = {p for i in indices if i in saved.where for p in [saved.where[i][0]]}
    name = f"pool-{uuid.uuid4().hex[:10]}"
    pool = Pool(
        members,
        engine,
        state_dir=state_dir,
        state_name=name,
        saved=saved,
        on_steps=on_steps,
        on_done=on_done,
        keep_results=False,
    )
    pool.run()
    # this pool's state and the states it took over are obsolete once its members are finished
    for meta_path in {state_dir / f"{name}.json", *claimed}:
        _remove_state(state_dir, meta_path, set(indices))


def train_chunk_task(path: str, indices: list[int], engine: dict[str, Any], threads: int) -> int:
    """Body of one Ray task (:func:`.ray_backend.run_on_ray`): train ``indices`` of the sweep at ``path``."""
    import torch

    torch.set_num_threads(max(1, threads))
    sweep = Sweep.open(path)
    # the task's CPUs are its chunk workers (the sweep's own setting may say 'all cores')
    train_members(sweep, indices, EngineConfig.from_dict({**engine, "workers": max(1, threads)}))
    return len(indices)


def _remove_state(state_dir: Path, meta_path: Path, finished: set[int]) -> None:
    if not meta_path.exists():
        for t in state_dir.glob(meta_path.stem + ".*.safetensors"):
            t.unlink(missing_ok=True)
        return
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError:
        return
    if set(meta.get("members", [])) <= finished:
        meta_path.unlink(missing_ok=True)  # first the commit point, then the tensors it named
        for t in state_dir.glob(meta_path.stem + ".*.safetensors"):
            t.unlink(missing_ok=True)


def run_sweep(
    spec: SweepSpec | None,
    out: str | Path,
    *,
    engine: EngineConfig | None = None,
    backend: str = "local",
    progress: bool = True,
    ray_address: str | None = None,
    ray_tasks: int | None = None,
    phase_rule: str = "accuracy",
    llc: Any = None,
) -> Sweep:
    """Train every member of ``spec`` into the sweep folder ``out`` and write its results table.

    If ``out`` already holds a sweep it is continued (``spec`` may be ``None``, or must equal the
    stored one): finished members are kept, unfinished ones continue from their latest batch
    resume state. The stored engine settings are kept except the machine-specific ones
    (device, max_batch, chunk_mb, writers), which ``engine`` may change.

    ``backend``: ``"local"`` (this process) or ``"ray"`` (Ray tasks, each training a batch of
    members with the same engine into the same folder; needs ``mechgrok[ray]`` and a filesystem
    shared by the workers).

    ``phase_rule``: how ``results.csv`` classifies members, ``"accuracy"`` or ``"loss"`` (PAIR's
    rule); see :meth:`Sweep.result_rows`.

    ``llc``: an ``LLCConfig`` (or True for the defaults) records every finished member's final
    local learning coefficient (:meth:`Sweep.record_llc`) as columns of the results table.
    """
    from ..probes.events import PHASE_RULES

    if phase_rule not in PHASE_RULES:
        raise ConfigError(f"phase_rule: must be one of {', '.join(PHASE_RULES)}, got {phase_rule!r}")
    if backend not in ("local", "ray"):
        raise ConfigError(f"backend: must be 'local' or 'ray', got {backend!r}")
    out = Path(out)
    if spec is None and not (out / SWEEP_FILES["spec"]).exists():
        raise StoreError(f"{out}: no sweep to resume (no {SWEEP_FILES['spec']})")
    if out.exists() and not out.is_dir():
        raise StoreError(f"{out}: exists and is not a folder")
    if spec is not None and not (out / SWEEP_FILES["spec"]).exists() and out.is_dir() and not _holds_nothing(out):
        raise StoreError(f"{out}: folder is not empty and holds no sweep; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreError(f"{out}: cannot create the sweep folder ({e.strerror or e})") from None
    # lock first, then decide between continuing and creating: see Sweep.create
    with RunLock(out) as lock:
        if (out / SWEEP_FILES["spec"]).exists():
            sweep = Sweep.open(out)
            if spec is not None and spec.to_dict() != sweep.spec.to_dict():
                raise StoreError(
                    f"{out}: holds a different sweep; continue it with --resume {out} or choose another --out"
                )
            if engine is not None:
                stored = sweep.engine.to_dict()
                stored.update({k: getattr(engine, k) for k in _MACHINE_FIELDS})
                sweep.engine = EngineConfig.from_dict(stored)
        else:
            assert spec is not None
            sweep = Sweep.create(out, spec, engine or EngineConfig(), lock=lock)
        remove_temporary(out)  # left by a killed writer; nobody else writes here while we hold the lock
        if (out / SWEEP_FILES["state"]).is_dir():
            _clean_state_dir(out / SWEEP_FILES["state"], set(sweep.finished()))
        groups = pending_groups(sweep)
        if groups:
            if backend == "ray":
                run_on_ray(sweep, groups, train_chunk_task, address=ray_address, tasks=ray_tasks, progress=progress)
            else:
                _run_local(sweep, groups, progress)
        if llc:
            sweep.record_llc(llc)
        sweep.write_results(phase_rule)
    return sweep


def _run_local(sweep: Sweep, groups: list[list[int]], progress: bool) -> None:
    from tqdm.auto import tqdm

    total = sum(sweep.spec.config(i).train.steps for g in groups for i in g)
    state_dir = sweep.path / SWEEP_FILES["state"]
    saved = SavedStates(state_dir) if state_dir.exists() else None
    resumed = sum(saved.where[i][2] for g in groups for i in g if i in saved.where) if saved else 0
    bar = tqdm(
        total=total,
        initial=resumed,
        disable=not progress,
        desc=f"sweep {sweep.path.name}",
        unit="model-step",
        unit_scale=True,
        mininterval=0.5,
        leave=False,
    )
    phases: dict[str, int] = {}
    lock = threading.Lock()

    def done(slot, summary) -> None:  # called from a writer thread
        with lock:
            phase = (summary.get("events") or {}).get("phase", "?")
            phases[phase] = phases.get(phase, 0) + 1
            left = slot.total - slot.step
            if left > 0:  # stopped early: its remaining steps will not run
                bar.total -= left
            bar.set_postfix({k[:5]: v for k, v in sorted(phases.items())}, refresh=False)

    try:
        for g in groups:
            train_members(sweep, g, sweep.engine, on_steps=bar.update, on_done=done)
    finally:
        bar.close()

"""Every fixed file and folder name mechgrok writes, in one place.

Modules and scripts build paths from these dicts (``run.path / RUN_FILES["config"]``) and never
spell a name themselves; ``tests/test_layout.py`` checks that no other module under ``mechgrok/``,
``analyses/`` or ``benchmarks/`` does. Renaming a file here renames it everywhere, so a name is a format
decision: existing folders on disk keep the old name (readers of a renamed file must keep
reading the old one, as ``analysis.safetensors`` and ``resume.json`` show).
"""

from __future__ import annotations

__all__ = [
    "ANALYSIS_FILES",
    "IMPORT_FILES",
    "NAME_PATTERNS",
    "REPORT_FILES",
    "RUN_FILES",
    "SWEEP_FILES",
    "pattern_affixes",
    "registered_names",
]

RUN_FILES = {
    "config": "config.json",  # the full RunConfig and library versions
    "metrics": "metrics.jsonl",  # one JSON row per logged step
    "index": "checkpoints.json",  # the checkpoint index (the checkpoints' commit point)
    "checkpoints": "checkpoints",  # folder of step_XXXXXXXX.safetensors
    "resume": "resume.safetensors",  # optimiser / RNG state to resume from
    "resume_meta": "resume.json",  # legacy: folders written before the metadata moved into "resume"
    "summary": "summary.json",  # written when training ends: the run is finished
    "lock": ".lock",  # flock held while a process writes into the folder
}
"""A run folder (:class:`~mechgrok.store.Run`)."""

ANALYSIS_FILES = {
    "dir": "analysis",  # RUN/analysis/
    "tensors": "analysis.safetensors",  # pre-generation name, still read when the records name no file
    "records": "analysis.json",  # the commit point: names the generation's tensor file
    "generation": "analysis.{generation}.safetensors",
}
"""A run's stored analysis (:func:`~mechgrok.analysis.analyze`), inside ``ANALYSIS_FILES["dir"]``."""

IMPORT_FILES = {
    "record": "import.json",  # where an imported run came from (format, source, sha256)
    "split": "split.safetensors",  # the other project's exact train/test split
}
"""The extra files of an imported run folder (:mod:`mechgrok.importers`)."""

SWEEP_FILES = {
    "spec": "sweep.json",  # SweepSpec + EngineConfig + library versions (written once)
    "members": "members",  # one ordinary run folder per member
    "state": "state",  # batch resume state while a sweep runs
    "results": "results.csv",  # one row per finished member
    "llc": "llc.json",  # final local learning coefficient per finished member (run_sweep(llc=...))
    "lock": ".lock",
}
"""A sweep folder (:class:`~mechgrok.sweep.Sweep`)."""

REPORT_FILES = {
    "run": "report.html",  # RUN/report.html
    "sweep": "report.html",  # SWEEP/report.html
    "index": "index.html",  # the demo's ROOT/index.html linking its reports
}
"""HTML reports written into run, sweep and demo folders by default."""

NAME_PATTERNS = {
    "checkpoint": "step_{step:08d}.safetensors",  # RUN/checkpoints/, one per checkpointed step
    "member": "m{index:05d}",  # SWEEP/members/, one run folder per member
}
"""Names with a number in them (``NAME_PATTERNS["checkpoint"].format(step=1234)``); one field each."""


def pattern_affixes(key: str) -> tuple[str, str]:
    """The fixed text around the field of ``NAME_PATTERNS[key]``: ``("step_", ".safetensors")``."""
    pattern = NAME_PATTERNS[key]
    return pattern[: pattern.index("{")], pattern[pattern.index("}") + 1 :]


def registered_names() -> set[str]:
    """Every file name above that has an extension (the ones a stray literal could spell)."""
    names = set()
    for table in (RUN_FILES, ANALYSIS_FILES, IMPORT_FILES, SWEEP_FILES, REPORT_FILES):
        names.update(n for n in table.values() if "." in n.strip(".") and "{" not in n)
    return names

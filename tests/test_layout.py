"""The house's layout: file names spelled in one place, probes free of writers, no import cycles.

Source-level checks (nothing is run): they read the Python files of the package, the analyses and
the benchmarks.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from mechgrok.layout import (
    ANALYSIS_FILES,
    IMPORT_FILES,
    NAME_PATTERNS,
    REPORT_FILES,
    RUN_FILES,
    SWEEP_FILES,
    pattern_affixes,
    registered_names,
)

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mechgrok"


def _sources(*folders: str) -> list[Path]:
    return sorted(p for f in folders for p in (ROOT / f).rglob("*.py"))


def _docstring_nodes(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings (documentation may name the files)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
        # attribute docstrings: a bare string right after an assignment
        for field in ("body", "orelse", "finalbody"):
            stmts = getattr(node, field, None)
            if isinstance(stmts, list):
                for prev, stmt in zip(stmts, stmts[1:]):
                    if (
                        isinstance(prev, (ast.Assign, ast.AnnAssign))
                        and isinstance(stmt, ast.Expr)
                        and isinstance(stmt.value, ast.Constant)
                    ):
                        out.add(id(stmt.value))
    return out


def spelled_names(path: Path, names: set[str]) -> list[str]:
    """``LINE: NAME`` for every registered name spelled in a string literal (not a docstring) of
    ``path``, f-string parts included."""
    tree = ast.parse(path.read_text(), filename=str(path))
    docs = _docstring_nodes(tree)
    patterns = {n: re.compile(rf"(?<![\w.]){re.escape(n)}(?!\w)") for n in names}
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            hits += [f"{node.lineno}: {n}" for n, pat in patterns.items() if pat.search(node.value)]
    return hits


def test_registry_names_are_consistent():
    names = registered_names()
    assert {
        "config.json",
        "metrics.jsonl",
        "summary.json",
        "results.csv",
        "sweep.json",
        "import.json",
        "analysis.json",
        "report.html",
        "index.html",
    } <= names
    # the format-defining names are the ones mechgrok has always written (folders on disk keep them)
    assert RUN_FILES["config"] == "config.json" and RUN_FILES["checkpoints"] == "checkpoints"
    assert SWEEP_FILES["results"] == "results.csv" and IMPORT_FILES["split"] == "split.safetensors"
    assert ANALYSIS_FILES["generation"].format(generation="ab") == "analysis.ab.safetensors"
    assert REPORT_FILES["run"] == "report.html"
    from mechgrok.store import checkpoint_name

    assert checkpoint_name(1234) == "step_00001234.safetensors"
    assert pattern_affixes("checkpoint") == ("step_", ".safetensors")
    assert NAME_PATTERNS["member"].format(index=7) == "m00007"
    # the modules that used to own these dicts hand out the registry's, not copies
    from mechgrok import store
    from mechgrok.analysis import ANALYSIS_FILES as analysis_files
    from mechgrok.importers import IMPORT_FILES as import_files
    from mechgrok.sweep import SWEEP_FILES as sweep_files

    assert store.FILES is RUN_FILES and analysis_files is ANALYSIS_FILES
    assert import_files is IMPORT_FILES and sweep_files is SWEEP_FILES


def test_the_checker_finds_spelled_names(tmp_path):
    # the check itself: a literal is caught (also inside an f-string), a docstring is not
    f = tmp_path / "m.py"
    f.write_text(
        '"""Writes RUN/config.json."""\n\nX = 1\n"""see results.csv"""\n'
        'p = "config.json"\nq = f"{p}/summary.json"\nr = "my_config.json"\n'
    )
    assert spelled_names(f, registered_names()) == ["5: config.json", "6: summary.json"]


@pytest.mark.parametrize("path", _sources("mechgrok", "analyses", "benchmarks"), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_spells_a_registered_file_name(path):
    if path == PACKAGE / "layout.py":
        return
    hits = spelled_names(path, registered_names())
    assert not hits, f"{path.relative_to(ROOT)} spells file names of mechgrok.layout: {hits}"


def _imports(path: Path) -> set[str]:
    """Modules of ``mechgrok`` that ``path`` imports anywhere (lazy imports inside functions too)."""
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    package = package.removesuffix(".__init__")
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("mechgrok"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("mechgrok"):
                out.add(target)
                # "from . import x" / "from .pkg import mod" may name modules
                out.update(f"{target}.{a.name}" for a in node.names)
    return out


def _graph() -> dict[str, set[str]]:
    modules = {}
    for path in _sources("mechgrok"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    return {m: {t for t in _imports(p) if t in modules and t != m} for m, p in modules.items()}


def test_probes_are_pure_functions_of_trajectories():
    # probes read checkpoints; writing run folders (importers), storing analyses (analysis),
    # training and reporting are layers above or beside them
    upstream_only = (
        "mechgrok.analysis",
        "mechgrok.importers",
        "mechgrok.train",
        "mechgrok.report",
        "mechgrok.sweep",
        "mechgrok.cli",
        "mechgrok.demo",
    )
    # the sweep's batched forward kernels are pure functions of stacked parameters (the LLC probe
    # runs its chains through them); the engine, its writer and its folders are not
    pure_kernels = ("mechgrok.sweep._kernels",)
    for module, targets in _graph().items():
        if module.startswith("mechgrok.probes"):
            bad = sorted(
                t for t in targets if (t.startswith(upstream_only) and t not in pure_kernels) or t == "mechgrok"
            )
            assert not bad, f"{module} imports {bad}"


def test_importers_and_analysis_stay_below_training_and_reports():
    # importers sit beside the store (they write run folders as the trainer does, without it);
    # the analysis pipeline reads runs and stores results, and reports draw what it returns
    above = ("mechgrok.train", "mechgrok.report", "mechgrok.sweep", "mechgrok.cli", "mechgrok.demo")
    for module, targets in _graph().items():
        if module.startswith(("mechgrok.importers", "mechgrok.analysis")):
            bad = sorted(
                t for t in targets if t.startswith(above) or t == "mechgrok.analysis" and "importers" in module
            )
            assert not bad, f"{module} imports {bad}"


@pytest.mark.parametrize(
    "layer", ["mechgrok.probes", "mechgrok.analysis", "mechgrok.importers", "mechgrok.store", "mechgrok.layout"]
)
def test_no_import_cycles(layer):
    # lazy imports count: a cycle hidden inside a function is still a cycle. The package root
    # (the public facade re-exporting everything) is left out.
    graph = {m: {t for t in ts if t != "mechgrok"} for m, ts in _graph().items()}
    for start in (m for m in graph if m == layer or m.startswith(layer + ".")):
        stack, seen = [(start, [start])], set()
        while stack:
            node, trail = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start:
                    raise AssertionError(f"import cycle: {' -> '.join(trail + [start])}")
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, trail + [nxt]))

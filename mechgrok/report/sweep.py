"""Sweep figures (the phase map, steps to generalise) and the sweep report.

Figure builders take the sweep's results table: a pandas DataFrame or a mapping of equal-length
columns, one row per member, with the swept hyperparameters, ``phase`` (one of
:data:`~mechgrok.probes.events.PHASES`) and the event steps (``memorised_step``,
``generalised_step``; empty / NaN = never).
"""

from __future__ import annotations

import html
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .._threads import with_threads
from ..config import ConfigError
from ..layout import REPORT_FILES, RUN_FILES, SWEEP_FILES
from ..probes.events import PHASE_RULES, PHASES
from ..store import StoreError
from ..sweep.store import RESULT_COLUMNS
from ._common import PHASE_COLORS
from .html import Section, html_table, write_html

__all__ = [
    "phase_map_figure",
    "steps_to_generalise_figure",
    "swept_parameters",
    "read_results",
    "sweep_sections",
    "write_sweep_report",
    "SWEEP_REPORT_FILE",
]

SWEEP_REPORT_FILE = REPORT_FILES["sweep"]
# columns of a results table that are outcomes or bookkeeping, not swept hyperparameters
_OUTCOME = {
    *RESULT_COLUMNS,
    "pruned_step",
    "seed",
    "member",
    "index",
    "id",
    "run_dir",
    "path",
    "steps",
    "status",
    "name",
    "stopped_step",
}


def _phase_order(phases: Any) -> list[str]:
    """The known phases in :data:`PHASES` order, then any others (a hand-edited table) sorted."""
    return [*PHASES, *sorted(set(phases) - set(PHASES))]


def _columns(table: Any) -> dict[str, np.ndarray]:
    """Equal-length numpy columns from a DataFrame / mapping of sequences / list of row dicts."""
    if hasattr(table, "to_dict") and hasattr(table, "columns"):
        table = {str(c): table[c].to_numpy() for c in table.columns}
    elif isinstance(table, Sequence) and table and isinstance(table[0], Mapping):
        keys = list(dict.fromkeys(k for row in table for k in row))
        table = {k: [row.get(k) for row in table] for k in keys}
    cols = {}
    for k, v in dict(table).items():
        arr = np.asarray(v, dtype=object)
        try:
            arr = np.asarray([np.nan if x is None else x for x in arr], dtype=np.float64)
        except (TypeError, ValueError):
            arr = np.asarray(["" if x is None else str(x) for x in arr], dtype=object)
        cols[k] = arr
    lengths = {len(v) for v in cols.values()}
    if len(lengths) > 1:
        raise ValueError(f"results table: columns have different lengths {sorted(lengths)}")
    if "phase" not in cols:
        raise ValueError("results table: no 'phase' column")
    return cols


def _is_numeric(col: np.ndarray) -> bool:
    return col.dtype.kind in "fiu"


def swept_parameters(table: Any) -> list[str]:
    """Numeric hyperparameter columns that vary across the sweep, most distinct values first."""
    cols = _columns(table)
    out = [
        (len(np.unique(v[np.isfinite(v)])), k)
        for k, v in cols.items()
        if k not in _OUTCOME and not k.endswith(("_step", "_acc", "_loss")) and _is_numeric(v)
    ]
    found = [k for n, k in sorted(out, key=lambda t: -t[0]) if n >= 2]
    # weight decay first: it is the parameter the grokking story is about
    return sorted(found, key=lambda k: 0 if k.split(".")[-1] in ("weight_decay", "wd") else 1)


def _axis(col: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Numeric positions for a column plus axis settings: numeric columns as they are (log scale
    when they span >= 8x), text columns (e.g. schedules) as evenly spaced categories."""
    if _is_numeric(col):
        v = col.astype(np.float64)
        return v, {"type": "log" if _use_log(v) else "linear"}
    cats = sorted(set(col.tolist()), key=str)
    pos = np.array([cats.index(c) for c in col], dtype=np.float64)
    return pos, {"type": "linear", "tickvals": list(range(len(cats))), "ticktext": [str(c) for c in cats]}


def _use_log(v: np.ndarray) -> bool:
    v = v[np.isfinite(v)]
    return bool(v.size) and v.min() > 0 and v.max() / v.min() >= 8


def _jitter(v: np.ndarray, log: bool, amount: float = 0.3) -> np.ndarray:
    """Spread rows that share a grid value over ± ``amount`` of the gap to the neighbouring value
    (deterministic), so seeds / other parameters at one grid point stay visible."""
    t = np.log10(v) if log else v.astype(np.float64)
    u = np.unique(t[np.isfinite(t)])
    gap = float(np.min(np.diff(u))) if u.size > 1 else (abs(float(u[0])) * 0.1 if u.size and u[0] else 0.1)
    out = t.copy()
    for val in u:
        idx = np.nonzero(t == val)[0]
        if idx.size > 1:
            out[idx] = val + amount * gap * np.linspace(-1, 1, idx.size)
    return 10**out if log else out


def _hover(cols: dict[str, np.ndarray], rows: np.ndarray) -> list[str]:
    keys = [k for k in cols if k != "run_dir"]
    text = []
    for r in rows:
        parts = []
        for k in keys:
            v = cols[k][r]
            if isinstance(v, float):
                if math.isnan(v):
                    v = "never" if k.endswith("_step") else "—"
                elif v.is_integer() and abs(v) < 1e15:
                    v = f"{int(v):,}"
                else:
                    v = f"{v:.4g}"
            parts.append(f"{html.escape(k)}: {html.escape(str(v))}")
        text.append("<br>".join(parts))
    return text


def _padded_range(u: np.ndarray, log: bool) -> list[float]:
    """Pinned axis range around the grid values ``u`` (log10 units on a log axis)."""
    if log:
        lo, hi = math.log10(u.min()), math.log10(u.max())
        pad = max((hi - lo) * 0.06, 0.15)
    else:
        lo, hi = float(u.min()), float(u.max())
        pad = max((hi - lo) * 0.06, abs(hi) * 0.1 or 0.5)
    return [lo - pad, hi + pad]


def phase_map_figure(table: Any, x: str | None = None, y: str | None = None, *, title: str | None = None) -> go.Figure:
    """The phase map: two hyperparameters on the axes (log scale when they span >= 8×), one point
    per member coloured by its phase (comprehension / grokking / memorisation / confusion), every
    column of the row in the hover. Members sharing a grid point are spread slightly around it."""
    cols = _columns(table)
    params = swept_parameters(cols)
    x = x or (params[0] if params else None)
    y = y or next((p for p in params if p != x), None)
    if x is None or y is None:
        raise ValueError(
            f"phase_map_figure: need two swept parameters, found {params or 'none'}; name them with x= and y="
        )
    for name in (x, y):
        if name not in cols:
            raise ValueError(f"phase_map_figure: no column {name!r}; have {', '.join(cols)}")
    (xv, xset), (yv, yset) = _axis(cols[x]), _axis(cols[y])
    xlog, ylog = xset["type"] == "log", yset["type"] == "log"
    xj, yj = _jitter(xv, xlog), _jitter(yv, ylog)
    phases = cols["phase"].astype(str)
    fig = go.Figure()
    for phase in _phase_order(phases):
        rows = np.nonzero(phases == phase)[0]
        if phase == "unknown" and rows.size == 0:  # legend entry only when some member lacks the evidence
            continue
        fig.add_trace(
            go.Scatter(
                x=xj[rows],
                y=yj[rows],
                mode="markers",
                name=f"{phase} ({rows.size})",
                marker={
                    "color": PHASE_COLORS.get(phase, "#7f7f7f"),
                    "size": 9 if len(phases) < 400 else 6,
                    "line": {"width": 0.5, "color": "white"},
                },
                text=_hover(cols, rows),
                hovertemplate="%{text}<extra>" + phase + "</extra>",
            )
        )
    for axis, name, vals, settings in (("x", x, xv, xset), ("y", y, yv, yset)):
        u = np.unique(vals[np.isfinite(vals)])
        upd = {"title_text": name, **settings, "range": _padded_range(u, settings["type"] == "log")}
        if "tickvals" not in settings and u.size <= 12:
            upd.update(tickvals=u.tolist(), ticktext=[f"{t:g}" for t in u])
        (fig.update_xaxes if axis == "x" else fig.update_yaxes)(**upd)
    fig.update_layout(
        title=title or f"Phase map: {x} × {y} ({len(phases)} models)",
        height=560,
        template="plotly_white",
        legend={"title": {"text": "phase"}},
        margin={"l": 70, "r": 30, "t": 60, "b": 60},
    )
    return fig


def steps_to_generalise_figure(
    table: Any, params: Sequence[str] | None = None, *, step_column: str = "generalised_step"
) -> go.Figure:
    """Steps until the test accuracy reached the threshold against each swept parameter (one panel
    per parameter, log step axis, colour = phase, median per grid value as a line). Members that
    never generalised are drawn as ``×`` above the top of the axis."""
    cols = _columns(table)
    params = list(params) if params else swept_parameters(cols)
    if not params:
        raise ValueError("steps_to_generalise_figure: no swept parameter found")
    if step_column not in cols:
        raise ValueError(f"steps_to_generalise_figure: no column {step_column!r}")
    steps = cols[step_column].astype(np.float64)
    done = np.isfinite(steps) & (steps > 0)
    total = cols.get("total_steps")
    ceiling = (
        float(np.nanmax(total))
        if total is not None and np.isfinite(total).any()
        else float(np.nanmax(steps[done]))
        if done.any()
        else 10.0
    )
    top = max(ceiling * 1.6, float(np.nanmax(steps[done])) * 1.3 if done.any() else 0.0)
    phases = cols["phase"].astype(str)
    fig = make_subplots(rows=1, cols=len(params), shared_yaxes=True, horizontal_spacing=0.04, subplot_titles=params)
    shown = set()
    for c, name in enumerate(params, start=1):
        v, settings = _axis(cols[name])
        log = settings["type"] == "log"
        vj = _jitter(v, log, 0.2)
        for phase in _phase_order(phases):
            rows = np.nonzero((phases == phase) & done)[0]
            never = np.nonzero((phases == phase) & ~done)[0]
            color = PHASE_COLORS.get(phase, "#7f7f7f")
            for rr, yvals, symbol in ((rows, steps[rows], "circle"), (never, np.full(never.size, top), "x")):
                if rr.size == 0:
                    continue
                fig.add_trace(
                    go.Scatter(
                        x=vj[rr],
                        y=yvals,
                        mode="markers",
                        name=phase,
                        legendgroup=phase,
                        showlegend=phase not in shown,
                        marker={"color": color, "symbol": symbol, "size": 7, "opacity": 0.8},
                        text=_hover(cols, rr),
                        hovertemplate="%{text}<extra></extra>",
                    ),
                    row=1,
                    col=c,
                )
                shown.add(phase)
        u = np.unique(v[np.isfinite(v)])
        med = [float(np.median(steps[done & (v == val)])) if (done & (v == val)).any() else np.nan for val in u]
        fig.add_trace(
            go.Scatter(
                x=u,
                y=med,
                mode="lines",
                line={"color": "black", "width": 1.5},
                name="median (generalised)",
                legendgroup="median",
                showlegend=c == 1,
                hoverinfo="skip",
            ),
            row=1,
            col=c,
        )
        fig.update_xaxes(title_text=name, row=1, col=c, **settings)
    lo = float(np.nanmin(steps[done])) if done.any() else 1.0
    # shared y axes must agree on type and range: set them on every panel
    fig.update_yaxes(type="log", range=[math.log10(max(lo, 1.0)) - 0.2, math.log10(top) + 0.1])
    fig.update_yaxes(title_text=f"{step_column.replace('_', ' ')} (× = never)", row=1, col=1)
    fig.add_hline(y=ceiling, line={"color": "grey", "dash": "dot", "width": 1})
    fig.update_layout(
        title="Steps to generalise", height=460, template="plotly_white", margin={"l": 70, "r": 30, "t": 70, "b": 60}
    )
    return fig


# ----------------------------------------------------------------------------------------------
# sweep folders


def read_results(sweep_dir: str | Path, phase_rule: str | None = None) -> tuple[Any, list[str], dict[str, Any]]:
    """``(table, swept columns, spec record)`` of a sweep folder.

    A mechgrok sweep folder (``sweep.json``) gives its grid axes (minus seeds) as the swept columns
    and rewrites ``results.csv`` from the finished members if it is missing; any other folder with
    a ``results.csv`` is read as it is and its swept columns are guessed. ``phase_rule``
    (``"accuracy"`` / ``"loss"``): when the table's phases come from another rule, a sweep folder's
    rows are classified again from the members' metrics (``results.csv`` is left as it is); a bare
    ``results.csv`` cannot be, and is an error.
    """
    import pandas as pd

    from ..sweep import Sweep
    from ..sweep.spec import column_name

    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise StoreError(f"{sweep_dir}: no such sweep folder")
    results = sweep_dir / SWEEP_FILES["results"]
    if (sweep_dir / SWEEP_FILES["spec"]).exists():
        sweep = Sweep.open(sweep_dir)
        table = sweep.results()
        if phase_rule is not None and len(table) and _table_rule(table) != phase_rule:
            table = pd.DataFrame(sweep.result_rows(phase_rule))
        swept = [column_name(k) for k, values in sweep.spec.grid if len(values) > 1 and column_name(k) != "seed"]
        spec = json.loads((sweep_dir / SWEEP_FILES["spec"]).read_text()).get("spec", {})
    elif results.exists():
        try:
            table = pd.read_csv(results)
        except Exception as e:  # pandas raises many types for damaged files
            raise StoreError(
                f"{results}: unreadable results table ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
            ) from None
        swept, spec = [], {}
        if phase_rule is not None and len(table) and _table_rule(table) != phase_rule:
            raise StoreError(
                f"{results}: phases by the {_table_rule(table)} rule, and without the sweep folder's members "
                f"they cannot be classified by the {phase_rule} rule"
            )
    else:
        raise StoreError(
            f"{sweep_dir}: not a run or sweep folder "
            f"(no {RUN_FILES['config']}, {SWEEP_FILES['spec']} or {SWEEP_FILES['results']})"
        )
    if len(table) == 0 or "phase" not in table.columns:
        raise StoreError(f"{sweep_dir}: no finished members in the results table yet")
    return table, swept or swept_parameters(table), spec


def _table_rule(table: Any) -> str:
    """The phase rule of a results table (tables written before the column existed: accuracy)."""
    if "phase_rule" not in table.columns:
        return "accuracy"
    rules = {str(r) for r in table["phase_rule"].dropna().unique()}
    return rules.pop() if len(rules) == 1 else "mixed"


def sweep_sections(
    table: Any, params: Sequence[str] | None = None, *, x: str | None = None, y: str | None = None, max_maps: int = 3
) -> list[Section]:
    """Sections of a sweep report: a phase map per pair of swept ``params`` (``x`` / ``y`` first,
    at most ``max_maps``) and steps to generalise against each parameter."""
    cols = _columns(table)
    params = list(params) if params else swept_parameters(cols)
    for name in (x, y):
        if name is not None and name not in cols:
            raise ConfigError(f"phase map: no column {name!r}; have {', '.join(cols)}")
    sections = []
    pairs: list[tuple[str, str]] = []
    if x or y:
        first = x or next(p for p in params if p != y)
        second = y or next(p for p in params if p != first)
        pairs.append((first, second))
    pairs += [pr for pr in itertools.combinations(params, 2) if pr not in pairs and pr[::-1] not in pairs]
    for a, b in pairs[:max_maps]:
        sections.append(
            Section(
                f"Phase map: {a} × {b}",
                phase_map_figure(cols, a, b),
                "Each point is one model; members at the same grid point (seeds, other parameters) are spread "
                "slightly around it. Hover for the member's settings, events and run folder.",
                f"map-{a}-{b}".replace(".", "-"),
            )
        )
    if params and "generalised_step" in cols:
        sections.append(
            Section(
                "Steps to generalise",
                steps_to_generalise_figure(cols, params),
                "Step at which each model's test accuracy first reached the threshold (× = never).",
                "steps",
            )
        )
    return sections


@with_threads  # adds threads=: intra-op threads while reading and drawing (automatic: 1)
def write_sweep_report(
    sweep_dir: str | Path,
    out: str | Path | None = None,
    *,
    x: str | None = None,
    y: str | None = None,
    phase_rule: str | None = None,
) -> Path:
    """Write ``SWEEP/report.html`` (or ``out``): phase maps and steps to generalise, one offline file.
    ``phase_rule``: classify members by ``"accuracy"`` or ``"loss"`` (PAIR's rule); default: as
    ``results.csv`` does."""
    if phase_rule is not None and phase_rule not in PHASE_RULES:
        raise ConfigError(f"phase_rule: must be one of {', '.join(PHASE_RULES)}, got {phase_rule!r}")
    sweep_dir = Path(sweep_dir)
    table, params, spec = read_results(sweep_dir, phase_rule)
    rule = _table_rule(table)
    cols = _columns(table)
    phases = cols["phase"].astype(str)
    counts = [(p, int((phases == p).sum())) for p in _phase_order(phases) if (phases == p).any()]
    ranges = {}
    for p in params:
        col = cols[p]
        vals = np.unique(col[np.isfinite(col)]) if _is_numeric(col) else sorted(set(col.tolist()), key=str)
        ranges[p] = (
            f"{vals[0]:g} … {vals[-1]:g} ({len(vals)} values)" if _is_numeric(col) else ", ".join(map(str, vals))
        )
    header = (
        '<section><div class="summary">'
        + " ".join(
            f'<span class="phase" style="background:{PHASE_COLORS.get(p, "#7f7f7f")}">{html.escape(p)} {n}</span>'
            for p, n in counts
        )
        + f" of {len(phases)} models (phases by the {html.escape(rule)} rule)</div>"
        + f'<div class="grid"><div><h3>swept parameters</h3>{html_table(ranges)}</div></div>'
        + (
            "<details><summary>sweep specification</summary>"
            f"<pre>{html.escape(json.dumps(spec, indent=2))}</pre></details>"
            if spec
            else ""
        )
        + "</section>"
    )
    out = Path(out) if out is not None else sweep_dir / SWEEP_REPORT_FILE
    return write_html(
        out,
        f"mechgrok sweep report: {sweep_dir.name}",
        sweep_sections(cols, params, x=x, y=y),
        header_html=header,
        subtitle=f"{len(phases)} models, {', '.join(params)}",
    )

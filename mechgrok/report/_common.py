"""Private helpers shared by the figure builders: frame selection, sliders, axes, colours."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

PHASE_COLORS = {
    "comprehension": "#1f77b4",
    "grokking": "#2ca02c",
    "memorisation": "#ff7f0e",
    "confusion": "#d62728",
    "unknown": "#9e9e9e",  # not enough evidence for a phase (probes.events)
}
EVENT_STYLE = {
    "memorised_step": ("memorised", "#ff7f0e"),
    "pruned_step": ("pruned", "#9467bd"),
    "generalised_step": ("generalised", "#2ca02c"),
    "prune_now_step": ("prune-now ≥ 99%", "#8c564b"),
    "sensitivity_zero_step": ("irrelevant sensitivity ≈ 0", "#e377c2"),
    "key_freq_step": ("key frequencies settled", "#17becf"),
    "restricted_drop_step": ("restricted loss drops", "#bcbd22"),
    "excluded_rise_step": ("excluded loss rises", "#7f7f7f"),
}
_EXTRA_COLORS = ("#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")
_LABEL_ROWS = 4
DIVERGING = "RdBu_r"
"""Signed values: red positive, blue negative, white at 0 (always with a symmetric range)."""
SEQUENTIAL = "Viridis"
DEFAULT_MAX_FRAMES = 60
"""Slider frames per figure: enough to see the transition, small enough for a report < 15 MB."""


def to_numpy(x: Any, dtype: Any = np.float32) -> np.ndarray:
    """A numpy array from a tensor / list (float32 by default: plotly then embeds it as compact
    base64 typed arrays, not decimal text)."""
    if hasattr(x, "detach"):
        x = x.detach().to("cpu")
        if x.dtype.is_floating_point:
            x = x.double()
        x = x.numpy()
    return np.asarray(x, dtype=dtype)


def frame_indices(
    steps: Sequence[int], max_frames: int = DEFAULT_MAX_FRAMES, include: Iterable[int | None] = ()
) -> list[int]:
    """Indices of at most ``max_frames`` checkpoints spread evenly in log-step.

    Always keeps the first and last checkpoint and the ones nearest to the ``include`` steps
    (events). Dense early checkpoints collide on the log grid, so the grid is refined until the
    cap is reached or every checkpoint is taken.
    """
    steps = np.asarray(steps, dtype=np.float64)
    n = len(steps)
    if max_frames < 2:
        raise ValueError(f"max_frames: must be >= 2, got {max_frames}")
    if n <= max_frames:
        return list(range(n))
    fixed = {0, n - 1}
    for s in include:
        if s is not None:
            fixed.add(int(np.abs(steps - s).argmin()))
    logs = np.log10(np.maximum(steps, 1.0))
    best = sorted(fixed)
    k = max_frames
    while k <= 8 * n:
        grid = np.linspace(logs[0], logs[-1], k)
        chosen = fixed | {int(np.abs(logs - g).argmin()) for g in grid}
        if len(chosen) > max_frames:
            break
        best = sorted(chosen)
        if len(chosen) == n:
            break
        k = int(k * 1.25) + 1
    return best


def frame_name(step: int) -> str:
    return f"step {int(step)}"


def add_step_slider(
    fig: go.Figure,
    frames: list[go.Frame],
    steps: Sequence[int],
    active: int,
    *,
    redraw: bool = True,
    y: float = -0.08,
) -> go.Figure:
    """Attach named ``frames`` (one per step) with a step slider and play / pause buttons.

    Every slider step animates to its frame by name, so a frame can be found from the slider and
    the slider from a frame; ``active`` is the frame the figure's data shows initially.
    """
    fig.frames = frames
    anim = {"mode": "immediate", "frame": {"duration": 0, "redraw": redraw}, "transition": {"duration": 0}}
    slider_steps = [{"label": f"{int(s):,}", "method": "animate", "args": [[frame_name(s)], anim]} for s in steps]
    fig.update_layout(
        sliders=[
            {
                "active": active,
                "steps": slider_steps,
                "currentvalue": {"prefix": "step ", "font": {"size": 13}},
                "pad": {"t": 45, "b": 5},
                "x": 0.08,
                "len": 0.92,
                "y": y,
                "yanchor": "top",
                "ticklen": 3,
            }
        ],
        updatemenus=[
            {
                "type": "buttons",
                "direction": "left",
                "showactive": False,
                "x": 0.0,
                "y": y,
                "xanchor": "left",
                "yanchor": "top",
                "pad": {"t": 50, "r": 10},
                "buttons": [
                    {
                        "label": "▶",
                        "method": "animate",
                        "args": [
                            None,
                            {
                                "mode": "immediate",
                                "fromcurrent": True,
                                "frame": {"duration": 120, "redraw": redraw},
                                "transition": {"duration": 0},
                            },
                        ],
                    },
                    {"label": "❚❚", "method": "animate", "args": [[None], anim]},
                ],
            }
        ],
    )
    return fig


def log_range(values: Iterable[float], pad: float = 0.05) -> list[float] | None:
    """A pinned log10 axis range covering the positive finite values (None if there are none)."""
    v = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=np.float64).ravel()
    v = v[np.isfinite(v) & (v > 0)]
    if v.size == 0:
        return None
    lo, hi = math.log10(v.min()), math.log10(v.max())
    span = max(hi - lo, 1e-3)
    return [lo - pad * span, hi + pad * span]


def lin_range(values: Iterable[float], pad: float = 0.05, floor: float | None = None) -> list[float] | None:
    v = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return None
    lo, hi = float(v.min()), float(v.max())
    if floor is not None:
        lo = min(lo, floor)
    span = max(hi - lo, 1e-9)
    return [lo - pad * span, hi + pad * span]


def step_axis_range(steps: Sequence[int]) -> list[float]:
    """Pinned log10 range for a step axis (step 0 cannot be drawn on a log axis: it starts at 1)."""
    s = np.asarray(steps, dtype=np.float64)
    s = s[s > 0]
    if s.size == 0:
        return [0.0, 1.0]
    lo, hi = math.log10(max(s.min(), 1.0)), math.log10(max(s.max(), 10.0))
    return [lo - 0.02 * (hi - lo), hi + 0.02 * (hi - lo)]


def symmetric_limit(arrays: Iterable[np.ndarray], quantile: float = 0.999) -> float:
    """Colour limit for signed values: a high quantile of |x| over every frame (one outlier weight
    should not wash out the rest), never 0."""
    v = np.concatenate([np.abs(np.asarray(a, dtype=np.float64)).ravel() for a in arrays])
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 1.0
    lim = float(np.quantile(v, quantile))
    return lim if lim > 0 else float(v.max()) or 1.0


def events_dict(events: Any) -> dict[str, Any]:
    """Events as a plain dict (accepts ``GrokEvents``, its ``to_dict()``, or None)."""
    if events is None:
        return {}
    if hasattr(events, "to_dict"):
        events = events.to_dict()
    return dict(events)


def event_steps(events: Any) -> list[tuple[str, int, str]]:
    """(label, step, colour) of every event that happened: memorised, generalised, and each
    ``*_step`` in ``extra`` (e.g. ``pruned_step``)."""
    ev = events_dict(events)
    found: dict[str, int] = {}
    for key in ("memorised_step", "generalised_step"):
        if ev.get(key) is not None:
            found[key] = int(ev[key])
    for key, value in (ev.get("extra") or {}).items():
        if key.endswith("_step") and isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
            found[key] = int(value)
    out = []
    extra_i = 0
    for key, step in sorted(found.items(), key=lambda kv: kv[1]):
        if key in EVENT_STYLE:
            label, color = EVENT_STYLE[key]
        else:
            label, color = key[: -len("_step")].replace("_", " "), _EXTRA_COLORS[extra_i % len(_EXTRA_COLORS)]
            extra_i += 1
        out.append((label, step, color))
    return out


def add_event_lines(
    fig: go.Figure,
    events: Any,
    *,
    rows: Sequence[int] | None = None,
    annotate_row: int | None = 1,
    col: int | None = None,
) -> None:
    """Vertical dashed lines at the event steps, labelled once at the top of ``annotate_row``."""
    for i, (label, step, color) in enumerate(event_steps(events)):
        x = max(step, 1)
        targets = rows if rows is not None else [None]
        for r in targets:
            kw: dict[str, Any] = {}
            if r is not None:
                kw = {"row": r, "col": col or 1}
            fig.add_vline(x=x, line={"color": color, "dash": "dash", "width": 1.5}, **kw)
        if annotate_row is not None:
            kw = {"row": annotate_row, "col": col or 1} if rows is not None else {}
            log = _is_log_x(fig, kw)
            xpos = math.log10(x) if log else x
            rng = getattr(fig.layout, "xaxis" + _axis_suffix(fig, kw, "x")).range
            right = rng is not None and (xpos - rng[0]) > 0.8 * (rng[1] - rng[0])  # keep labels inside the plot
            fig.add_annotation(
                x=xpos,
                y=1.0 - 0.08 * (i % _LABEL_ROWS),
                yref=_yref_domain(fig, kw),
                text=f"{label} {step:,}",
                showarrow=False,
                xanchor="right" if right else "left",
                font={"color": color, "size": 11},
                bgcolor="rgba(255,255,255,0.7)",
                **({"xref": _xref(fig, kw)} if kw else {}),
            )


def _axis_suffix(fig: go.Figure, kw: Mapping[str, Any], which: str) -> str:
    if not kw:
        return ""
    ref = fig.get_subplot(kw["row"], kw["col"])
    axis = getattr(ref, f"{which}axis")
    name = axis.plotly_name  # e.g. "xaxis2"
    return name[len(f"{which}axis") :]


def _xref(fig: go.Figure, kw: Mapping[str, Any]) -> str:
    return "x" + _axis_suffix(fig, kw, "x")


def _yref_domain(fig: go.Figure, kw: Mapping[str, Any]) -> str:
    return "y" + _axis_suffix(fig, kw, "y") + " domain"


def _is_log_x(fig: go.Figure, kw: Mapping[str, Any]) -> bool:
    name = "xaxis" + _axis_suffix(fig, kw, "x")
    return getattr(fig.layout, name).type == "log"


def downsample_log(steps: np.ndarray, max_points: int) -> np.ndarray:
    """Row indices of at most ~``max_points`` rows spread evenly in log-step (for long curves)."""
    n = len(steps)
    if n <= max_points:
        return np.arange(n)
    logs = np.log10(np.maximum(np.asarray(steps, dtype=np.float64), 1.0))
    grid = np.linspace(logs[0], logs[-1], max_points)
    idx = np.unique(np.searchsorted(logs, grid).clip(0, n - 1))
    return np.union1d(idx, [0, n - 1])


def power_shares(z: np.ndarray, normalise: bool = True) -> np.ndarray:
    """``z [n, K]`` of spectrum norms or, with ``normalise``, each row's share of the squared norm
    per column (weight decay shrinks the weights; the shares show sparsity)."""
    if not normalise:
        return z
    power = z**2
    return power / np.maximum(power.sum(1, keepdims=True), 1e-30)


def spectrum_heatmap(
    s: np.ndarray, y: np.ndarray, z: np.ndarray, row: int, n_rows: int, *, normalise: bool, **kw: Any
) -> go.Heatmap:
    """Panel ``row`` of ``n_rows`` of a spectrum-over-training figure: ``z [n, K]`` (norms or
    shares) as a column x step heatmap on a sequential scale from 0, with its own colour bar;
    ``kw`` (the hover template, custom data) goes to :class:`plotly.graph_objects.Heatmap`."""
    return go.Heatmap(
        x=s.astype(np.float32),
        y=y,
        z=z.T.astype(np.float32),
        colorscale=SEQUENTIAL,
        zmin=0,
        zmax=float(np.nanmax(z)) if z.size else 1.0,
        colorbar={
            "len": 0.9 / n_rows,
            "y": 1 - (row - 0.5) / n_rows,
            "thickness": 12,
            "title": {"text": "share" if normalise else "norm"},
        },
        **kw,
    )

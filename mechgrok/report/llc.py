"""Figure builders for the local learning coefficient (:mod:`mechgrok.probes.llc`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

from ._common import add_event_lines, lin_range, step_axis_range, to_numpy

__all__ = ["llc_calibration_figure", "llc_figure", "llc_traces_figure"]

_LAYOUT = {"template": "plotly_white", "margin": {"l": 70, "r": 30, "t": 60, "b": 50}}


def llc_figure(
    steps: Sequence[int],
    llc: Any,
    llc_std: Any = None,
    *,
    flagged: Any = None,
    events: Any = None,
    title: str = "Local learning coefficient over training",
) -> go.Figure:
    """The LLC estimate per checkpoint (``llc [n]``) with a band of +- one chain std
    (``llc_std [n]``), flagged checkpoints (a chain negative or diverged: ``flagged [n]`` bool)
    marked with crosses, against the event lines."""
    s_all = to_numpy(steps, np.float64)
    keep = s_all > 0  # log step axis
    s = s_all[keep]
    y = to_numpy(llc, np.float64)[keep]
    fig = go.Figure()
    if llc_std is not None:
        sd = to_numpy(llc_std, np.float64)[keep]
        fig.add_trace(
            go.Scatter(
                x=np.concatenate([s, s[::-1]]),
                y=np.concatenate([y + sd, (y - sd)[::-1]]),
                fill="toself",
                fillcolor="rgba(31,119,180,0.2)",
                line={"width": 0},
                name="+- chain std",
                hoverinfo="skip",
            )
        )
    fig.add_trace(
        go.Scatter(
            x=s,
            y=y,
            mode="lines+markers",
            name="LLC",
            line={"color": "#1f77b4", "width": 2.2},
            hovertemplate="LLC %{y:.3g} at step %{x:,}<extra></extra>",
        )
    )
    if flagged is not None:
        f = to_numpy(flagged, np.float64)[keep] > 0
        if f.any():
            fig.add_trace(
                go.Scatter(
                    x=s[f],
                    y=y[f],
                    mode="markers",
                    name="flagged (chain negative or diverged)",
                    marker={"symbol": "x", "size": 10, "color": "#d62728"},
                )
            )
    fig.update_xaxes(type="log", range=step_axis_range(s_all), title_text="step (log scale)")
    fig.update_yaxes(range=lin_range(y), title_text="estimated LLC")
    add_event_lines(fig, events)
    fig.update_layout(title=title, height=420, **_LAYOUT)
    return fig


def llc_traces_figure(
    steps: Sequence[int],
    trace: Any,
    init_loss: Any,
    *,
    nbeta: float,
    burnin: int = 0,
    rows: Sequence[int] | None = None,
    title: str = "SGLD chains: n*beta * (L(w) - L(w*))",
) -> go.Figure:
    """The chains' loss traces (``trace [n, chains, sgld_steps]``) of a few checkpoints (``rows``,
    default first / middle / last), as ``n*beta * (L - L(w*))`` whose mean over the draws is the
    estimate; the burn-in is shaded. A chain that drifts below 0 sits above no minimum; one that
    climbs away has too large a step."""
    tr = to_numpy(trace, np.float64)
    l0 = to_numpy(init_loss, np.float64)
    n, C, T = tr.shape
    if rows is None:
        rows = sorted({0, n // 2, n - 1})
    colors = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")
    fig = go.Figure()
    t = np.arange(T)
    for i, r in enumerate(rows):
        y = nbeta * (tr[r] - l0[r])
        for c in range(C):
            fig.add_trace(
                go.Scatter(
                    x=t,
                    y=y[c],
                    mode="lines",
                    line={"color": colors[i % len(colors)], "width": 1},
                    name=f"step {int(to_numpy(steps, np.int64)[r]):,}",
                    legendgroup=str(r),
                    showlegend=c == 0,
                    opacity=0.7,
                )
            )
    if burnin:
        fig.add_vrect(
            x0=0,
            x1=burnin,
            fillcolor="grey",
            opacity=0.12,
            line_width=0,
            annotation_text="burn-in",
            annotation_position="top left",
        )
    fig.add_hline(y=0, line={"color": "black", "width": 1, "dash": "dot"})
    fig.update_xaxes(title_text="SGLD step")
    fig.update_yaxes(title_text="n*beta * (L(w) - L(w*))")
    fig.update_layout(title=title, height=420, **_LAYOUT)
    return fig


def llc_calibration_figure(calibration: Any, *, nbeta_index: int = 0) -> go.Figure:
    """Heatmap of the estimate over epsilon x gamma at one n*beta (an
    :class:`~mechgrok.probes.llc.LLCCalibration`); flagged cells are left blank-marked with "!"."""
    z = to_numpy(calibration.llc[nbeta_index], np.float64)
    flagged = to_numpy(calibration.flagged[nbeta_index], np.float64) > 0
    stable = to_numpy(calibration.stable[nbeta_index], np.float64) > 0
    text = [
        [f"{v:.3g}" + (" !" if f else " *" if s else "") for v, f, s in zip(zr, fr, sr)]
        for zr, fr, sr in zip(z, flagged, stable)
    ]
    fig = go.Figure(
        go.Heatmap(
            z=np.where(flagged, np.nan, z),
            x=[f"{g:g}" for g in calibration.gammas],
            y=[f"{e:g}" for e in calibration.epsilons],
            text=text,
            texttemplate="%{text}",
            colorscale="Viridis",
            colorbar={"title": "LLC"},
        )
    )
    fig.update_xaxes(title_text="gamma (localisation)", type="category")
    fig.update_yaxes(title_text="epsilon (step size)", type="category")
    fig.update_layout(
        title=f"LLC calibration at step {calibration.step:,}, n*beta = "
        f"{calibration.nbetas[nbeta_index]:.4g} (! flagged, * stable in epsilon)",
        height=420,
        **_LAYOUT,
    )
    return fig

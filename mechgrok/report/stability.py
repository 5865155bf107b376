"""Figure builder for the numerical-stability probes (:mod:`mechgrok.probes.stability`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ._common import add_event_lines, step_axis_range, to_numpy

__all__ = ["stability_figure"]


def stability_figure(
    steps: Sequence[int],
    collapse_fraction: Any,
    alignment: Any,
    logit_norm: Any,
    *,
    events: Any = None,
    loss: str = "",
    title: str = "Numerical stability over training",
) -> go.Figure:
    """Three panels over a log-step axis: the softmax-collapse fraction (training samples with
    exactly zero loss, in %), the cosine between -grad and the weights, and the mean logit norm
    (log scale), from :func:`~mechgrok.probes.stability.stability_over_training`; ``loss`` names
    the run's loss and precision in the first panel's title."""
    s_all = to_numpy(steps, np.float64)
    keep = s_all > 0  # log step axis
    s = s_all[keep]
    fig = make_subplots(
        rows=3,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.07,
        subplot_titles=(
            f"softmax collapse ({loss})" if loss else "softmax collapse",
            "cos(-grad, w)",
            "mean logit norm",
        ),
    )
    panels = [
        (100 * to_numpy(collapse_fraction, np.float64), "collapsed %", "#d62728", "%{y:.1f}% at step %{x:,}"),
        (to_numpy(alignment, np.float64), "alignment", "#1f77b4", "%{y:.3f} at step %{x:,}"),
        (to_numpy(logit_norm, np.float64), "logit norm", "#2ca02c", "%{y:.3g} at step %{x:,}"),
    ]
    for row, (y, name, colour, hover) in enumerate(panels, start=1):
        fig.add_trace(
            go.Scatter(
                x=s,
                y=y[keep],
                mode="lines+markers",
                name=name,
                line={"color": colour, "width": 2},
                hovertemplate=hover + "<extra></extra>",
            ),
            row=row,
            col=1,
        )
    fig.update_xaxes(type="log", range=step_axis_range(s_all))
    fig.update_xaxes(title_text="step (log scale)", row=3, col=1)
    fig.update_yaxes(range=[0, 100], title_text="% of train", row=1, col=1)
    fig.update_yaxes(range=[-1, 1], title_text="cosine", row=2, col=1)
    fig.update_yaxes(type="log", title_text="norm", row=3, col=1)
    add_event_lines(fig, events, rows=[1, 2, 3])
    fig.update_layout(
        title=title, height=640, showlegend=False, template="plotly_white", margin={"l": 70, "r": 30, "t": 70, "b": 50}
    )
    return fig

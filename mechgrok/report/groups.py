"""Figure builders for group tasks: the irrep spectrum over training (the group analogue of the
Fourier spectrum heatmap) with the run's event lines."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ._common import add_event_lines, power_shares, spectrum_heatmap, step_axis_range, to_numpy

__all__ = ["irrep_spectrum_figure"]

_LAYOUT = {"template": "plotly_white", "margin": {"l": 110, "r": 30, "t": 60, "b": 50}}


def irrep_spectrum_figure(
    steps: Sequence[int],
    spectra: Mapping[str, Any],
    irrep_names: Sequence[str],
    key_irreps: Sequence[str] = (),
    *,
    dims: Sequence[int] | None = None,
    events: Any = None,
    normalise: bool = True,
    title: str = "Irrep spectrum over training",
) -> go.Figure:
    """Irrep × step heatmaps, one panel per entry of ``spectra`` (``[n_checkpoints, irreps]``
    norms of the non-trivial irreps named by ``irrep_names``, e.g. ``irreps/embed_irrep_norms``
    and ``irreps/logit_irrep_norms``), with the run's events as dashed lines.

    ``normalise``: each checkpoint's share of the squared norm per irrep (weight decay shrinks
    the weights; the shares show sparsity). Key irreps are marked with ``★``; ``dims`` adds each
    irrep's dimension to its label.
    """
    s_all = to_numpy(steps, np.float64)
    keep = s_all > 0
    s = s_all[keep]
    names = list(spectra)
    keys = set(key_irreps)
    labels = [
        ("★" if n in keys else "") + n + (f" ({dims[i]}d)" if dims is not None else "")
        for i, n in enumerate(irrep_names)
    ]
    fig = make_subplots(rows=len(names), cols=1, shared_xaxes=True, vertical_spacing=0.08, subplot_titles=names)
    for r, name in enumerate(names, start=1):
        z = power_shares(to_numpy(spectra[name], np.float64)[keep], normalise)  # [n, R]
        R = z.shape[1]
        fig.add_trace(
            spectrum_heatmap(
                s,
                np.arange(R),
                z,
                r,
                len(names),
                normalise=normalise,
                customdata=np.array([[lab] * len(s) for lab in labels], dtype=object),
                hovertemplate="%{customdata} at step %{x:,}: %{z:.3g}<extra>" + name + "</extra>",
            ),
            row=r,
            col=1,
        )
        fig.update_yaxes(
            title_text="irrep", range=[-0.5, R - 0.5], tickvals=list(range(R)), ticktext=labels, row=r, col=1
        )
    fig.update_xaxes(type="log", range=step_axis_range(s))
    fig.update_xaxes(title_text="step (log scale)", row=len(names), col=1)
    add_event_lines(fig, events, rows=list(range(1, len(names) + 1)), annotate_row=1)
    fig.update_layout(title=title, height=330 * len(names) + 80, **_LAYOUT)
    return fig

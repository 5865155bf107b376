"""Figure builders for one run. Each takes probe results / metrics and returns a
``plotly.graph_objects.Figure``; nothing here writes or shows anything.

Conventions: steps on a log axis (step 0 cannot be drawn there and is left out of curves),
signed values on a diverging colour scale centred at 0, every axis range pinned, and sliders made
of named frames, at most ``max_frames`` of them, spread evenly in log-step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ._common import (
    DEFAULT_MAX_FRAMES,
    DIVERGING,
    add_event_lines,
    add_step_slider,
    downsample_log,
    event_steps,
    frame_indices,
    frame_name,
    lin_range,
    log_range,
    power_shares,
    spectrum_heatmap,
    step_axis_range,
    symmetric_limit,
    to_numpy,
)

__all__ = [
    "training_curves_figure",
    "slider_heatmaps_figure",
    "parity_weights_figure",
    "bit_dependence_figure",
    "prune_now_accuracy_figure",
    "modular_weights_figure",
    "fourier_spectrum_figure",
    "key_frequency_norms_figure",
    "progress_measures_figure",
    "neuron_circles_figure",
]


def _curve(x: np.ndarray, y: np.ndarray, name: str, color: str, width: float) -> go.Scatter:
    """A named accuracy-like curve over steps (float32 points, hover to 3 decimals)."""
    return go.Scatter(
        x=x.astype(np.float32),
        y=y.astype(np.float32),
        mode="lines",
        name=name,
        line={"color": color, "width": width},
        hovertemplate=name + " %{y:.3f} at step %{x:,}<extra></extra>",
    )


_BIT_COLORS = ("#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
_LAYOUT = {"template": "plotly_white", "margin": {"l": 70, "r": 30, "t": 60, "b": 50}}


def _positive(steps: np.ndarray, *cols: np.ndarray) -> tuple[np.ndarray, ...]:
    keep = steps > 0
    return (steps[keep], *(c[keep] for c in cols))


# ----------------------------------------------------------------------------------------------
# training curves


def _shade_schedule(
    fig: go.Figure, steps: np.ndarray, values: np.ndarray, label: str, color: str, band: tuple[float, float]
) -> None:
    """Shade each stretch of constant positive ``values`` (opacity grows with the value)."""
    ok = np.isfinite(values)
    steps, values = steps[ok], values[ok]
    if values.size == 0 or values.max() <= 0:
        return
    vmax = values.max()
    change = np.nonzero(np.diff(values) != 0)[0] + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [len(values)]])
    for s, e in zip(starts, ends):
        v = float(values[s])
        if v <= 0:
            continue
        x0 = max(float(steps[s]), 1.0)
        x1 = float(steps[e]) if e < len(steps) else float(steps[-1])
        for row in (1, 2):
            fig.add_vrect(
                x0=x0,
                x1=max(x1, x0),
                y0=band[0],
                y1=band[1],
                fillcolor=color,
                opacity=0.05 + 0.12 * v / vmax,
                line_width=0,
                layer="below",
                row=row,
                col=1,
            )
        fig.add_annotation(
            x=math.log10(math.sqrt(x0 * max(x1, x0))),
            y=band[1],
            yref="y2 domain",
            xref="x2",
            text=f"{label} {v:g}",
            showarrow=False,
            yanchor="top",
            font={"size": 10, "color": color},
        )


def training_curves_figure(
    metrics: Mapping[str, Sequence[float]],
    events: Any = None,
    *,
    title: str = "Training curves",
    max_points: int = 2000,
) -> go.Figure:
    """Train / test loss and accuracy against step (log axis), with the detected events as
    vertical lines and the weight-decay (and L1) schedule shaded.

    ``metrics``: columns as ``Run.metrics()`` returns them (``step``, ``train_loss``,
    ``train_acc``, ``test_loss``, ``test_acc``, optionally ``weight_decay`` and ``l1``; NaN where
    not evaluated). ``events``: ``GrokEvents`` or its dict. Long runs are thinned evenly in log-step
    to at most ``max_points`` rows.
    """
    steps = to_numpy(metrics["step"], np.float64)
    rows = downsample_log(steps, max_points)
    steps = steps[rows]
    col = lambda k: to_numpy(metrics[k], np.float64)[rows] if k in metrics else np.full(len(steps), np.nan)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.06, subplot_titles=("loss", "accuracy"))
    fig.update_xaxes(type="log", range=step_axis_range(steps))
    losses = []
    for split, color in (("train", "#1f77b4"), ("test", "#d62728")):
        s, loss, acc = _positive(steps, col(f"{split}_loss"), col(f"{split}_acc"))
        for r, y in ((1, loss), (2, acc)):
            ok = np.isfinite(y)
            fig.add_trace(
                go.Scatter(
                    x=s[ok].astype(np.float32),
                    y=y[ok].astype(np.float32),
                    mode="lines",
                    name=split,
                    line={"color": color, "width": 1.6},
                    legendgroup=split,
                    showlegend=r == 1,
                    hovertemplate=f"{split}" + " %{y:.4g} at step %{x:,}<extra></extra>",
                ),
                row=r,
                col=1,
            )
        losses.append(loss)
    fig.update_yaxes(type="log", range=log_range(np.concatenate(losses)), title_text="loss", row=1, col=1)
    fig.update_yaxes(range=[-0.02, 1.05], title_text="accuracy", row=2, col=1)
    fig.update_xaxes(title_text="step (log scale)", row=2, col=1)
    _shade_schedule(fig, steps, col("weight_decay"), "weight decay", "#2ca02c", (0.0, 1.0))
    _shade_schedule(fig, steps, col("l1"), "L1", "#9467bd", (0.0, 0.12))
    add_event_lines(fig, events, rows=[1, 2], annotate_row=1)
    fig.update_layout(title=title, height=560, hovermode="x unified", **_LAYOUT)
    return fig


# ----------------------------------------------------------------------------------------------
# heatmaps with a step slider


def slider_heatmaps_figure(
    steps: Sequence[int],
    panels: Mapping[str, Any],
    *,
    x_labels: Mapping[str, Sequence[Any]] | None = None,
    y_labels: Mapping[str, Sequence[Any]] | None = None,
    x_titles: Mapping[str, str] | None = None,
    y_titles: Mapping[str, str] | None = None,
    title: str = "",
    max_frames: int = DEFAULT_MAX_FRAMES,
    include_steps: Sequence[int | None] = (),
    initial: str = "last",
    height: int = 560,
) -> go.Figure:
    """Side-by-side heatmaps of signed values over training with one step slider.

    ``panels``: ``{panel title: array [n_checkpoints, rows, cols]}`` aligned with ``steps``. Each
    panel has its own symmetric colour range (fixed over all frames) on a diverging scale centred at
    0. At most ``max_frames`` checkpoints become frames (even in log-step, keeping ``include_steps``).
    ``initial``: ``"last"`` or ``"first"`` frame shown before the slider is touched.
    """
    steps_arr = np.asarray(to_numpy(steps, np.int64))
    picked = frame_indices(steps_arr, max_frames, include_steps)
    names = list(panels)
    data = {k: to_numpy(v)[picked] for k, v in panels.items()}
    limits = {k: symmetric_limit([data[k]]) for k in names}
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, horizontal_spacing=0.14)
    x_labels, y_labels = x_labels or {}, y_labels or {}
    gap = 1.0 / len(names)

    def traces(i: int) -> list[go.Heatmap]:
        out = []
        for j, k in enumerate(names):
            out.append(
                go.Heatmap(
                    z=data[k][i],
                    x=x_labels.get(k),
                    y=y_labels.get(k),
                    zmin=-limits[k],
                    zmax=limits[k],
                    zmid=0,
                    colorscale=DIVERGING,
                    colorbar={"x": gap * (j + 1) - 0.02, "len": 0.8, "thickness": 12},
                    hovertemplate="%{x}, %{y}: %{z:.3g}<extra>" + k + "</extra>",
                )
            )
        return out

    active = len(picked) - 1 if initial == "last" else 0
    for j, tr in enumerate(traces(active)):
        fig.add_trace(tr, row=1, col=j + 1)
    frames = [
        go.Frame(name=frame_name(steps_arr[p]), data=traces(i), traces=list(range(len(names))))
        for i, p in enumerate(picked)
    ]
    add_step_slider(fig, frames, steps_arr[picked], active)
    for j, k in enumerate(names):
        c = data[k].shape[2]
        fig.update_xaxes(
            title_text=(x_titles or {}).get(k, ""),
            row=1,
            col=j + 1,
            **({} if k in x_labels else {"range": [-0.5, c - 0.5]}),
        )
        # one y title: on later panels it would collide with the previous panel's colour bar
        fig.update_yaxes(
            title_text=(y_titles or {}).get(k, "") if j == 0 else "", row=1, col=j + 1, autorange="reversed"
        )
    fig.update_layout(title=title, height=height, **{**_LAYOUT, "margin": {"l": 70, "r": 30, "t": 70, "b": 120}})
    return fig


def parity_weights_figure(
    steps: Sequence[int],
    W_in: Any,
    relevant_bits: Sequence[int],
    *,
    max_frames: int = DEFAULT_MAX_FRAMES,
    max_neurons: int = 128,
    events: Any = None,
) -> go.Figure:
    """First-layer weights of the parity MLP, [neuron × bit], with a step slider.

    ``W_in``: ``[n_checkpoints, n_bits, d_mlp]`` (``blocks.0.mlp.W_in`` of a trajectory). Neurons
    are ordered by their final weight on the relevant bits (strongest first; at most
    ``max_neurons`` shown) so the few neurons that solve the task sit at the top; relevant bits are
    marked with ``*`` and outlined. Frames include the event steps.
    """
    W = to_numpy(W_in)  # [n, n_bits, d_mlp]
    n_bits, d_mlp = W.shape[1:]
    rel = sorted(int(b) for b in relevant_bits)
    order = np.argsort(-np.abs(W[-1][rel]).sum(0), kind="stable")[:max_neurons]
    z = np.transpose(W[:, :, order], (0, 2, 1))  # [n, neuron, bit]
    bits = [f"{b}*" if b in rel else str(b) for b in range(n_bits)]
    neurons = [f"n{j}" for j in order]
    fig = slider_heatmaps_figure(
        steps,
        {"first-layer weight": z},
        x_labels={"first-layer weight": bits},
        y_labels={"first-layer weight": neurons},
        x_titles={"first-layer weight": "input bit (* = relevant)"},
        y_titles={"first-layer weight": "hidden neuron (sorted)"},
        title="Parity MLP first-layer weights [neuron × bit]",
        max_frames=max_frames,
        include_steps=[s for _, s, _ in event_steps(events)],
        height=max(520, min(900, 10 * len(order) + 200)),
    )
    for b in rel:
        fig.add_vrect(x0=b - 0.5, x1=b + 0.5, line={"color": "black", "width": 1.5}, fillcolor="rgba(0,0,0,0)")
    fig.update_xaxes(tickangle=0, tickfont={"size": 9})
    fig.update_yaxes(tickfont={"size": 8})
    return fig


def modular_weights_figure(
    steps: Sequence[int],
    W_E: Any | None,
    W_in: Any | None = None,
    *,
    p: int | None = None,
    fixed_embedding: Any | None = None,
    max_frames: int = DEFAULT_MAX_FRAMES,
    max_columns: int = 24,
    events: Any = None,
) -> go.Figure:
    """Modular-addition weights as a function of the operand ``a``, with a step slider: noisy at
    first, periodic after grokking.

    ``W_E``: ``[n, d_vocab, d_model]`` learned embedding (rows beyond ``p`` - symbol tokens - are
    dropped), or ``None`` with ``fixed_embedding [p, d_model]`` (the cos/sin model). ``W_in``:
    ``[n, d_model, d_mlp]``; when given, a second panel shows each neuron's input from ``a`` (the
    embedding times ``W_in``, the direct path). The embedding is shown projected on the top
    ``max_columns`` principal directions of the final embedding; the neuron panel keeps the
    ``max_columns`` neurons with the largest final norm, so a report stays small.
    """
    panels: dict[str, np.ndarray] = {}
    x_labels: dict[str, list[str]] = {}
    if W_E is not None:
        E = to_numpy(W_E, np.float64)
        p = p or E.shape[1]
        E = E[:, :p]
    else:
        if fixed_embedding is None:
            raise ValueError("modular_weights_figure: give W_E or fixed_embedding")
        E0 = to_numpy(fixed_embedding, np.float64)
        p = p or E0.shape[0]
        E = np.broadcast_to(E0[:p], (len(steps), *E0[:p].shape))
    if W_E is not None:
        # raw embedding dimensions mix frequencies arbitrarily; the final embedding's top principal
        # directions (fixed for every frame) show one clean wave pair per key frequency
        # directions; a diverged run's NaN / inf weights have no SVD: use the last finite checkpoint,
        # or the raw dimensions when there is none (the frames then show the non-finite values as gaps)
        finite = [i for i in range(E.shape[0]) if np.isfinite(E[i]).all()]
        if finite:
            _, sv, vt = np.linalg.svd(E[finite[-1]], full_matrices=False)
            k = min(max_columns, int((sv > sv[0] * 1e-3).sum()) if sv.size else 0, vt.shape[0])
        else:
            vt = np.eye(E.shape[2])
            k = min(max_columns, E.shape[2])
        key = "embedding on its final principal directions"
        panels[key] = np.einsum("npd,kd->npk", E, vt[:k])
        x_labels[key] = [f"PC{i + 1}" for i in range(k)]
    if W_in is not None:
        H = np.einsum("npd,ndm->npm", E, to_numpy(W_in, np.float64))  # [n, p, d_mlp]
        cols = np.sort(np.argsort(-np.nan_to_num(np.linalg.norm(H[-1], axis=0), nan=-1.0))[:max_columns])
        key = "neuron input from a: (W_E W_in)[a, neuron]"
        panels[key] = H[:, :, cols]
        x_labels[key] = [f"n{c}" for c in cols]
    if not panels:
        raise ValueError("modular_weights_figure: nothing to draw")
    a_labels = list(range(p))
    return slider_heatmaps_figure(
        steps,
        panels,
        x_labels=x_labels,
        y_labels={k: a_labels for k in panels},
        x_titles={
            k: ("principal direction (final embedding)" if k.startswith("embedding") else "hidden neuron")
            for k in panels
        },
        y_titles={k: "operand a" for k in panels},
        title="Weights over the operand a (noisy → periodic)",
        max_frames=max_frames,
        include_steps=[s for _, s, _ in event_steps(events)],
        height=620,
    )


# ----------------------------------------------------------------------------------------------
# parity bit dependence


def bit_dependence_figure(
    steps: Sequence[int],
    measures: Mapping[str, Any],
    relevant: Sequence[bool] | Sequence[int],
    *,
    ratio: Any | None = None,
    prune_threshold: float | None = None,
    events: Any = None,
    title: str = "Dependence on each input bit",
) -> go.Figure:
    """Per-bit dependence over training, one row per measure (e.g. weight norm, gradient
    attribution, flip sensitivity ``[n_checkpoints, n_bits]``). Relevant bits are drawn in colour,
    irrelevant bits in thin grey with their mean in black; events as vertical lines.

    ``relevant``: a bool mask ``[n_bits]`` or a list of relevant bit indices. ``ratio``
    (``[n_checkpoints]``, the largest irrelevant-bit weight over the largest relevant-bit weight)
    adds a last row on a log scale with the pruning ``prune_threshold`` as a dotted line.
    """
    s_all = to_numpy(steps, np.float64)
    names = list(measures)
    first = to_numpy(measures[names[0]])
    n_bits = first.shape[1]
    rel_mask = np.zeros(n_bits, dtype=bool)
    rel_arr = np.asarray(relevant)
    if rel_arr.dtype == bool and rel_arr.shape == (n_bits,):
        rel_mask = rel_arr
    else:
        rel_mask[rel_arr.astype(int)] = True
    n_rows = len(names) + (ratio is not None)
    ratio_title = "largest irrelevant-bit weight ÷ largest relevant-bit weight"
    fig = make_subplots(
        rows=n_rows,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.05,
        subplot_titles=[*names, *([ratio_title] if ratio is not None else [])],
    )
    fig.update_xaxes(type="log", range=step_axis_range(s_all))
    for r, name in enumerate(names, start=1):
        v = to_numpy(measures[name], np.float64)
        s, vv = s_all[s_all > 0], v[s_all > 0]
        first_irr = True
        for b in np.nonzero(~rel_mask)[0]:
            fig.add_trace(
                go.Scatter(
                    x=s.astype(np.float32),
                    y=vv[:, b].astype(np.float32),
                    mode="lines",
                    line={"color": "rgba(130,130,130,0.35)", "width": 1},
                    name="irrelevant bits",
                    legendgroup="irrelevant",
                    showlegend=(r == 1 and first_irr),
                    hovertemplate=f"bit {b}" + ": %{y:.3g} at step %{x:,}<extra></extra>",
                ),
                row=r,
                col=1,
            )
            first_irr = False
        if (~rel_mask).any():
            fig.add_trace(
                go.Scatter(
                    x=s.astype(np.float32),
                    y=vv[:, ~rel_mask].mean(1).astype(np.float32),
                    mode="lines",
                    line={"color": "black", "width": 2, "dash": "dot"},
                    name="irrelevant mean",
                    legendgroup="irrelevant-mean",
                    showlegend=r == 1,
                    hovertemplate="irrelevant mean: %{y:.3g} at step %{x:,}<extra></extra>",
                ),
                row=r,
                col=1,
            )
        for i, b in enumerate(np.nonzero(rel_mask)[0]):
            fig.add_trace(
                go.Scatter(
                    x=s.astype(np.float32),
                    y=vv[:, b].astype(np.float32),
                    mode="lines",
                    line={"color": _BIT_COLORS[i % len(_BIT_COLORS)], "width": 2.2},
                    name=f"bit {b} (relevant)",
                    legendgroup=f"bit{b}",
                    showlegend=r == 1,
                    hovertemplate=f"bit {b}" + ": %{y:.3g} at step %{x:,}<extra></extra>",
                ),
                row=r,
                col=1,
            )
        fig.update_yaxes(range=lin_range(vv, floor=0.0), row=r, col=1)
    if ratio is not None:
        rv = to_numpy(ratio, np.float64)[s_all > 0]
        fig.add_trace(
            go.Scatter(
                x=s_all[s_all > 0].astype(np.float32),
                y=rv.astype(np.float32),
                mode="lines",
                name="irrelevant ÷ relevant",
                line={"color": "#9467bd", "width": 2.2},
                hovertemplate="ratio %{y:.3g} at step %{x:,}<extra></extra>",
            ),
            row=n_rows,
            col=1,
        )
        extra = [prune_threshold] if prune_threshold else []
        fig.update_yaxes(type="log", range=log_range(np.concatenate([rv, extra])), row=n_rows, col=1)
        if prune_threshold:
            fig.add_hline(y=prune_threshold, line={"color": "#9467bd", "dash": "dot", "width": 1.5}, row=n_rows, col=1)
            # annotations on a log axis take log10 coordinates
            fig.add_annotation(
                x=0.01,
                xref="x domain",
                y=math.log10(prune_threshold),
                yref=f"y{n_rows}",
                text=f"pruning threshold {prune_threshold:g}",
                showarrow=False,
                xanchor="left",
                yanchor="top",
                font={"size": 10, "color": "#9467bd"},
                row=n_rows,
                col=1,
            )
    fig.update_xaxes(title_text="step (log scale)", row=n_rows, col=1)
    add_event_lines(fig, events, rows=list(range(1, n_rows + 1)), annotate_row=1)
    fig.update_layout(title=title, height=260 * n_rows + 80, **_LAYOUT)
    return fig


def prune_now_accuracy_figure(
    steps: Sequence[int],
    prune_now_acc: Any,
    metrics: Mapping[str, Sequence[float]] | None = None,
    *,
    events: Any = None,
) -> go.Figure:
    """The causal check: test accuracy if the irrelevant-bit weights were zeroed at each checkpoint
    ("prune now"), against the real test (and train) accuracy of the run."""
    s = to_numpy(steps, np.float64)
    acc = to_numpy(prune_now_acc, np.float64)
    fig = go.Figure()
    if metrics is not None:
        ms = to_numpy(metrics["step"], np.float64)
        rows = downsample_log(ms, 2000)
        for key, name, color in (
            ("train_acc", "train accuracy", "#1f77b4"),
            ("test_acc", "test accuracy (real)", "#d62728"),
        ):
            if key not in metrics:
                continue
            y = to_numpy(metrics[key], np.float64)[rows]
            x = ms[rows]
            ok = np.isfinite(y) & (x > 0)
            fig.add_trace(_curve(x[ok], y[ok], name, color, 1.5))
    ok = s > 0
    fig.add_trace(
        go.Scatter(
            x=s[ok].astype(np.float32),
            y=acc[ok].astype(np.float32),
            mode="lines+markers",
            name="test accuracy if pruned now",
            line={"color": "#9467bd", "width": 2.2},
            marker={"size": 5},
            hovertemplate="pruned now: %{y:.3f} at step %{x:,}<extra></extra>",
        )
    )
    fig.update_xaxes(type="log", range=step_axis_range(s), title_text="step (log scale)")
    fig.update_yaxes(range=[-0.02, 1.05], title_text="accuracy")
    add_event_lines(fig, events)
    fig.update_layout(title="Causal check: zero the irrelevant-bit weights at each checkpoint", height=440, **_LAYOUT)
    return fig


# ----------------------------------------------------------------------------------------------
# modular addition: Fourier


def fourier_spectrum_figure(
    steps: Sequence[int],
    spectra: Mapping[str, Any],
    key_frequencies: Sequence[int] = (),
    *,
    normalise: bool = True,
    title: str = "Fourier spectrum over training",
) -> go.Figure:
    """Frequency × step heatmaps (one panel per entry of ``spectra``: ``[n_checkpoints, p//2]``
    norms for frequencies 1..p//2, e.g. of the embedding and the logits).

    ``normalise``: show each checkpoint's share of the squared norm per frequency, so sparsity is
    visible even while weight decay shrinks the weights. Key frequencies are marked with ``★``.
    """
    s_all = to_numpy(steps, np.float64)
    keep = s_all > 0
    s = s_all[keep]
    names = list(spectra)
    fig = make_subplots(rows=len(names), cols=1, shared_xaxes=True, vertical_spacing=0.08, subplot_titles=names)
    keys = {int(k) for k in key_frequencies}
    for r, name in enumerate(names, start=1):
        z = power_shares(to_numpy(spectra[name], np.float64)[keep], normalise)  # [n, K]
        K = z.shape[1]
        fig.add_trace(
            spectrum_heatmap(
                s,
                np.arange(1, K + 1),
                z,
                r,
                len(names),
                normalise=normalise,
                hovertemplate="freq %{y} at step %{x:,}: %{z:.3g}<extra>" + name + "</extra>",
            ),
            row=r,
            col=1,
        )
        ticks = sorted(set(range(0, K + 1, max(1, K // 8))[1:]) | keys)
        fig.update_yaxes(
            title_text="frequency k",
            range=[0.5, K + 0.5],
            tickvals=ticks,
            ticktext=[f"★{t}" if t in keys else str(t) for t in ticks],
            row=r,
            col=1,
        )
    fig.update_xaxes(type="log", range=step_axis_range(s))
    fig.update_xaxes(title_text="step (log scale)", row=len(names), col=1)
    fig.update_layout(title=title, height=330 * len(names) + 80, **_LAYOUT)
    return fig


def key_frequency_norms_figure(
    steps: Sequence[int],
    freq_norms: Any,
    key_frequencies: Sequence[int],
    *,
    events: Any = None,
    title: str = "Embedding norm per key frequency",
) -> go.Figure:
    """Norm of each key frequency's component (``freq_norms [n, p//2]``, frequency k in column
    k-1) over training, against the largest and the mean of the other frequencies."""
    s_all = to_numpy(steps, np.float64)
    keep = s_all > 0
    s = s_all[keep].astype(np.float32)
    z = to_numpy(freq_norms, np.float64)[keep]
    K = z.shape[1]
    keys = [int(k) for k in key_frequencies if 1 <= int(k) <= K]
    others = np.array([k for k in range(1, K + 1) if k not in keys], dtype=int)
    fig = go.Figure()
    for i, k in enumerate(keys):
        fig.add_trace(
            go.Scatter(
                x=s,
                y=z[:, k - 1].astype(np.float32),
                mode="lines",
                name=f"k = {k}",
                line={"color": _BIT_COLORS[i % len(_BIT_COLORS)], "width": 2.2},
                hovertemplate=f"k={k}" + ": %{y:.3g} at step %{x:,}<extra></extra>",
            )
        )
    if others.size:
        fig.add_trace(
            go.Scatter(
                x=s,
                y=z[:, others - 1].max(1).astype(np.float32),
                mode="lines",
                name="largest other frequency",
                line={"color": "grey", "width": 1.5, "dash": "dash"},
            )
        )
        fig.add_trace(
            go.Scatter(
                x=s,
                y=z[:, others - 1].mean(1).astype(np.float32),
                mode="lines",
                name="mean of other frequencies",
                line={"color": "black", "width": 1.5, "dash": "dot"},
            )
        )
    fig.update_xaxes(type="log", range=step_axis_range(s_all), title_text="step (log scale)")
    fig.update_yaxes(range=lin_range(z, floor=0.0), title_text="norm")
    add_event_lines(fig, events)
    fig.update_layout(
        title=title + (f" (key frequencies {', '.join(map(str, keys))})" if keys else " (no key frequencies found)"),
        height=440,
        **_LAYOUT,
    )
    return fig


def progress_measures_figure(
    steps: Sequence[int],
    tensors: Mapping[str, Any],
    *,
    events: Any = None,
    title: str = "Progress measures (Nanda et al.)",
) -> go.Figure:
    """Nanda et al.'s progress measures over training: train / test / restricted / excluded loss
    (log scale), Fourier sparsity, and the sum of squared weights.

    ``tensors``: the analysis tensors (keys ``progress/*`` and ``fourier/sparsity``, each ``[n]``);
    missing keys are skipped.
    """
    s_all = to_numpy(steps, np.float64)
    keep = s_all > 0
    s = s_all[keep].astype(np.float32)
    get = lambda k: to_numpy(tensors[k], np.float64)[keep] if k in tensors else None
    fig = make_subplots(
        rows=3,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.06,
        row_heights=[0.5, 0.25, 0.25],
        subplot_titles=(
            "loss on the training set, restricted and excluded",
            "Fourier sparsity",
            "sum of squared weights",
        ),
    )
    losses = []
    for key, name, color, dash in (
        ("progress/train_loss", "train loss", "#1f77b4", "solid"),
        ("progress/test_loss", "test loss", "#d62728", "solid"),
        ("progress/restricted_loss", "restricted loss (key freqs only)", "#2ca02c", "dash"),
        ("progress/excluded_loss", "excluded loss (key freqs removed)", "#9467bd", "dash"),
    ):
        y = get(key)
        if y is None:
            continue
        losses.append(y)
        fig.add_trace(
            go.Scatter(
                x=s,
                y=y.astype(np.float32),
                mode="lines",
                name=name,
                line={"color": color, "dash": dash, "width": 2},
                hovertemplate=name + " %{y:.4g} at step %{x:,}<extra></extra>",
            ),
            row=1,
            col=1,
        )
    if losses:
        fig.update_yaxes(type="log", range=log_range(np.concatenate(losses)), title_text="loss", row=1, col=1)
    for r, key, name, color in (
        (2, "fourier/sparsity", "Fourier sparsity", "#ff7f0e"),
        (3, "progress/sum_sq_weights", "sum of squared weights", "#7f7f7f"),
    ):
        y = get(key)
        if y is None:
            continue
        fig.add_trace(
            go.Scatter(
                x=s,
                y=y.astype(np.float32),
                mode="lines",
                name=name,
                line={"color": color, "width": 2},
                hovertemplate=name + " %{y:.4g} at step %{x:,}<extra></extra>",
            ),
            row=r,
            col=1,
        )
        fig.update_yaxes(range=lin_range(y, floor=0.0), title_text="sparsity" if r == 2 else "Σ w²", row=r, col=1)
    fig.update_xaxes(type="log", range=step_axis_range(s_all))
    fig.update_xaxes(title_text="step (log scale)", row=3, col=1)
    add_event_lines(fig, events, rows=[1, 2, 3], annotate_row=1)
    fig.update_layout(title=title, height=720, **_LAYOUT)
    return fig


# ----------------------------------------------------------------------------------------------
# neuron circles


def neuron_circles_figure(
    steps: Sequence[int],
    cos: Any,
    sin: Any,
    *,
    freq: Any | None = None,
    spread: Any | None = None,
    norm_cv: Any | None = None,
    max_frames: int = DEFAULT_MAX_FRAMES,
    max_neurons: int = 128,
    events: Any = None,
) -> go.Figure:
    """Each neuron's (cos, sin) component of its dominant frequency as a point (distance from the
    centre = its norm), animated over training with a step slider, beside the phase-spread and
    norm-CV curves (a marker follows the slider).

    ``cos``, ``sin``, ``freq``: ``[n_checkpoints, d_mlp]``; ``spread``, ``norm_cv``:
    ``[n_checkpoints]``. At most ``max_neurons`` neurons (largest final norm) are drawn.
    """
    steps_arr = to_numpy(steps, np.int64)
    C, S = to_numpy(cos, np.float64), to_numpy(sin, np.float64)
    F = to_numpy(freq, np.float64) if freq is not None else np.ones_like(C)
    norms = np.hypot(C, S)
    order = np.argsort(-norms[-1], kind="stable")[:max_neurons]
    picked = frame_indices(steps_arr, max_frames, [s for _, s, _ in event_steps(events)])
    R = float(np.nanmax(norms[picked][:, order])) * 1.12 if norms.size else 1.0
    R = R if R > 0 and np.isfinite(R) else 1.0
    fmax = float(np.nanmax(F)) if F.size else 1.0
    one_freq = np.unique(F[picked][:, order]).size <= 1  # a colour bar of one value says nothing
    curves = {}
    if spread is not None:
        curves["phase spread (1 = evenly around the circle)"] = (to_numpy(spread, np.float64), "#2ca02c")
    if norm_cv is not None:
        curves["norm CV (0 = equal norms)"] = (to_numpy(norm_cv, np.float64), "#d62728")
    fig = make_subplots(
        rows=1,
        cols=2,
        column_widths=[0.5, 0.5],
        horizontal_spacing=0.12,
        subplot_titles=("neurons in the (cos, sin) plane of their frequency", "circle measures"),
    )

    def circle_traces(i: int) -> list[go.Scatter]:
        c, s_, f = C[i, order], S[i, order], F[i, order]
        spokes_x = np.column_stack([np.zeros_like(c), c, np.full_like(c, np.nan)]).ravel()
        spokes_y = np.column_stack([np.zeros_like(s_), s_, np.full_like(s_, np.nan)]).ravel()
        phase = np.degrees(np.arctan2(s_, c))
        text = [
            f"neuron {j}<br>freq {int(fj)}<br>norm {nj:.3g}<br>phase {ph:.0f}°"
            for j, fj, nj, ph in zip(order, f, np.hypot(c, s_), phase)
        ]
        return [
            go.Scatter(
                x=spokes_x.astype(np.float32),
                y=spokes_y.astype(np.float32),
                mode="lines",
                line={"color": "rgba(120,120,120,0.5)", "width": 1},
                hoverinfo="skip",
                showlegend=False,
            ),
            go.Scatter(
                x=c.astype(np.float32),
                y=s_.astype(np.float32),
                mode="markers",
                text=text,
                hovertemplate="%{text}<extra></extra>",
                showlegend=False,
                marker={
                    "size": 11,
                    "color": f.astype(np.float32),
                    "cmin": 0.5,
                    "cmax": fmax + 0.5,
                    "colorscale": "Turbo",
                    "line": {"color": "black", "width": 1},
                    "showscale": not one_freq,
                    "colorbar": {"title": {"text": "freq"}, "x": 0.44, "len": 0.8, "thickness": 10},
                },
            ),
        ]

    def marker_trace(i: int) -> go.Scatter:
        x = float(max(steps_arr[picked[i]], 1))
        return go.Scatter(
            x=[x, x],
            y=[0, ymax],
            mode="lines",
            line={"color": "black", "width": 1.5, "dash": "dot"},
            name="slider step",
            showlegend=False,
            hoverinfo="skip",
        )

    ymax = 1.05
    for y, _ in curves.values():
        if np.isfinite(y).any():
            ymax = max(ymax, float(np.nanmax(y)) * 1.05)
    active = len(picked) - 1
    for tr in circle_traces(active):
        fig.add_trace(tr, row=1, col=1)
    theta = np.linspace(0, 2 * np.pi, 97)
    ref_r = float(np.median(norms[-1, order])) if order.size else 0.0
    fig.add_trace(
        go.Scatter(
            x=(ref_r * np.cos(theta)).astype(np.float32),
            y=(ref_r * np.sin(theta)).astype(np.float32),
            mode="lines",
            line={"color": "rgba(0,0,0,0.25)", "dash": "dash"},
            hoverinfo="skip",
            showlegend=False,
        ),
        row=1,
        col=1,
    )
    keep = steps_arr > 0
    for name, (y, color) in curves.items():
        fig.add_trace(_curve(steps_arr[keep], y[keep], name, color, 2), row=1, col=2)
    fig.add_trace(marker_trace(active), row=1, col=2)
    marker_index = len(fig.data) - 1
    frames = [
        go.Frame(name=frame_name(steps_arr[p]), data=[*circle_traces(i), marker_trace(i)], traces=[0, 1, marker_index])
        for i, p in enumerate(picked)
    ]
    add_step_slider(fig, frames, steps_arr[picked], active, redraw=True)
    fig.update_xaxes(range=[-R, R], title_text="cos component", zeroline=True, row=1, col=1)
    fig.update_yaxes(
        range=[-R, R], title_text="sin component", zeroline=True, scaleanchor="x", scaleratio=1, row=1, col=1
    )
    fig.update_xaxes(type="log", range=step_axis_range(steps_arr), title_text="step (log scale)", row=1, col=2)
    fig.update_yaxes(range=[0, ymax], row=1, col=2)
    add_event_lines(fig, events, rows=[1], col=2, annotate_row=1)
    fig.update_layout(
        title="Neuron circles",
        height=580,
        legend={"orientation": "h", "x": 0.56, "y": 1.16, "xanchor": "left"},
        **{**_LAYOUT, "margin": {"l": 70, "r": 30, "t": 110, "b": 120}},
    )
    return fig

"""Figure builders and HTML assembly on synthetic probe results of the contract's shapes."""

import re

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from mechgrok.report import (
    Section,
    bit_dependence_figure,
    fourier_spectrum_figure,
    frame_indices,
    key_frequency_norms_figure,
    modular_weights_figure,
    neuron_circles_figure,
    parity_weights_figure,
    phase_map_figure,
    progress_measures_figure,
    prune_now_accuracy_figure,
    render_html,
    steps_to_generalise_figure,
    training_curves_figure,
)
from mechgrok.report._common import event_steps

N_BITS, D_MLP, P = 6, 10, 11


@pytest.fixture
def steps():
    # log-spaced early, then dense: like a run's checkpoint steps
    return torch.tensor(sorted({0, 1, 2, 3, 5, 8, 13, 20, 30, *range(50, 2001, 50)}))


@pytest.fixture
def events():
    return {
        "memorised_step": 30,
        "generalised_step": 900,
        "phase": "grokking",
        "extra": {"pruned_step": 800, "prune_lag": 100},
    }


@pytest.fixture
def metrics():
    s = np.arange(0, 2001)
    test = np.where(s % 10 == 0, 1 / (1 + np.exp(-(s - 850) / 30)), np.nan)
    return {
        "step": s,
        "train_loss": np.exp(-s / 50) + 1e-4,
        "train_acc": np.minimum(1, s / 30),
        "test_loss": np.where(s % 10 == 0, 3 - 2.9 * test, np.nan),
        "test_acc": test,
        "weight_decay": np.where(s < 500, 0.0, 0.1),
        "l1": np.zeros(len(s)),
    }


def _frame_names(fig):
    return [f.name for f in fig.frames]


def _check_slider(fig, max_frames):
    names = _frame_names(fig)
    assert 2 <= len(names) <= max_frames
    assert len(set(names)) == len(names)
    slider = fig.layout.sliders[0]
    # every slider step animates to an existing frame, by name
    targets = [st.args[0][0] for st in slider.steps]
    assert targets == names
    return names


def test_frame_indices_log_even_capped():
    steps = np.array(sorted({0, *np.unique(np.geomspace(1, 1000, 40).astype(int)), *range(0, 50_001, 100)}))
    picked = frame_indices(steps, 30, include=[12_345])
    assert len(picked) <= 30 and picked == sorted(picked)
    assert picked[0] == 0 and picked[-1] == len(steps) - 1
    assert np.abs(steps[picked] - 12_345).min() <= 100
    logs = np.log10(np.maximum(steps[picked], 1))
    # spread over the whole log range: no decade left empty
    assert {int(x) for x in logs[1:]} >= {0, 1, 2, 3, 4}
    assert frame_indices(steps[:10], 30) == list(range(10))
    with pytest.raises(ValueError):
        frame_indices(steps, 1)


def test_event_steps_include_extra(events):
    labels = [(lbl, s) for lbl, s, _ in event_steps(events)]
    assert labels == [("memorised", 30), ("pruned", 800), ("generalised", 900)]
    assert event_steps(None) == []


def test_training_curves(metrics, events):
    fig = training_curves_figure(metrics, events)
    assert isinstance(fig, go.Figure)
    assert fig.layout.xaxis.type == "log" and fig.layout.xaxis.range is not None
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis.range is not None
    assert list(fig.layout.yaxis2.range) == [-0.02, 1.05]
    names = {t.name for t in fig.data}
    assert {"train", "test"} <= names
    # step 0 cannot be drawn on a log axis and is left out
    assert min(min(np.asarray(t.x)) for t in fig.data) > 0
    # events: one dashed line per event per row, labelled once
    lines = [s for s in fig.layout.shapes if s.type == "line"]
    assert len(lines) == 3 * 2
    texts = [a.text for a in fig.layout.annotations]
    assert any("pruned 800" in t for t in texts) and any("generalised 900" in t for t in texts)
    # weight decay shaded only where it is on (from step 500)
    rects = [s for s in fig.layout.shapes if s.type == "rect"]
    assert rects and all(r.x0 >= 500 for r in rects)
    assert any("weight decay 0.1" in t for t in texts)


def test_training_curves_thins_long_runs():
    s = np.arange(100_001)
    m = {
        "step": s,
        "train_loss": np.ones(len(s)),
        "train_acc": np.ones(len(s)),
        "test_loss": np.ones(len(s)),
        "test_acc": np.ones(len(s)),
    }
    fig = training_curves_figure(m, None, max_points=500)
    assert max(len(t.x) for t in fig.data) <= 520


def test_parity_heatmap_slider(steps, events):
    n = len(steps)
    W = torch.randn(n, N_BITS, D_MLP) * torch.linspace(1, 0.01, n)[:, None, None]
    W[:, [1, 4], :3] = 2.0  # three neurons reading the relevant bits
    fig = parity_weights_figure(steps, W, [1, 4], max_frames=12, events=events)
    names = _check_slider(fig, 12)
    assert f"step {int(steps[-1])}" in names and "step 0" in names
    assert "step 800" in names and "step 900" in names  # event steps are frames
    hm = fig.data[0]
    assert hm.type == "heatmap" and hm.zmid == 0 and hm.zmin == -hm.zmax
    z = np.asarray(hm.z)
    assert z.shape == (D_MLP, N_BITS)  # [neuron x bit]
    assert list(hm.x[:2]) == ["0", "1*"] and hm.x[4] == "4*"
    # neurons that read the relevant bits are sorted to the top
    assert {hm.y[0], hm.y[1], hm.y[2]} == {"n0", "n1", "n2"}
    # frames differ (the slider changes what is drawn)
    z0 = np.asarray(fig.frames[0].data[0].z)
    assert not np.allclose(z0, z)
    # outline of the relevant bit columns
    assert sum(1 for s in fig.layout.shapes if s.type == "rect") == 2


def test_bit_dependence_and_prune_now(steps, events, metrics):
    decay = torch.exp(-steps.double() / 500)
    wn = torch.stack([decay] * N_BITS, 1)
    wn[:, [1, 4]] = 1.0
    relevant = torch.zeros(N_BITS, dtype=torch.bool)
    relevant[[1, 4]] = True
    fig = bit_dependence_figure(
        steps, {"weight norm": wn, "grad attr": wn * 2, "flip sensitivity": wn / 2}, relevant, events=events
    )
    legend = [t.name for t in fig.data if t.showlegend]
    assert "bit 1 (relevant)" in legend and "bit 4 (relevant)" in legend and "irrelevant bits" in legend
    assert sum(t.name == "irrelevant bits" for t in fig.data) == 3 * (N_BITS - 2)
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis3.range is not None
    # relevant given as indices is the same
    fig2 = bit_dependence_figure(steps, {"weight norm": wn}, [1, 4])
    assert sum((t.name or "").endswith("(relevant)") for t in fig2.data) == 2
    acc = torch.where(steps >= 800, 1.0, 0.5)
    fig3 = prune_now_accuracy_figure(steps, acc, metrics, events=events)
    assert {t.name for t in fig3.data} == {"train accuracy", "test accuracy (real)", "test accuracy if pruned now"}
    assert list(fig3.layout.yaxis.range) == [-0.02, 1.05]


def test_modular_heatmaps(steps):
    n = len(steps)
    a = torch.arange(P).double()
    periodic = torch.stack([torch.cos(2 * torch.pi * 3 * a / P + j) for j in range(20)], 1)  # [p, d]
    W_E = torch.randn(n, P, 20) * 0.1 + periodic * torch.linspace(0, 1, n)[:, None, None]
    W_in = torch.randn(n, 20, D_MLP)
    fig = modular_weights_figure(steps, W_E, W_in, max_frames=10, max_columns=8)
    _check_slider(fig, 10)
    assert len(fig.data) == 2
    assert np.asarray(fig.data[0].z).shape == (P, 8)  # columns capped
    # the embedding panel is the embedding in the final principal basis: same Gram matrix
    E = W_E[-1].double().numpy()
    z = np.asarray(fig.data[0].z, dtype=np.float64)  # initial frame = last step
    _, sv, _ = np.linalg.svd(E)
    np.testing.assert_allclose(np.linalg.norm(z, axis=0), sv[:8], rtol=1e-4)
    assert np.asarray(fig.data[1].z).shape == (P, 8)
    assert all(t.zmid == 0 for t in fig.data)
    assert len(fig.frames[0].data) == 2 and list(fig.frames[0].traces) == [0, 1]
    # the fixed cos/sin embedding model: no embedding panel, only the neuron inputs
    from mechgrok.models import cossin_embedding

    fig2 = modular_weights_figure(
        steps, None, torch.randn(n, 2, 5), fixed_embedding=cossin_embedding(P, 1), max_frames=5
    )
    assert len(fig2.data) == 1 and np.asarray(fig2.data[0].z).shape == (P, 5)
    with pytest.raises(ValueError):
        modular_weights_figure(steps, None, None)


def test_fourier_figures(steps, events):
    n, K = len(steps), P // 2
    norms = torch.rand(n, K)
    norms[:, 2] += torch.linspace(0, 5, n)
    fig = fourier_spectrum_figure(steps, {"embedding": norms, "logits": norms * 2}, [3])
    assert len(fig.data) == 2 and fig.data[0].type == "heatmap"
    z = np.asarray(fig.data[0].z)
    assert z.shape == (K, n - 1)  # frequency x step (step 0 left out of the log axis)
    np.testing.assert_allclose(z.sum(0), 1, rtol=1e-5)  # normalised per checkpoint
    assert "★3" in fig.layout.yaxis.ticktext
    fig2 = key_frequency_norms_figure(steps, norms, [3], events=events)
    assert fig2.data[0].name == "k = 3" and len(fig2.data) == 3
    t = {
        "progress/train_loss": torch.rand(n) + 0.1,
        "progress/test_loss": torch.rand(n) + 1,
        "progress/restricted_loss": torch.rand(n),
        "progress/excluded_loss": torch.rand(n) + 2,
        "progress/sum_sq_weights": torch.rand(n) * 100,
        "fourier/sparsity": torch.rand(n),
    }
    fig3 = progress_measures_figure(steps, t, events=events)
    assert len(fig3.data) == 6 and fig3.layout.yaxis.type == "log"
    assert fig3.layout.yaxis2.range is not None and fig3.layout.yaxis3.range is not None


def test_neuron_circles(steps, events):
    n = len(steps)
    phase = torch.rand(n, 5) * 2 * torch.pi
    norm = torch.linspace(0.1, 2, n)[:, None].expand(n, 5)
    fig = neuron_circles_figure(
        steps,
        norm * torch.cos(phase),
        norm * torch.sin(phase),
        freq=torch.ones(n, 5),
        spread=torch.linspace(0, 1, n),
        norm_cv=torch.linspace(1, 0, n),
        max_frames=15,
        events=events,
    )
    names = _check_slider(fig, 15)
    assert len(fig.frames[0].data) == 3
    # axes pinned to the largest norm over the frames, equal aspect
    assert fig.layout.xaxis.range[1] == pytest.approx(2 * 1.12, rel=1e-3)
    assert fig.layout.yaxis.scaleanchor == "x"
    # the step marker follows the slider
    marker_idx = fig.frames[0].traces[-1]
    assert fig.data[marker_idx].name == "slider step"
    assert fig.frames[0].data[2].x[0] != fig.frames[-1].data[2].x[0]
    assert names[-1] == f"step {int(steps[-1])}"


@pytest.fixture
def sweep_table():
    rows = []
    rng = np.random.default_rng(0)
    for wd in (1e-3, 1e-2, 1e-1, 1.0):
        for width in (16, 32, 64):
            for seed in (0, 1):
                phase = (
                    "memorisation"
                    if wd < 5e-3
                    else "confusion"
                    if wd >= 1
                    else "grokking"
                    if width < 64
                    else "comprehension"
                )
                gen = None if phase in ("memorisation", "confusion") else int(rng.integers(100, 5000))
                rows.append(
                    {
                        "weight_decay": wd,
                        "d_mlp": width,
                        "seed": seed,
                        "phase": phase,
                        "memorised_step": 50,
                        "generalised_step": gen,
                        "total_steps": 6000,
                    }
                )
    return rows


def test_phase_map_and_steps(sweep_table):
    import pandas as pd

    df = pd.DataFrame(sweep_table)
    for table in (df, sweep_table, {k: df[k].tolist() for k in df.columns}):
        fig = phase_map_figure(table)
        assert fig.layout.xaxis.title.text == "weight_decay" and fig.layout.xaxis.type == "log"
        assert fig.layout.yaxis.title.text == "d_mlp"
        by_name = {t.name.split(" (")[0]: len(t.x) for t in fig.data}
        assert by_name == {"comprehension": 4, "grokking": 8, "memorisation": 6, "confusion": 6}
        assert fig.data[1].text[0].startswith("weight_decay: 0.01<br>d_mlp: 16<br>")
    fig2 = steps_to_generalise_figure(df)
    never = [t for t in fig2.data if t.marker.symbol == "x"]
    assert sum(len(t.x) for t in never) == 12 * 2  # one panel per swept parameter
    assert fig2.layout.yaxis.type == "log"
    with pytest.raises(ValueError, match="two swept parameters"):
        phase_map_figure(df[df.d_mlp == 16].drop(columns=["d_mlp"]))


def test_render_html_embeds_plotly_once(steps, metrics, events):
    n = len(steps)
    figs = [
        training_curves_figure(metrics, events),
        parity_weights_figure(steps, torch.randn(n, N_BITS, D_MLP), [0], max_frames=8),
        neuron_circles_figure(steps, torch.randn(n, 5), torch.randn(n, 5), max_frames=8),
    ]
    text = render_html(
        "t <x>", [Section(f"fig {i}", f) for i, f in enumerate(figs)] + [Section("text only", None, "hello")]
    )
    # plotly.js inlined exactly once, no CDN / network reference
    assert text.count("Plotly.newPlot(") == 3
    assert len(re.findall(r"\* plotly\.js v\d", text)) == 1
    assert text.count('<script type="text/javascript">') == 1
    assert "<script src=" not in text
    head, _, rest = text.partition("</script></head>")  # plotly.js itself names URLs it never fetches here
    assert "plotly.js v" in head and "https://" not in rest.replace("https://plotly.com", "")
    assert "t &lt;x&gt;" in text
    assert text.count('class="plotly-graph-div"') == 3
    assert "Plotly.addFrames" in text

"""The report of one run: header (config, events, classification) and one section per figure."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from .._threads import with_threads
from ..config import RunConfig
from ..layout import REPORT_FILES
from ..store import Run, StoreError, Trajectory
from ._common import DEFAULT_MAX_FRAMES, PHASE_COLORS, event_steps, frame_indices
from .figures import (
    bit_dependence_figure,
    fourier_spectrum_figure,
    key_frequency_norms_figure,
    modular_weights_figure,
    neuron_circles_figure,
    parity_weights_figure,
    progress_measures_figure,
    prune_now_accuracy_figure,
    training_curves_figure,
)
from .html import Section, html_table, write_html
from .llc import llc_figure, llc_traces_figure
from .stability import stability_figure

__all__ = ["REPORT_FILE", "run_sections", "run_header_html", "write_run_report"]

REPORT_FILE = REPORT_FILES["run"]
"""File name of a run's report inside its run folder."""


def _events(run: Run, analysis: Any, phase_rule: str | None = None) -> dict[str, Any]:
    if analysis is not None and "events" in analysis.records:
        return dict(analysis.records["events"])
    from ..probes.events import detect_events, loss_scale_of

    return detect_events(run.metrics(), rule=phase_rule or "accuracy", loss_scale=loss_scale_of(run.config)).to_dict()


def _describe_task(cfg) -> str:
    t, m = cfg.task, cfg.model
    if t.kind == "parity":
        task = (
            f"sparse parity of bits {list(t.relevant_bits)} in {t.n_bits}-bit strings, {t.n_train:,} training strings"
        )
    else:
        task = (
            f"(a {dict(add='+', sub='−', mul='×', div='÷')[t.op]} b) mod {t.p}, {t.pairs} pairs, "
            f"{t.train_fraction:.0%} for training"
        )
    sizes = {
        "mlp": f"d_model {m.d_model}, {m.d_mlp} neurons" + (", tied embedding" if m.tied_embed else ""),
        "cossin_mlp": f"fixed cos/sin embedding (k={m.frequency}), {m.d_mlp} neurons",
        "parity_mlp": f"{m.d_mlp} neurons, {m.n_out} output logit(s)",
        "transformer": f"1 layer, d_model {m.d_model}, {m.n_heads} heads, d_mlp {m.d_mlp}",
    }.get(m.kind, f"d_model {m.d_model}")
    return f"{task}; {m.kind} ({sizes})"


def run_header_html(run: Run, events: dict[str, Any], analysis: Any = None) -> str:
    """Summary block of a run: classification, events, optimiser settings, full config."""
    cfg = run.config
    o = cfg.optim
    phase = events.get("phase", "?")
    color = PHASE_COLORS.get(phase, "#555")
    summary = (analysis.records.get("summary") if analysis is not None else None) or ""
    if analysis is None:
        from ..probes.events import GrokEvents

        try:  # without an analysis the events' own description says what is (not) known
            summary = GrokEvents(**events).describe() + "."
        except TypeError:
            summary = ""
    ev_rows = [(label, step) for label, step, _ in event_steps(events)]
    ev_rows += [
        ("phase rule", events.get("rule", "accuracy")),
        ("lag (generalised − memorised)", events.get("lag")),
        ("ratio", events.get("ratio")),
        ("final train accuracy", events.get("final_train_acc")),
        ("final test accuracy", events.get("final_test_acc")),
    ]
    for key, value in (events.get("extra") or {}).items():
        if not key.endswith("_step") and isinstance(value, (int, float, str)) and not isinstance(value, bool):
            ev_rows.append((key.replace("_", " "), value))
    if analysis is not None and analysis.records.get("key_frequencies"):
        ev_rows.append(("key frequencies", ", ".join(map(str, analysis.records["key_frequencies"]))))
    wd = f"{o.weight_decay:g}" + (f", schedule {[list(x) for x in o.wd_schedule]}" if o.wd_schedule else "")
    settings = {
        "task / model": _describe_task(cfg),
        "optimiser": f"AdamW lr {o.lr:g}, betas {list(o.betas)}, weight decay {wd}"
        + (f", L1 {o.l1:g}" if o.l1 else "")
        + (f", batch {o.batch_size}" if o.batch_size else ", full batch"),
        "training": f"{cfg.train.steps:,} steps, seed {cfg.train.seed}, {len(run.steps)} checkpoints",
        "versions": ", ".join(
            f"{k} {v}" for k, v in run.versions.items() if k in ("mechgrok", "torch", "transformer_lens")
        ),
        "run folder": str(run.path),
    }
    never_parts = [f"{label} at step {step:,}" for label, step, _ in event_steps(events)]
    return (
        f'<section><div class="summary"><span class="phase" style="background:{color}">{html.escape(phase)}</span> '
        f"{html.escape(', '.join(never_parts) or 'no events')}</div>"
        + (f"<p>{html.escape(summary)}</p>" if summary else "")
        + '<div class="grid"><div><h3>events</h3>'
        + html_table(ev_rows)
        + "</div>"
        + "<div><h3>settings</h3>"
        + html_table(settings)
        + "</div></div>"
        + "<details><summary>full config</summary>"
        + f"<pre>{html.escape(json.dumps(cfg.to_dict(), indent=2))}</pre></details>"
        + "</section>"
    )


def _picked_trajectory(run: Run, events: dict[str, Any], max_frames: int):
    steps = run.steps
    picked = frame_indices(steps, max_frames, [s for _, s, _ in event_steps(events)])
    return run.trajectory(steps=[steps[i] for i in picked], errors="warn")


def run_sections(
    run: Run, analysis: Any = None, *, max_frames: int = DEFAULT_MAX_FRAMES, phase_rule: str | None = None
) -> list[Section]:
    """The figures of a run's report, chosen by its task; probe figures need ``analysis``."""
    cfg = run.config
    metrics = run.metrics()
    events = _events(run, analysis, phase_rule)
    sections = [
        Section(
            "Training curves",
            training_curves_figure(metrics, events, title=f"{cfg.name}: loss and accuracy"),
            "Loss and accuracy on a log-step axis. Dashed lines: detected events; green shading: weight decay "
            "(darker = stronger).",
            "curves",
        )
    ]
    tensors = analysis.tensors if analysis is not None else {}
    steps = analysis.steps if analysis is not None else None
    traj = _picked_trajectory(run, events, max_frames) if run.steps else None
    keys = list(analysis.records.get("key_frequencies", [])) if analysis is not None else []
    if cfg.task.kind == "parity":
        sections += _parity_sections(cfg, traj, steps, tensors, metrics, events, max_frames)
    elif cfg.task.kind in ("group", "custom"):
        sections += _group_sections(analysis, steps, tensors, events)
    else:
        sections += _modular_sections(cfg, traj, steps, tensors, keys, events, max_frames)
    return sections + _llc_sections(analysis, steps, tensors, events) + _stability_sections(cfg, steps, tensors, events)


def _stability_sections(cfg: RunConfig, steps: Any, tensors: dict[str, Any], events: dict[str, Any]) -> list[Section]:
    """Softmax collapse, gradient-weight alignment and logit norm, when the analysis has them."""
    if "stability/collapse_fraction" not in tensors:
        return []
    oc = cfg.optim
    loss = f"{'StableMax' if oc.loss == 'stablemax' else 'softmax'} in {oc.loss_dtype}"
    return [
        Section(
            "Numerical stability",
            stability_figure(
                steps,
                tensors["stability/collapse_fraction"],
                tensors["stability/alignment"],
                tensors["stability/logit_norm"],
                events=events,
                loss=loss,
            ),
            "Softmax collapse (Prieto et al. 2025): training samples whose loss is exactly zero in the run's loss "
            "precision, so their label's gradient is zero; cosine between -grad and the weights (near 1: the update "
            "mostly scales the weights up, naive loss minimisation); mean norm of the logits.",
            "stability",
        )
    ]


def _llc_sections(analysis: Any, steps: Any, tensors: dict[str, Any], events: dict[str, Any]) -> list[Section]:
    """The local learning coefficient over training and its chains, when the analysis has it."""
    if "llc/llc" not in tensors:
        return []
    info = analysis.records.get("llc") or {}
    options = (analysis.records.get("options") or {}).get("llc") or {}
    flagged = tensors["llc/llc_negative"].any(-1) | tensors["llc/llc_diverged"].any(-1)
    return [
        Section(
            "Local learning coefficient",
            llc_figure(steps, tensors["llc/llc"], tensors["llc/llc_std"], flagged=flagged, events=events),
            "SGLD estimate of the loss landscape's degeneracy at each checkpoint (Lau et al. 2023), band: spread "
            f"over chains; n*beta {info.get('nbeta', float('nan')):.4g}, epsilon {options.get('epsilon')}, gamma "
            f"{options.get('gamma')}. Expected to rise while the network memorises and fall as it generalises; red "
            "crosses: a chain fell below the checkpoint's loss (not a minimum) or blew up (step too large).",
            "llc",
        ),
        Section(
            "LLC chains",
            llc_traces_figure(
                steps,
                tensors["llc/llc_trace"],
                tensors["llc/llc_init_loss"],
                nbeta=float(info.get("nbeta", 1.0)),
                burnin=int(options.get("burnin", 0)),
            ),
            "n*beta (L(w) - L(w*)) along each chain at the first, middle and last checkpoint; the estimate is its mean "
            "over the draws after the shaded burn-in. Flat chains above 0 are what a good estimate looks like.",
            "llc-chains",
        ),
    ]


def _parity_sections(
    cfg: RunConfig,
    traj: Trajectory | None,
    steps: Any,
    tensors: dict[str, Any],
    metrics: dict[str, Any],
    events: dict[str, Any],
    max_frames: int,
) -> list[Section]:
    """First-layer weights over training, dependence on each bit, the prune-now check."""
    sections: list[Section] = []
    if traj is not None:
        sections.append(
            Section(
                "First-layer weights",
                parity_weights_figure(
                    traj.steps,
                    traj.params["blocks.0.mlp.W_in"],
                    cfg.task.relevant_bits,
                    max_frames=max_frames,
                    events=events,
                ),
                "Each row is a hidden neuron, each column an input bit (relevant bits starred and outlined). "
                "Move the slider: weights on irrelevant bits decay away "
                "while a few neurons keep reading the relevant bits.",
                "weights",
            )
        )
    bits = {k: tensors[f"bits/{k}"] for k in ("weight_norm", "grad_attr", "flip_sensitivity") if f"bits/{k}" in tensors}
    if bits:
        relevant = tensors.get("bits/relevant", list(cfg.task.relevant_bits))
        titles = {
            "weight_norm": "first-layer weight norm",
            "grad_attr": "input-gradient attribution",
            "flip_sensitivity": "bit-flip sensitivity",
        }
        sections.append(
            Section(
                "Dependence on each bit",
                bit_dependence_figure(
                    steps,
                    {titles[k]: v for k, v in bits.items()},
                    relevant,
                    events=events,
                    ratio=tensors.get("bits/irrelevant_weight_ratio"),
                    prune_threshold=(events.get("extra") or {}).get("prune_threshold"),
                ),
                "How much the network depends on each input bit, three ways. "
                "Irrelevant bits (grey) must fall to zero before the network can generalise. "
                "Last row: the pruning rule - the irrelevant bits count as pruned once their largest "
                "weight stays below the threshold times the largest relevant-bit weight.",
                "bits",
            )
        )
    if "bits/prune_now_acc" in tensors:
        sections.append(
            Section(
                "Prune-now causal check",
                prune_now_accuracy_figure(steps, tensors["bits/prune_now_acc"], metrics, events=events),
                "At every checkpoint, a copy of the network with its irrelevant-bit weights zeroed "
                "is evaluated on the test set. Where this curve is high long before the real test accuracy, "
                "pruning alone is what the run was waiting for.",
                "prune",
            )
        )
    return sections


def _modular_sections(
    cfg: RunConfig,
    traj: Trajectory | None,
    steps: Any,
    tensors: dict[str, Any],
    keys: list[int],
    events: dict[str, Any],
    max_frames: int,
) -> list[Section]:
    """Weights over the operand, Fourier spectra, key-frequency norms, progress measures, circles."""
    sections: list[Section] = []
    if traj is not None:
        W_in = traj.params.get("blocks.0.mlp.W_in")
        if "embed.W_E" in traj.params:
            fig = modular_weights_figure(
                traj.steps, traj.params["embed.W_E"], W_in, p=cfg.task.p, max_frames=max_frames, events=events
            )
        elif cfg.model.kind == "cossin_mlp":
            from ..models import cossin_embedding

            fig = modular_weights_figure(
                traj.steps,
                None,
                W_in,
                fixed_embedding=cossin_embedding(cfg.task.p, cfg.model.frequency, cfg.model.embed_norm),
                max_frames=max_frames,
                events=events,
            )
        else:
            fig = None
        if fig is not None:
            sections.append(
                Section(
                    "Weights over the operand",
                    fig,
                    "Rows: the operand a = 0..p−1. Noisy at first; "
                    "after grokking each column becomes a wave of a few frequencies.",
                    "weights",
                )
            )
    spectra = {
        name: tensors[k]
        for k, name in (("fourier/embed_freq_norms", "embedding"), ("fourier/logit_freq_norms", "logits"))
        if k in tensors
    }
    if spectra:
        sections.append(
            Section(
                "Fourier spectrum over training",
                fourier_spectrum_figure(steps, spectra, keys),
                "Share of each frequency in the embedding and the logits at every checkpoint (★ = key frequencies).",
                "spectrum",
            )
        )
    if "fourier/embed_freq_norms" in tensors:
        sections.append(
            Section(
                "Key-frequency norms",
                key_frequency_norms_figure(steps, tensors["fourier/embed_freq_norms"], keys, events=events),
                "Embedding norm of each key frequency against the other frequencies.",
                "keyfreq",
            )
        )
    if any(k.startswith("progress/") for k in tensors):
        sections.append(
            Section(
                "Progress measures",
                progress_measures_figure(steps, tensors, events=events),
                "Restricted loss keeps only the key-frequency part of the logits; "
                "excluded loss removes it (on the training set). "
                "Restricted loss falls before the test loss does: the circuit forms before it shows.",
                "progress",
            )
        )
    if "circles/cos" in tensors:
        sections.append(
            Section(
                "Neuron circles",
                neuron_circles_figure(
                    steps,
                    tensors["circles/cos"],
                    tensors["circles/sin"],
                    freq=tensors.get("circles/freq"),
                    spread=tensors.get("circles/phase_spread"),
                    norm_cv=tensors.get("circles/norm_cv"),
                    max_frames=max_frames,
                    events=events,
                ),
                "Each point is a neuron at (cos, sin) of its dominant frequency; distance from the centre is its norm. "
                "After training the neurons sit evenly around a circle with similar norms.",
                "circles",
            )
        )
    return sections


def _group_sections(analysis: Any, steps: Any, tensors: dict[str, Any], events: dict[str, Any]) -> list[Section]:
    """Group runs: the irrep spectrum (embedding, logits) and the progress measures with respect
    to the key irreps; custom tasks: the progress figure's losses and weight norm only."""
    from .groups import irrep_spectrum_figure

    sections: list[Section] = []
    group = analysis.records.get("group") if analysis is not None else None
    spectra = {
        name: tensors[k]
        for k, name in (("irreps/embed_irrep_norms", "embedding"), ("irreps/logit_irrep_norms", "logits"))
        if k in tensors
    }
    if spectra and group:
        names = [r["name"] for r in group["irreps"]]
        keys = [k["name"] for k in analysis.records.get("key_irreps", [])]
        sections.append(
            Section(
                "Irrep spectrum over training",
                irrep_spectrum_figure(
                    steps, spectra, names, keys, dims=[r["dim"] for r in group["irreps"]], events=events
                ),
                f"Share of each irreducible representation of {group['name']} in the embedding and the logits at every "
                "checkpoint (the group Fourier transform; ★ = key irreps). Dashed lines: detected events.",
                "irreps",
            )
        )
    if any(k.startswith("progress/") for k in tensors):
        sections.append(
            Section(
                "Progress measures",
                progress_measures_figure(
                    steps, tensors, events=events, title="Progress measures (key irreps)" if group else "Losses"
                ),
                "Restricted loss keeps only the key irreps' part of the logits; "
                "excluded loss removes it (on the training set)."
                if group
                else "Losses and weight norm at every checkpoint.",
                "progress",
            )
        )
    return sections


_REUSED_OPTIONS = (
    "max_checkpoints",
    "n_eval",
    "prune_threshold",
    "sensitivity_tol",
    "min_gap",
    "min_explained",
    "circles",
    "circle_min_frac",
    "phase_rule",
)


def _load_analysis(run: Run, compute: bool, phase_rule: str | None = None) -> Any:
    """The run's stored analysis if it is current (made from the run as it is now, with
    ``phase_rule`` when given); otherwise computed (and stored) again with the stored analysis's
    options when ``compute`` is set, else None - a stale analysis is never drawn."""
    import warnings

    try:
        from ..analysis import analysis_is_current, analyze, load_analysis
    except ImportError:  # probes without the analysis layer: report the metrics and weights only
        return None
    wanted = {"phase_rule": phase_rule} if phase_rule else None
    try:
        stored = load_analysis(run.path)
    except (StoreError, FileNotFoundError, OSError):
        stored = None
    options: dict[str, Any] = {}
    if stored is not None:
        current, why = analysis_is_current(stored, run, options=wanted)
        if current:
            return stored
        if not compute:
            warnings.warn(f"{run.path}: the stored analysis is out of date ({why}); reporting without it", stacklevel=2)
            return None
        had = stored.records.get("options")
        options = {k: had[k] for k in _REUSED_OPTIONS if isinstance(had, dict) and k in had}
    if not compute:
        return None
    options.update(wanted or {})
    return analyze(run, **options)


@with_threads  # adds threads=: intra-op threads for the analysis it may compute
def write_run_report(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    analysis: Any = None,
    compute: bool = True,
    max_frames: int = DEFAULT_MAX_FRAMES,
    phase_rule: str | None = None,
) -> Path:
    """Write ``RUN/report.html`` (or ``out``): one self-contained offline HTML file.

    ``analysis``: a probes ``Analysis`` for the run; by default the stored one is loaded if it is
    current (see :func:`~mechgrok.analysis.analysis_is_current`), or computed when there is
    none or it is stale and ``compute`` is true. ``phase_rule``: ``"accuracy"`` / ``"loss"``
    (default: the stored analysis's, else accuracy). Returns the path written.
    """
    run = Run.open(run_dir)
    if not run.steps and not run.metrics_rows():
        raise StoreError(f"{run.path}: run has no metrics or checkpoints yet; nothing to report")
    if analysis is None:
        analysis = _load_analysis(run, compute, phase_rule)
    events = _events(run, analysis, phase_rule)
    sections = run_sections(run, analysis, max_frames=max_frames, phase_rule=phase_rule)
    header = run_header_html(run, events, analysis)
    out = Path(out) if out is not None else run.path / REPORT_FILE
    return write_html(
        out, f"mechgrok report: {run.config.name}", sections, header_html=header, subtitle=_describe_task(run.config)
    )

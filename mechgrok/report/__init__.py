"""Reports: figure builders (``*_figure``: probe results in, ``plotly.graph_objects.Figure`` out;
e.g. ``neuron_circles_figure`` draws what the probe ``mechgrok.neuron_circles`` returns) and
self-contained offline HTML reports for a run (``write_run_report``) or a sweep
(``write_sweep_report``)."""

from ._common import frame_indices
from .figures import (
    bit_dependence_figure,
    fourier_spectrum_figure,
    key_frequency_norms_figure,
    modular_weights_figure,
    neuron_circles_figure,
    parity_weights_figure,
    progress_measures_figure,
    prune_now_accuracy_figure,
    slider_heatmaps_figure,
    training_curves_figure,
)
from .groups import irrep_spectrum_figure
from .html import Section, render_html, write_html
from .llc import llc_calibration_figure, llc_figure, llc_traces_figure
from .run import REPORT_FILE, run_sections, write_run_report
from .stability import stability_figure
from .sweep import phase_map_figure, steps_to_generalise_figure, sweep_sections, write_sweep_report

__all__ = [
    "frame_indices",
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
    "llc_figure",
    "llc_traces_figure",
    "llc_calibration_figure",
    "stability_figure",
    "irrep_spectrum_figure",
    "phase_map_figure",
    "steps_to_generalise_figure",
    "Section",
    "render_html",
    "write_html",
    "REPORT_FILE",
    "run_sections",
    "write_run_report",
    "sweep_sections",
    "write_sweep_report",
]

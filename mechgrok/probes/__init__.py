"""Probes: analysis on checkpoints (Fourier, neuron circles, bit dependence, progress measures,
clock / pizza signatures, numerical stability, events). Every probe is a plain function of
checkpoints (a Trajectory) or a live model returning tensors / records; nothing here writes files
(the pipeline that runs them all and stores the results is :mod:`mechgrok.analysis`, importers of
other projects' files :mod:`mechgrok.importers`)."""

from .algorithms import (
    ALGORITHMS,
    algorithm_signatures,
    circularity,
    classify_algorithm,
    distance_irrelevance,
    gradient_symmetricity,
)
from .bits import bit_dependence, infer_relevant_bits, irrelevant_series, parity_events, prune_now_accuracy
from .circles import neuron_circles
from .events import PHASE_RULES, PHASES, GrokEvents, ModularEvents, ParityEvents, classify_phase, detect_events
from .fourier import (
    fourier_basis,
    fourier_over_training,
    frequency_norms,
    gini,
    key_frequencies,
    key_frequency_mask,
    neuron_frequency_energy,
    neuron_spectra,
)
from .irreps import irrep_progress_measures, irreps_over_training, key_irreps, planted_group_mlp
from .progress import modular_events, progress_measures
from .stability import stability_over_training
from .synthetic import cossin_solution, planted_modadd_mlp, planted_parity_mlp

__all__ = [
    "PHASES",
    "PHASE_RULES",
    "GrokEvents",
    "ParityEvents",
    "ModularEvents",
    "classify_phase",
    "detect_events",
    # Fourier / progress / circles (modular arithmetic)
    "fourier_basis",
    "frequency_norms",
    "gini",
    "key_frequency_mask",
    "key_frequencies",
    "fourier_over_training",
    "neuron_spectra",
    "neuron_frequency_energy",
    "progress_measures",
    "stability_over_training",
    "modular_events",
    "neuron_circles",
    # groups: irreps (the group Fourier transform)
    "irreps_over_training",
    "key_irreps",
    "irrep_progress_measures",
    "planted_group_mlp",
    # clock or pizza (Zhong et al.)
    "algorithm_signatures",
    "distance_irrelevance",
    "gradient_symmetricity",
    "circularity",
    "classify_algorithm",
    "ALGORITHMS",
    # bits (sparse parity)
    "bit_dependence",
    "prune_now_accuracy",
    "parity_events",
    "irrelevant_series",
    "infer_relevant_bits",
    # models with known mechanisms (ground truth)
    "planted_modadd_mlp",
    "cossin_solution",
    "planted_parity_mlp",
]

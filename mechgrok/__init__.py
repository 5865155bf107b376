"""mechgrok: train small networks into grokking and explain the transition from checkpoints.

The whole public API is re-exported here.
"""

__version__ = "0.1.0"

from . import report
from .analysis import Analysis, analyze, load_analysis
from .config import ConfigError, ModelConfig, OptimConfig, RunConfig, TaskConfig, TrainConfig
from .demo import ensure_run
from .groups import FiniteGroup, finite_group
from .importers import import_chughtai_checkpoint, import_nanda_checkpoint, import_zhong_checkpoint
from .models import build_model
from .presets import describe_preset, preset, preset_names
from .probes import (
    ALGORITHMS,
    PHASE_RULES,
    PHASES,
    GrokEvents,
    ModularEvents,
    ParityEvents,
    algorithm_signatures,
    bit_dependence,
    circularity,
    classify_algorithm,
    classify_phase,
    detect_events,
    distance_irrelevance,
    fourier_basis,
    fourier_over_training,
    gradient_symmetricity,
    irrep_progress_measures,
    irreps_over_training,
    key_frequencies,
    key_irreps,
    modular_events,
    neuron_circles,
    parity_events,
    progress_measures,
    prune_now_accuracy,
    stability_over_training,
)
from .probes.llc import LLCConfig, llc, llc_calibration
from .report import write_run_report, write_sweep_report
from .store import CheckpointError, Run, StoreError, Trajectory
from .sweep import EngineConfig, Sweep, SweepSpec, run_sweep, train_batch
from .tasks import Dataset, make_dataset
from .train import TrainResult, loss_and_accuracy, resume, train

# The user's API: what a notebook or an analysis script calls. Building blocks (model classes,
# schedules, optimiser tricks, vocabularies, the demo job, figure builders) stay importable from
# their modules (mechgrok.models, mechgrok.config, mechgrok.train, mechgrok.tasks, mechgrok.demo,
# mechgrok.report, mechgrok.probes).
__all__ = [
    "__version__",
    # configs and presets
    "ConfigError",
    "RunConfig",
    "TaskConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "preset",
    "preset_names",
    "describe_preset",
    # data, models, training
    "Dataset",
    "make_dataset",
    "build_model",
    "train",
    "resume",
    "TrainResult",
    "loss_and_accuracy",
    # run folders
    "Run",
    "Trajectory",
    "StoreError",
    "CheckpointError",
    "ensure_run",
    # probes and events
    "fourier_basis",
    "fourier_over_training",
    "key_frequencies",
    "progress_measures",
    "stability_over_training",
    "neuron_circles",
    "bit_dependence",
    "prune_now_accuracy",
    "detect_events",
    "classify_phase",
    "parity_events",
    "modular_events",
    "GrokEvents",
    "ParityEvents",
    "ModularEvents",
    "PHASES",
    "PHASE_RULES",
    # finite groups (Chughtai et al.): groups, irreps, the irrep probes
    "finite_group",
    "FiniteGroup",
    "irreps_over_training",
    "key_irreps",
    "irrep_progress_measures",
    # clock or pizza (Zhong et al.)
    "algorithm_signatures",
    "distance_irrelevance",
    "gradient_symmetricity",
    "circularity",
    "classify_algorithm",
    "ALGORITHMS",
    # the local learning coefficient (developmental interpretability: SGLD over checkpoints)
    "LLCConfig",
    "llc",
    "llc_calibration",
    # the whole analysis of a run, importers
    "Analysis",
    "analyze",
    "load_analysis",
    "import_nanda_checkpoint",
    "import_zhong_checkpoint",
    "import_chughtai_checkpoint",
    # reports (figure builders: mechgrok.report.*_figure)
    "report",
    "write_run_report",
    "write_sweep_report",
    # sweeps: many models at once (batched engine), grids, sweep folders
    "EngineConfig",
    "SweepSpec",
    "Sweep",
    "run_sweep",
    "train_batch",
]

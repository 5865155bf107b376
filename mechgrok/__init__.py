"""mechgrok: train small networks into grokking and explain the transition from checkpoints.

The whole public API is re-exported here.
"""

__version__ = "0.1.0"

from .config import (
    ConfigError,
    ModelConfig,
    OptimConfig,
    RunConfig,
    TaskConfig,
    TrainConfig,
    parse_schedule,
    schedule_value,
)
from .models import (
    CosSinMLP,
    HookedConfig,
    ModAddMLP,
    OneLayerTransformer,
    ParityMLP,
    RecurrentModel,
    build_model,
    cossin_embedding,
)
from .probes import (
    PHASE_RULES,
    PHASES,
    GrokEvents,
    bit_dependence,
    classify_phase,
    detect_events,
    fourier_basis,
    fourier_over_training,
    key_frequencies,
    neuron_circles,
    parity_events,
    progress_measures,
    prune_now_accuracy,
)
from .analysis import Analysis, analyze, load_analysis
from .importers import import_nanda_checkpoint
from . import report
from .demo import ensure_run, run_demo
from .presets import PRESETS, describe_preset, preset, preset_names
from .report import write_run_report, write_sweep_report
from .store import CheckpointError, Run, StoreError, Trajectory
from .sweep import EngineConfig, Sweep, SweepSpec, run_sweep, train_batch
from .tasks import Dataset, ModularVocab, encode_pairs, make_dataset, modular_table
from .train import TrainResult, grokfast_update, loss_and_accuracy, train, weight_norm

__all__ = [
    "__version__",
    # config
    "ConfigError",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "TaskConfig",
    "TrainConfig",
    "parse_schedule",
    "schedule_value",
    # tasks
    "Dataset",
    "ModularVocab",
    "encode_pairs",
    "make_dataset",
    "modular_table",
    # models
    "CosSinMLP",
    "HookedConfig",
    "ModAddMLP",
    "OneLayerTransformer",
    "ParityMLP",
    "RecurrentModel",
    "build_model",
    "cossin_embedding",
    # training and store
    "TrainResult",
    "train",
    "loss_and_accuracy",
    "weight_norm",
    "grokfast_update",
    "Run",
    "Trajectory",
    "StoreError",
    "CheckpointError",
    # probes
    "PHASES",
    "PHASE_RULES",
    "GrokEvents",
    "classify_phase",
    "detect_events",
    "fourier_basis",
    "fourier_over_training",
    "key_frequencies",
    "progress_measures",
    "neuron_circles",
    "bit_dependence",
    "prune_now_accuracy",
    "parity_events",
    "Analysis",
    "analyze",
    "load_analysis",
    "import_nanda_checkpoint",
    # reports (figure builders: mechgrok.report.*) and the main job
    "report",
    "write_run_report",
    "write_sweep_report",
    "ensure_run",
    "run_demo",
    # sweeps: many models at once (batched engine), grids, sweep folders
    "EngineConfig",
    "SweepSpec",
    "Sweep",
    "run_sweep",
    "train_batch",
    # presets
    "PRESETS",
    "preset",
    "preset_names",
    "describe_preset",
]

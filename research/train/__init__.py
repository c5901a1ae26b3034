"""Training: configs and presets, the optimizer, checkpoints, sharding and the loop.

    import research.train as rt
    cfg = rt.get_preset("mqar-tiny").override("model.mixer=deltanet", "train.steps=500")
    summary = rt.run(cfg, "runs/mqar-deltanet")        # same function as the CLI
    model, cfg, step = rt.restore_model("runs/mqar-deltanet")
"""

from research.train.checkpoint import Checkpointer, CheckpointWarning
from research.train.config import (
    PRESETS,
    CheckpointConfig,
    Config,
    DataConfig,
    MeshConfig,
    OptimizerConfig,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    config_items,
    config_to_dict,
    get_preset,
    load_config,
    register_preset,
    save_config,
    valid_keys,
)
from research.train.distributed import initialize as initialize_distributed
from research.train.metrics import MetricsWriter, read_metrics
from research.train.optimizer import decay_mask, learning_rate_schedule, make_optimizer
from research.train.sharding import LOGICAL_AXIS_RULES, make_mesh, param_shardings
from research.train.trainer import TrainingDiverged, build_mesh, evaluate, restore_model, run
from research.train.workdir import WorkdirBusy, hold_workdir

__all__ = [
    "LOGICAL_AXIS_RULES", "PRESETS", "CheckpointConfig", "CheckpointWarning", "Checkpointer",
    "Config", "DataConfig", "MeshConfig", "MetricsWriter", "OptimizerConfig", "TrainConfig",
    "TrainingDiverged", "WorkdirBusy", "apply_overrides", "build_mesh", "config_from_dict",
    "config_items", "config_to_dict", "decay_mask", "evaluate", "get_preset", "hold_workdir",
    "initialize_distributed", "learning_rate_schedule", "load_config", "make_mesh",
    "make_optimizer", "param_shardings", "read_metrics", "register_preset", "restore_model",
    "run", "save_config", "valid_keys",
]

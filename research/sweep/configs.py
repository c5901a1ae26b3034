"""Building blocks for sweep files: a full training config for a model on a synthetic task."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def task_config(model, task: str, task_args: Mapping[str, Any], *, steps: int,
                batch_size: int = 64, lr: float = 3e-3, warmup_steps: int | None = None,
                weight_decay: float = 0.1, train_examples: int = 100_000,
                eval_examples: int = 1_000, eval_batches: int = 8, seed: int = 0,
                checkpoint_every: int | None = None):
    """A `research.train.config.Config` training `model` (a research.ModelConfig) on task `task`
    (a class name in research.tasks, e.g. "MQAR") with `task_args`.

    AdamW with warmup (default: 10% of the steps, at most 100) and cosine decay, clipping 1.0;
    evaluation at the end on `eval_batches` batches of held-out examples; a checkpoint every
    `checkpoint_every` steps (default: a quarter of the run) and at the end; one process, every
    local device on the data axis.
    """
    from research.train.config import (
        CheckpointConfig,
        Config,
        DataConfig,
        MeshConfig,
        OptimizerConfig,
        TrainConfig,
    )
    if warmup_steps is None:
        warmup_steps = min(100, max(1, steps // 10))
    every = checkpoint_every or max(1, steps // 4)
    return Config(
        model=model,
        data=DataConfig(source="task", task=task, task_args=dict(task_args),
                        train_examples=train_examples, eval_examples=eval_examples,
                        batch_size=batch_size),
        optimizer=OptimizerConfig(lr=lr, warmup_steps=warmup_steps, clip_norm=1.0,
                                  weight_decay=weight_decay),
        train=TrainConfig(steps=steps, seed=seed, log_every=max(1, min(50, steps // 10)),
                          eval_every=0, eval_batches=eval_batches, progress=False),
        mesh=MeshConfig(data=-1, fsdp=1),
        checkpoint=CheckpointConfig(every=every, keep=2),
    )

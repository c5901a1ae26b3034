"""optax AdamW with warmup + cosine (or linear / constant), global-norm clipping and a weight-decay
mask that leaves norms, biases and gains (every parameter with fewer than 2 dimensions) alone."""

from __future__ import annotations

from typing import Any

import jax
import optax

from research.train.config import OptimizerConfig


def learning_rate_schedule(cfg: OptimizerConfig, total_steps: int) -> optax.Schedule:
    """Step -> learning rate: linear warmup from 0 over `warmup_steps`, then `cfg.schedule`
    ("cosine" or "linear" down to `min_lr_ratio * lr` at `total_steps`, or "constant")."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    peak, end = cfg.lr, cfg.lr * cfg.min_lr_ratio
    warmup = cfg.warmup_steps
    if cfg.schedule == "constant":
        if warmup == 0:
            return optax.constant_schedule(peak)
        return optax.join_schedules(
            [optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)], [warmup])
    if warmup >= total_steps:
        raise ValueError(f"warmup_steps must be < total steps for schedule {cfg.schedule!r}, "
                         f"got warmup_steps={warmup}, total_steps={total_steps}")
    if cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, peak, max(warmup, 0), total_steps, end)
    decay = optax.linear_schedule(peak, end, total_steps - warmup)
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def decay_mask(params: Any) -> Any:
    """Pytree of bools like `params`: True (decay) for parameters with >= 2 dimensions."""
    return jax.tree.map(lambda p: getattr(p, "ndim", 0) >= 2, params)


def make_optimizer(cfg: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
    """clip_by_global_norm(clip_norm) then AdamW(schedule, b1, b2, eps, weight_decay, mask).

    Gradient accumulation is done by the train step (micro-batches inside one jitted step), so
    every call of this transformation is one optimizer step.
    """
    parts = []
    if cfg.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    parts.append(optax.adamw(learning_rate_schedule(cfg, total_steps), b1=cfg.b1, b2=cfg.b2,
                             eps=cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask))
    return optax.chain(*parts)

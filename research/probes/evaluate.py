"""Evaluate a `research.LanguageModel` on a task source: loss, accuracy and task metrics.

    metrics = evaluate_task(model, task, num_examples=256, batch_size=32)
    # {"loss", "accuracy", "sequence_accuracy", "num_examples", "num_positions", ...}

- `accuracy`: fraction of `loss_mask` positions where the argmax logit equals the target;
- `sequence_accuracy`: fraction of examples with every masked position right;
- `RegularLanguages`: also "dfa_accuracy" (the greedy letter is a legal transition) and "dfa_tvd"
  (total variation distance to the uniform distribution over legal letters), evaluated on the
  task's test DFAs when it is given a train-split task (`split` is switched to "test");
- `ForgettingMQAR`: also "stale_rate" (fraction of queries answered with a value the key held
  before its last write).

Examples are indices `[start, start + num_examples)` of the task. Shapes: B batch, T time,
V vocabulary.
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from research.tasks import ForgettingMQAR, RegularLanguages, dfa_metrics

_FORWARD_CACHE: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def forward_fn(model):
    """A jitted `tokens int32 [B, T] -> logits float32 [B, T, V]` for `model` (cached per model).

    The parameters are captured by value when first called: rebuild after training further.
    """
    fn = _FORWARD_CACHE.get(model)
    if fn is None:
        graphdef, state = nnx.split(model)

        @jax.jit
        def _fwd(state, tokens):
            return nnx.merge(graphdef, state)(tokens)

        def fn(tokens):
            return _fwd(state, jnp.asarray(tokens, jnp.int32))

        _FORWARD_CACHE[model] = fn
    return fn


def predict_logits(model, tokens: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Logits of `model` for int tokens [N, T], run in batches: float32 [N, T, V] (numpy)."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [N, T], got shape {tokens.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    fwd = forward_fn(model)
    out = []
    for i in range(0, len(tokens), batch_size):
        chunk = tokens[i : i + batch_size]
        pad = batch_size - len(chunk)
        if pad:  # keep one compiled shape
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)])
        out.append(np.asarray(fwd(chunk))[: batch_size - pad])
    return np.concatenate(out)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    m = logits.max(-1, keepdims=True)
    return logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))


def evaluate_task(model, task, num_examples: int = 256, batch_size: int = 32,
                  start: int = 0) -> dict[str, float]:
    """Metrics of `model` on examples [start, start + num_examples) of `task` (see module doc).

    Args:
      model: a LanguageModel (or anything mapping int tokens [B, T] to logits [B, T, V]).
      task: a `research.tasks` source.
      num_examples: examples to score (clipped to the task's length).
      batch_size: forward batch.
      start: first example index.

    Returns a dict of floats.
    """
    if num_examples < 1:
        raise ValueError(f"num_examples must be >= 1, got {num_examples}")
    if isinstance(task, RegularLanguages) and task.split == "train":
        task = dataclasses.replace(task, split="test")
    n = min(num_examples, len(task) - start)
    if n < 1:
        raise ValueError(f"start={start} leaves no examples in a task of {len(task)}")
    idx = np.arange(start, start + n)
    batch = task.batch(idx)
    logits = predict_logits(model, batch["tokens"], batch_size)
    if logits.shape[-1] < task.vocab_size:
        raise ValueError(f"model vocabulary {logits.shape[-1]} is smaller than the task's "
                         f"vocab_size={task.vocab_size}")
    mask, targets = batch["loss_mask"], batch["targets"]
    logp = _log_softmax(logits.astype(np.float64))
    nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    pred = logits.argmax(-1)
    right = (pred == targets) & mask
    out = {
        "loss": float((nll * mask).sum() / mask.sum()),
        "accuracy": float(right.sum() / mask.sum()),
        "sequence_accuracy": float(np.mean(right.sum(1) == mask.sum(1))),
        "num_examples": int(n),
        "num_positions": int(mask.sum()),
    }
    if isinstance(task, RegularLanguages):
        ann = task.batch_annotations(idx)
        m = dfa_metrics(logits, ann["legal"], ann["eval_mask"])
        out["dfa_accuracy"], out["dfa_tvd"] = m["accuracy"], m["tvd"]
    if isinstance(task, ForgettingMQAR):
        stale = np.stack([task.stale_values(int(i)) for i in idx])  # [N, T, U + 1]
        hit = (stale == pred[..., None]).any(-1) & mask
        out["stale_rate"] = float(hit.sum() / mask.sum())
    return out

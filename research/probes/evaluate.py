"""Evaluate a `research.LanguageModel` on a task source: loss, accuracy and task metrics.

    metrics = evaluate_task(model, task, num_examples=256, batch_size=32)
    # {"loss", "accuracy", "sequence_accuracy", "num_examples", "num_positions", ...}

- `accuracy`: fraction of `loss_mask` positions where the argmax logit equals the target;
- `sequence_accuracy`: fraction of examples with every masked position right;
- `RegularLanguages`: also "dfa_accuracy" (the greedy letter is a legal transition) and "dfa_tvd"
  (total variation distance to the uniform distribution over legal letters), evaluated on the
  task's test DFAs when it is given a train-split task (`split` is switched to "test"); and the
  same two against the number of in-context examples: "dfa_accuracy@K" / "dfa_tvd@K" over the
  scored positions where K complete strings (separators, token `SEPARATOR`) precede the
  predicted letter in the example, i.e. the letter belongs to string K of the example, for the
  bins K = "0", "1", "2", "3" and "4+" (`DFA_BINS`; a 128-token example holds ~5 strings of
  mean length 25, so every bin is reached; a bin with no scored position is left out);
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

from research.tasks import ForgettingMQAR, RegularLanguages, dfa_metrics, stack
from research.tasks.regular_languages import NUM_LETTERS, SEPARATOR

# (name, lowest, highest) strings seen before the predicted letter; None: no upper bound.
DFA_BINS = (("0", 0, 0), ("1", 1, 1), ("2", 2, 2), ("3", 3, 3), ("4+", 4, None))

_FORWARD_CACHE: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def forward_fn(model):
    """A jitted `(tokens int32 [B, T], segment_ids int32 [B, T] | None, prefix_length int32 [B]
    | None) -> logits float32 [B, T, V]` for `model` (cached per model).

    The parameters are captured by value when first called: rebuild after training further.
    """
    fn = _FORWARD_CACHE.get(model)
    if fn is None:
        graphdef, state = nnx.split(model)

        @jax.jit
        def _fwd(state, tokens):
            return nnx.merge(graphdef, state)(tokens)

        @jax.jit
        def _fwd_seg(state, tokens, segment_ids):
            return nnx.merge(graphdef, state)(tokens, segment_ids=segment_ids)

        @jax.jit
        def _fwd_prefix(state, tokens, segment_ids, prefix_length):
            return nnx.merge(graphdef, state)(tokens, segment_ids=segment_ids,
                                              prefix_length=prefix_length)

        def fn(tokens, segment_ids=None, prefix_length=None):
            tokens = jnp.asarray(tokens, jnp.int32)
            if segment_ids is not None:
                segment_ids = jnp.asarray(segment_ids, jnp.int32)
            if prefix_length is not None and _uses_prefix(model):
                return _fwd_prefix(state, tokens, segment_ids, jnp.asarray(prefix_length, jnp.int32))
            if segment_ids is None:
                return _fwd(state, tokens)
            return _fwd_seg(state, tokens, segment_ids)

        _FORWARD_CACHE[model] = fn
    return fn


def _uses_prefix(model) -> bool:
    """Whether any layer of `model` reads a prompt prefix (the `jrt` mixer)."""
    return any(getattr(getattr(b, "mixer", None), "uses_prefix", False)
               for b in getattr(model, "blocks", ()))


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


def evaluate_task(model, task, num_examples: int = 256, batch_size: int = 32,
                  start: int = 0) -> dict[str, float]:
    """Metrics of `model` on examples [start, start + num_examples) of `task` (see module doc).

    Runs batch by batch (only [B, T] scores leave the device), so long sequences and large
    vocabularies fit.

    Args:
      model: a LanguageModel (or any nnx.Module mapping int tokens [B, T] to logits [B, T, V]).
      task: a `research.tasks` source, or any random-access source of examples
        {"tokens", "targets", "loss_mask"[, "segment_ids"]} (e.g. text windows).
      num_examples: examples to score (clipped to the task's length).
      batch_size: forward batch.
      start: first example index.

    Returns a dict of floats.
    """
    if num_examples < 1:
        raise ValueError(f"num_examples must be >= 1, got {num_examples}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(task, RegularLanguages) and task.split == "train":
        task = dataclasses.replace(task, split="test")
    n = min(num_examples, len(task) - start)
    if n < 1:
        raise ValueError(f"start={start} leaves no examples in a task of {len(task)}")
    fwd = forward_fn(model)
    vocab = getattr(task, "vocab_size", None)
    sums = {"nll": 0.0, "right": 0, "positions": 0, "seq_right": 0, "stale": 0,
            "dfa_n": 0, "dfa_acc": 0.0, "dfa_tvd": 0.0}
    bins = {name: {"n": 0, "acc": 0.0, "tvd": 0.0} for name, _, _ in DFA_BINS}
    for lo in range(start, start + n, batch_size):
        idx = np.arange(lo, min(lo + batch_size, start + n))
        batch = stack([task[int(i)] for i in idx])
        tokens, seg, prefix = batch["tokens"], batch.get("segment_ids"), batch.get("prefix_length")
        pad = batch_size - len(idx)
        if pad:  # keep one compiled shape
            tokens = np.concatenate([tokens, np.repeat(tokens[-1:], pad, 0)])
            seg = None if seg is None else np.concatenate([seg, np.repeat(seg[-1:], pad, 0)])
            prefix = None if prefix is None else np.concatenate([prefix, np.repeat(prefix[-1:], pad)])
        logits = fwd(tokens, seg, prefix)[: len(idx)]                     # [b, T, V] on device
        if vocab is not None and logits.shape[-1] < vocab:
            raise ValueError(f"model vocabulary {logits.shape[-1]} is smaller than the task's "
                             f"vocab_size={vocab}")
        targets, mask = batch["targets"], batch["loss_mask"]
        logp = jax.nn.log_softmax(logits, axis=-1)
        nll = -np.asarray(jnp.take_along_axis(logp, jnp.asarray(targets)[..., None], -1)[..., 0])
        pred = np.asarray(jnp.argmax(logits, -1))
        right = (pred == targets) & mask
        sums["nll"] += float((nll * mask).sum())
        sums["right"] += int(right.sum())
        sums["positions"] += int(mask.sum())
        sums["seq_right"] += int((right.sum(1) == mask.sum(1)).sum())
        if isinstance(task, RegularLanguages):
            ann = task.batch_annotations(idx)
            m = dfa_metrics(np.asarray(logits[..., :NUM_LETTERS]), ann["legal"],
                            ann["eval_mask"])
            k = int(ann["eval_mask"].sum())
            sums["dfa_n"] += k
            sums["dfa_acc"] += m["accuracy"] * k
            sums["dfa_tvd"] += m["tvd"] * k
            # strings completed before the letter predicted at t: separators in tokens[: t + 1]
            seen = np.cumsum(np.asarray(batch["tokens"]) == SEPARATOR, axis=1)
            for name, low, high in DFA_BINS:
                in_bin = ann["eval_mask"] & (seen >= low)
                if high is not None:
                    in_bin &= seen <= high
                kb = int(in_bin.sum())
                if kb:
                    mb = dfa_metrics(np.asarray(logits[..., :NUM_LETTERS]), ann["legal"], in_bin)
                    bins[name]["n"] += kb
                    bins[name]["acc"] += mb["accuracy"] * kb
                    bins[name]["tvd"] += mb["tvd"] * kb
        if isinstance(task, ForgettingMQAR):
            stale = np.stack([task.stale_values(int(i)) for i in idx])  # [b, T, U + 1]
            sums["stale"] += int(((stale == pred[..., None]).any(-1) & mask).sum())
    positions = max(sums["positions"], 1)
    out = {
        "loss": sums["nll"] / positions,
        "accuracy": sums["right"] / positions,
        "sequence_accuracy": sums["seq_right"] / n,
        "num_examples": int(n),
        "num_positions": int(sums["positions"]),
    }
    if isinstance(task, RegularLanguages):
        out["dfa_accuracy"] = sums["dfa_acc"] / max(sums["dfa_n"], 1)
        out["dfa_tvd"] = sums["dfa_tvd"] / max(sums["dfa_n"], 1)
        for name, b in bins.items():
            if b["n"]:
                out[f"dfa_accuracy@{name}"] = b["acc"] / b["n"]
                out[f"dfa_tvd@{name}"] = b["tvd"] / b["n"]
    if isinstance(task, ForgettingMQAR):
        out["stale_rate"] = sums["stale"] / positions
    return out

"""Grain pipelines over any random-access source of examples.

A source is anything with `len(source)` and `source[i] -> {"tokens": int32[L], "targets":
int32[L], "loss_mask": bool[L], optional "segment_ids": int32[L]}` (every `research.tasks` task and
`research.data.TokenWindows`). The training pipeline is

    source -> shuffle(seed, reshuffled every epoch) -> repeat forever -> batch(B / P)
           -> take every P-th batch starting at the process index p

so P processes each read their B / P rows of the same global batch that one process would read
with batch B: the global batch at step s is examples [s B, (s + 1) B) of the shuffled stream, in
process order. The iterator's state (`get_state()` / `set_state()`, a small JSON-able dict) is
saved with every checkpoint, so a resumed run reads exactly the batches it would have read.

Notation: B = global batch, P = process count, L = sequence length.
"""

from __future__ import annotations

from typing import Any

import grain
import numpy as np

from research.validation import check_int

Batch = dict[str, np.ndarray]

_READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)


def _check_sharding(batch_size: int, process_index: int, process_count: int) -> int:
    check_int("process_count", process_count, 1)
    check_int("process_index", process_index, 0, process_count - 1)
    check_int("batch_size", batch_size, 1)
    if batch_size % process_count:
        raise ValueError(
            f"batch_size (global) must be a positive multiple of process_count={process_count}, "
            f"got {batch_size}")
    return batch_size // process_count


def _check_source(source: Any, name: str = "source") -> None:
    if not hasattr(source, "__len__") or not hasattr(source, "__getitem__"):
        raise ValueError(f"{name} must support len() and [i], got {type(source).__name__}")
    if len(source) < 1:
        raise ValueError(f"{name} must hold at least one example, got len={len(source)}")


def train_dataset(source: Any, *, batch_size: int, seed: int, shuffle: bool = True,
                  process_index: int = 0, process_count: int = 1) -> grain.IterDataset:
    """An endless grain IterDataset of this process's training batches.

    Args:
      source: random-access examples (see the module docstring).
      batch_size: global batch B; each process gets B / process_count rows.
      seed: shuffling seed (a new permutation every epoch).
      shuffle: False keeps the source order (epochs repeat it).
      process_index, process_count: this process's place among P processes.

    Returns:
      IterDataset yielding dicts of numpy arrays with leading axis B / P, e.g. tokens [B/P, L].
      `iter(ds)` is a grain DatasetIterator with `get_state()` / `set_state()`.
    """
    _check_source(source)
    local = _check_sharding(batch_size, process_index, process_count)
    ds = grain.MapDataset.source(source)
    if shuffle:
        ds = ds.shuffle(seed=int(seed))
    ds = ds.repeat(None).batch(local, drop_remainder=True)
    if process_count > 1:
        ds = ds[process_index::process_count]
    return ds.to_iter_dataset(_READ_OPTIONS)


def eval_batches(source: Any, *, batch_size: int, num_batches: int, process_index: int = 0,
                 process_count: int = 1) -> list[Batch]:
    """The first `num_batches` global batches of `source` in order (cycling if it is short);
    returns this process's rows of each: a list of dicts of arrays with leading axis B / P."""
    _check_source(source)
    local = _check_sharding(batch_size, process_index, process_count)
    check_int("num_batches", num_batches, 1)
    ds = grain.MapDataset.source(source).repeat(None).batch(local, drop_remainder=True)
    return [ds[b * process_count + process_index] for b in range(num_batches)]


def batch_tokens(batch: Batch) -> int:
    """Number of tokens in a batch: B * L."""
    return int(np.prod(batch["tokens"].shape))

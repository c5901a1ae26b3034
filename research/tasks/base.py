"""Shared pieces of the synthetic task sources.

Every task in `research.tasks` is a frozen dataclass that is also a grain
`RandomAccessDataSource`: `len(task)` examples, and `task[i]` returns one example

    {"tokens": int32[L], "targets": int32[L], "loss_mask": bool[L]}

(tasks with a prompt also give "prefix_length": int32[], the prompt's length, which prefix-attention
models such as JRT-RNN read non-causally), where `targets[t]` is the label the model must predict after reading `tokens[: t + 1]` (labels are
aligned with the tokens, i.e. already shifted), and `loss_mask[t]` marks the positions that count
for loss and accuracy. Where `loss_mask` is False, `targets` holds 0 unless a task documents
otherwise. Examples are deterministic in `(task.seed, i)`: the generator for example `i` is seeded
with `numpy.random.SeedSequence([seed, salt, i])`, so any worker can produce any example.

Notation: L = sequence length, V = vocabulary size, B = batch.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from research.validation import (  # noqa: F401 (check_bool, check_choice, check_number: for the tasks)
    check_bool,
    check_choice,
    check_index,
    check_int,
    check_number,
)

Example = dict[str, np.ndarray]


def _task_salt(name: str) -> int:
    """A stable 32-bit salt per task class, so two tasks with the same seed draw different data."""
    return zlib.crc32(name.encode())


def check_positive(name: str, value: int, minimum: int = 1) -> None:
    """`research.validation.check_int` with the tasks' usual minimum of 1."""
    check_int(name, value, minimum)


@dataclasses.dataclass(frozen=True)
class Task:
    """Base class of the task sources: indexing, seeding and batching.

    Subclasses are frozen dataclasses with at least `vocab_size`, `seq_len`, `seed` and
    `num_examples` fields and implement `_generate(rng) -> Example`.
    """

    def _generate(self, rng: np.random.Generator) -> Example:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_fields(self, *, min_vocab_size: int = 1, min_seq_len: int = 1) -> None:
        """The checks of the fields every task has: vocab_size >= min_vocab_size, seq_len >=
        min_seq_len, num_examples >= 1 and seed >= 0 (integers). For `__post_init__`."""
        check_int("vocab_size", self.vocab_size, min_vocab_size)  # type: ignore[attr-defined]
        check_int("seq_len", self.seq_len, min_seq_len)  # type: ignore[attr-defined]
        check_int("num_examples", self.num_examples, 1)  # type: ignore[attr-defined]
        check_int("seed", self.seed, 0)  # type: ignore[attr-defined]

    def __len__(self) -> int:
        return int(self.num_examples)  # type: ignore[attr-defined]

    def rng(self, index: int) -> np.random.Generator:
        """The numpy Generator that example `index` is drawn from (deterministic in seed, index)."""
        salt = _task_salt(type(self).__name__)
        return np.random.default_rng(
            np.random.SeedSequence([int(self.seed), salt, int(index)])  # type: ignore[attr-defined]
        )

    def _check_index(self, index: Any) -> int:
        return check_index(index, len(self), "examples")

    def __getitem__(self, index: int) -> Example:
        """Example `index`: {"tokens": int32[L], "targets": int32[L], "loss_mask": bool[L]}."""
        index = self._check_index(index)
        ex = self._generate(self.rng(index))
        out = {
            "tokens": np.asarray(ex["tokens"], dtype=np.int32),
            "targets": np.asarray(ex["targets"], dtype=np.int32),
            "loss_mask": np.asarray(ex["loss_mask"], dtype=bool),
        }
        if "prefix_length" in ex:  # the prompt prefix (tasks with a prompt; see research.layers.jrt)
            out["prefix_length"] = np.asarray(ex["prefix_length"], dtype=np.int32)
        return out

    def batch(self, indices: Sequence[int] | np.ndarray) -> Example:
        """Stack examples `indices` into a batch: each value gets a leading axis B."""
        return stack([self[int(i)] for i in indices])

    def with_(self, **changes: Any):
        """A copy of the task with some fields changed (e.g. a longer `seq_len` for probes)."""
        return dataclasses.replace(self, **changes)


def labelled(tokens: np.ndarray, at, labels, **extra: Any) -> Example:
    """The example of `tokens` ([L]) whose targets are `labels` at the positions `at` (an index,
    a slice or an index array) and 0 elsewhere, with the loss mask True exactly there; `extra`
    entries (e.g. "prefix_length") are added as they are."""
    L = len(tokens)
    targets = np.zeros(L, dtype=np.int64)
    targets[at] = labels
    loss_mask = np.zeros(L, dtype=bool)
    loss_mask[at] = True
    return {"tokens": tokens, "targets": targets, "loss_mask": loss_mask, **extra}


def stack(examples: Sequence[Example]) -> Example:
    """Stack a list of examples into a batch dict of arrays with leading axis B."""
    if not examples:
        raise ValueError("examples must be a non-empty sequence, got an empty one")
    return {key: np.stack([ex[key] for ex in examples]) for key in examples[0]}


def masked_accuracy(
    predictions: np.ndarray, targets: np.ndarray, loss_mask: np.ndarray
) -> float:
    """Fraction of masked positions where `predictions == targets`; all arrays [B, L] (or [L])."""
    predictions, targets, loss_mask = map(np.asarray, (predictions, targets, loss_mask))
    if predictions.shape != targets.shape or targets.shape != loss_mask.shape:
        raise ValueError(
            "predictions, targets and loss_mask must have the same shape, got "
            f"{predictions.shape}, {targets.shape}, {loss_mask.shape}"
        )
    n = int(loss_mask.sum())
    if n == 0:
        return float("nan")
    return float(((predictions == targets) & loss_mask).sum() / n)

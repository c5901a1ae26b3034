"""Induction heads (Olsson et al. 2022; the synthetic of H3 and Mamba).

    tokens:  random tokens with TRIGGER once at position p, answer a at p + 1, ..., TRIGGER
    targets: a at the last position (the only masked position)

Token 0 is the trigger; every other token is uniform over `1..V-1`, so the trigger appears exactly
twice (at p and at L - 1); p is uniform over `0..L-3`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from research.tasks.base import Example, Task, labelled

TRIGGER = 0


@dataclasses.dataclass(frozen=True)
class InductionHeads(Task):
    """Induction heads source (grain RandomAccessDataSource).

    Attributes:
      vocab_size: V >= 3.
      seq_len: L >= 3.
      seed, num_examples: examples are deterministic in (seed, index).

    `task[i]` -> {"tokens": int32[L], "targets": int32[L], "loss_mask": bool[L]}.
    """

    vocab_size: int = 16
    seq_len: int = 256
    seed: int = 0
    num_examples: int = 100_000

    def __post_init__(self):
        self._check_fields(min_vocab_size=3, min_seq_len=3)

    def _generate(self, rng: np.random.Generator) -> Example:
        L = self.seq_len
        tokens = rng.integers(1, self.vocab_size, size=L)
        p = int(rng.integers(0, L - 2))
        tokens[p] = TRIGGER
        tokens[L - 1] = TRIGGER
        return labelled(tokens, L - 1, tokens[p + 1])

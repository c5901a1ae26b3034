"""Selective copying (Gu and Dao, "Mamba", 2023): copy the content tokens scattered in noise.

    tokens:  [context of C = L - M tokens: noise, with M content tokens at random positions]
             [M copies of MARKER]
    targets: the M content tokens, in order, at the marker positions (loss_mask there only)

Token 0 is the noise token, token 1 the marker, content tokens are drawn uniformly (with
replacement) from `2..V-1`. Solving it needs content-dependent (selective) state updates: a time
-invariant recurrence cannot skip the noise.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from research.tasks.base import Example, Task, check_positive, labelled

NOISE = 0
MARKER = 1


@dataclasses.dataclass(frozen=True)
class SelectiveCopying(Task):
    """Selective copying source (grain RandomAccessDataSource).

    Attributes:
      vocab_size: V >= 3.
      seq_len: L = C + M, with the context C >= M.
      num_tokens: M content tokens to copy.
      seed, num_examples: examples are deterministic in (seed, index).

    `task[i]` -> {"tokens": int32[L], "targets": int32[L], "loss_mask": bool[L]}.
    """

    vocab_size: int = 16
    seq_len: int = 256
    num_tokens: int = 16
    seed: int = 0
    num_examples: int = 100_000

    def __post_init__(self):
        check_positive("num_tokens", self.num_tokens)
        self._check_fields(min_vocab_size=3, min_seq_len=2 * self.num_tokens)

    def _generate(self, rng: np.random.Generator) -> Example:
        m, L = self.num_tokens, self.seq_len
        c = L - m
        content = rng.integers(2, self.vocab_size, size=m)
        positions = np.sort(rng.choice(c, size=m, replace=False))
        tokens = np.full(L, NOISE, dtype=np.int64)
        tokens[positions] = content
        tokens[c:] = MARKER
        return labelled(tokens, slice(c, None), content)

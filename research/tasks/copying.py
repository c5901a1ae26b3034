"""Copying: reproduce a random string after a separator (Jelassi et al., "Repeat after me", 2024).

    tokens:  x1 .. xn SEP x1 .. x(n-1) [PAD]
    targets:          x1  x2 .. xn
    (loss_mask on the n positions from SEP on)

`n = (seq_len - 1) // 2`; an even `seq_len` ends with one unlabelled PAD. Token 0 = PAD, 1 = SEP,
string tokens are uniform over `2..V-1`. A fixed-size state cannot copy strings longer than it can
hold, which makes this the sharpest capacity test.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from research.tasks.base import Example, Task, labelled

PAD = 0
SEP = 1


@dataclasses.dataclass(frozen=True)
class Copying(Task):
    """Copying source (grain RandomAccessDataSource).

    Attributes:
      vocab_size: V >= 3.
      seq_len: L >= 3; the string has n = (L - 1) // 2 tokens.
      seed, num_examples: examples are deterministic in (seed, index).

    `task[i]` -> {"tokens": int32[L], "targets": int32[L], "loss_mask": bool[L]}.
    """

    vocab_size: int = 32
    seq_len: int = 129
    seed: int = 0
    num_examples: int = 100_000

    def __post_init__(self):
        self._check_fields(min_vocab_size=3, min_seq_len=3)

    @property
    def string_len(self) -> int:
        """n = (L - 1) // 2."""
        return (self.seq_len - 1) // 2

    def _generate(self, rng: np.random.Generator) -> Example:
        n, L = self.string_len, self.seq_len
        x = rng.integers(2, self.vocab_size, size=n)
        tokens = np.full(L, PAD, dtype=np.int64)
        tokens[:n] = x
        tokens[n] = SEP
        tokens[n + 1 : 2 * n] = x[:-1]
        return labelled(tokens, slice(n, 2 * n), x)

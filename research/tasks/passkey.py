"""Passkey retrieval: a short key hidden at a chosen depth in filler, recalled at the end.

The token version of the "needle in a haystack" passkey test (Mohtashami and Jaggi, 2023):

    tokens:  filler ... KEY d1 d2 .. dk  filler ... QUERY d1 .. d(k-1)
    targets:                                        d1    d2 .. dk
    (loss_mask on the last k positions)

- digits are tokens `0..9`, `KEY = 10` marks the passkey, `QUERY = 11` asks for it, filler tokens
  are `12..V-1`;
- the needle (KEY and k digits) starts at `round(depth * (H - k - 1))` of the haystack of
  H = L - k tokens, so depth 0 is the start of the context and depth 1 its end; `depth=None` draws
  the depth uniformly per example;
- filler is uniform random filler tokens (`"random"`) or one fixed pattern of 16 filler tokens
  repeated (`"repeat"`, the "The grass is green..." of the original).

`passkey_grid(lengths, depths, ...)` builds the length x depth grid of tasks a probe sweeps.
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np

from research.tasks.base import Example, Task, check_choice, check_number, check_positive, labelled

NUM_DIGITS = 10
KEY = 10
QUERY = 11
FIRST_FILLER = 12
PATTERN_LEN = 16


@dataclasses.dataclass(frozen=True)
class Passkey(Task):
    """Passkey retrieval source (grain RandomAccessDataSource).

    Attributes:
      vocab_size: V >= 13 (10 digits, two markers, at least one filler token).
      seq_len: L, with room for the needle and the query: `L >= 2 * passkey_len + 2`.
      passkey_len: k digits.
      depth: relative needle position in [0, 1], or None to draw it per example.
      filler: "random" or "repeat".
      seed, num_examples: examples are deterministic in (seed, index).

    `task[i]` -> {"tokens": int32[L], "targets": int32[L], "loss_mask": bool[L]}.
    """

    vocab_size: int = 256
    seq_len: int = 256
    passkey_len: int = 5
    depth: float | None = None
    filler: str = "random"
    seed: int = 0
    num_examples: int = 100_000

    def __post_init__(self):
        check_positive("passkey_len", self.passkey_len)
        self._check_fields(min_vocab_size=FIRST_FILLER + 1, min_seq_len=2 * self.passkey_len + 2)
        check_choice("filler", self.filler, ("random", "repeat"))
        check_number("depth", self.depth, 0.0, 1.0, optional=True)

    @property
    def haystack_len(self) -> int:
        """H = L - k: the context before the query."""
        return self.seq_len - self.passkey_len

    def needle_position(self, depth: float) -> int:
        """Index of the KEY token for a relative depth in [0, 1]."""
        return round(depth * (self.haystack_len - self.passkey_len - 1))

    def _pattern(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, zlib.crc32(b"passkey-pattern")])
        return rng.integers(FIRST_FILLER, self.vocab_size, size=PATTERN_LEN)

    def _generate(self, rng: np.random.Generator) -> Example:
        k, L, H = self.passkey_len, self.seq_len, self.haystack_len
        digits = rng.integers(0, NUM_DIGITS, size=k)
        depth = float(rng.random()) if self.depth is None else float(self.depth)
        if self.filler == "random":
            tokens = rng.integers(FIRST_FILLER, self.vocab_size, size=L)
        else:
            tokens = np.resize(self._pattern(), L)
        pos = self.needle_position(depth)
        tokens[pos] = KEY
        tokens[pos + 1 : pos + 1 + k] = digits
        tokens[H] = QUERY
        tokens[H + 1 :] = digits[:-1]
        return labelled(tokens, slice(H, None), digits)


def passkey_grid(lengths, depths, **kwargs) -> list[Passkey]:
    """Passkey tasks over the product of `lengths` (seq_len) and `depths` (row-major)."""
    return [Passkey(seq_len=int(n), depth=float(d), **kwargs) for n in lengths for d in depths]

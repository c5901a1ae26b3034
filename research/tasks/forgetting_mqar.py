"""Forgetting-MQAR: associative recall where keys are re-bound and only the latest value counts.

MQAR (see `research.tasks.mqar`) with a stream of writes instead of a fixed set of pairs:

    tokens:  k1 v1 ... kN vN | ka va' kb vb' ... (U updates) | filler with each key queried once
    targets: the value a key was bound to LAST, at that key's query position

- N distinct keys from `[1, V // 2)` are first bound to values (N pairs), then U updates re-bind
  keys drawn uniformly with replacement from the N keys; all N + U written values are distinct
  tokens from `[V // 2, V)`, so an old value is never also the right answer;
- after the 2 (N + U) tokens of writes, each of the N keys is queried once at gap slot g in
  `[0, S)`, `S = (L - 2 (N + U)) // 2`, drawn without replacement with Zoology's power law
  `p(g) ~ a (g + 1) ** (a - 1)`;
- filler is uniform random tokens (`"random"`) or zeros (`"zero"`).

A model that never forgets (linear attention without decay) superimposes the old and new values
of an updated key; gates that decay old writes let the newest binding win. `stale_values` gives
the values that a key held before its last write, to count "recalled a stale value" errors.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from research.tasks.base import Example, Task, check_positive, labelled
from research.tasks.mqar import check_recall_fields, fill_zeros, sample_query_gaps


@dataclasses.dataclass(frozen=True)
class ForgettingMQAR(Task):
    """Forgetting-MQAR source (grain RandomAccessDataSource).

    Attributes:
      vocab_size: V; needs `N <= V // 2 - 1` keys and `N + U <= V - V // 2` values.
      seq_len: L, even, with `2 (N + U) + 2 N <= L`.
      num_kv_pairs: N distinct keys (each queried once).
      num_updates: U re-bindings after the first N writes (0 gives plain MQAR).
      seed, num_examples, power_a, filler: as in `MQAR`.

    `task[i]` -> {"tokens": int32[L], "targets": int32[L], "loss_mask": bool[L]}.
    """

    vocab_size: int = 8192
    seq_len: int = 128
    num_kv_pairs: int = 8
    num_updates: int = 8
    seed: int = 0
    num_examples: int = 100_000
    power_a: float = 0.01
    filler: str = "random"

    def __post_init__(self):
        check_recall_fields(self)
        check_positive("num_updates", self.num_updates, 0)
        n, u = self.num_kv_pairs, self.num_updates
        if 2 * (n + u) + 2 * n > self.seq_len:
            raise ValueError(
                "num_kv_pairs and num_updates must satisfy 2 * (num_kv_pairs + num_updates) + "
                f"2 * num_kv_pairs <= seq_len, got num_kv_pairs={n}, num_updates={u}, "
                f"seq_len={self.seq_len}"
            )
        if n > self.vocab_size // 2 - 1 or n + u > self.vocab_size - self.vocab_size // 2:
            raise ValueError(
                f"vocab_size={self.vocab_size} is too small for num_kv_pairs={n} keys and "
                f"num_kv_pairs + num_updates={n + u} distinct values"
            )

    @property
    def context_len(self) -> int:
        """2 (N + U): the tokens holding the writes."""
        return 2 * (self.num_kv_pairs + self.num_updates)

    @property
    def num_gap_slots(self) -> int:
        """S = (L - 2 (N + U)) // 2 query slots after the writes."""
        return (self.seq_len - self.context_len) // 2

    def _writes(self, rng: np.random.Generator):
        n, u, V = self.num_kv_pairs, self.num_updates, self.vocab_size
        keys = rng.choice(np.arange(1, V // 2), size=n, replace=False)
        values = rng.choice(np.arange(V // 2, V), size=n + u, replace=False)
        update_keys = keys[rng.integers(0, n, size=u)]
        return keys, np.concatenate([keys, update_keys]), values

    def _generate(self, rng: np.random.Generator) -> Example:
        n, L, V = self.num_kv_pairs, self.seq_len, self.vocab_size
        keys, write_keys, write_values = self._writes(rng)
        latest = {}
        for k, v in zip(write_keys.tolist(), write_values.tolist()):
            latest[k] = v
        gaps = sample_query_gaps(rng, self.num_gap_slots, n, self.power_a)

        tokens = np.zeros(L, dtype=np.int64)
        tokens[0 : self.context_len : 2] = write_keys
        tokens[1 : self.context_len : 2] = write_values
        query_pos = self.context_len + 2 * gaps
        tokens[query_pos] = keys
        if self.filler == "random":
            fill_zeros(tokens, rng, V)
        return labelled(tokens, query_pos, [latest[int(k)] for k in keys])

    def stale_values(self, index: int) -> np.ndarray:
        """Values each query's key held before its last write: int32 [L, U + 1], -1 padded.

        Row t lists the stale values of the key queried at t (all -1 where `loss_mask` is False
        or the key was written once). A prediction in that row is a "stale recall".
        """
        ex = self[index]
        write_keys = ex["tokens"][0 : self.context_len : 2]
        write_values = ex["tokens"][1 : self.context_len : 2]
        out = np.full((self.seq_len, self.num_updates + 1), -1, dtype=np.int32)
        for t in np.flatnonzero(ex["loss_mask"]):
            vals = write_values[write_keys == ex["tokens"][t]][:-1]
            out[t, : len(vals)] = vals
        return out

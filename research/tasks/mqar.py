"""Multi-query associative recall (MQAR), as Zoology defines it.

Arora, Eyuboglu et al., "Zoology: Measuring and improving recall in efficient language models"
(2023), `zoology/data/associative_recall.py::_mqar`. An example of length L with N kv pairs:

    position:  0  1  2  3 ... 2N-1 | 2N ........................................ L-1
    tokens:    k1 v1 k2 v2 ... vN  | filler, with each key k_i once at 2N + 2 g_i
    targets:   .  .  .  .  ...  .  | v_i at position 2N + 2 g_i, nothing elsewhere
    loss_mask: only the N query positions

- keys are N distinct tokens from the lower half of the vocabulary, `[1, V // 2)` (0 is the zero
  filler); values are N distinct tokens from the upper half, `[V // 2, V)`;
- every key is queried exactly once after the context; query i sits at gap slot g_i in
  `[0, S)`, `S = (L - 2N) // 2` slots of two tokens each, the N slots drawn without replacement
  with probability `p(g) ~ a (g + 1) ** (a - 1)` (a power law; a = 0.01 puts most queries close
  to the context, a = 1 is uniform);
- the target at a query key's position is its value (the model predicts the value right after
  reading the key); the token after a query is filler;
- filler is uniform random tokens over the whole vocabulary (`filler="random"`, Zoology's default,
  so filler may repeat keys or values) or zeros (`filler="zero"`).

JRT-Prompt (Arora et al. 2024, "Just read twice"): with `jrt_prompt=True` the context is repeated
before the queries (k1 v1 ... vN k1 v1 ... vN | queries), so the prompt is 4N tokens and the
queries' slots start at 4N (`S = (L - 4N) // 2`); a recurrent model then sees every pair again
after it has seen all keys. Every example also carries "prefix_length" = the prompt length (2N,
or 4N with jrt_prompt), the prefix that prefix-attention models (`jrt`) read non-causally.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from research.tasks.base import (
    Example,
    Task,
    check_bool,
    check_choice,
    check_number,
    check_positive,
    labelled,
)


def power_law_gap_probs(num_slots: int, power_a: float) -> np.ndarray:
    """Zoology's query-gap distribution: p(g) ~ a (g + 1) ** (a - 1) for g in [0, num_slots).

    Returns float64 [num_slots] summing to 1.
    """
    check_positive("num_slots", num_slots)
    check_number("power_a", power_a, 0.0, exclusive_minimum=True)
    p = power_a * np.arange(1, num_slots + 1, dtype=np.float64) ** (power_a - 1)
    return p / p.sum()


def sample_query_gaps(rng: np.random.Generator, num_slots: int, num_queries: int,
                      power_a: float) -> np.ndarray:
    """The gap slots of `num_queries` queries: distinct slots in [0, num_slots) drawn with
    `power_law_gap_probs` (int [num_queries])."""
    p = power_law_gap_probs(num_slots, power_a)
    return rng.choice(num_slots, size=num_queries, replace=False, p=p)


def fill_zeros(tokens: np.ndarray, rng: np.random.Generator, vocab_size: int) -> None:
    """Zoology's random filler, in place: every 0 token (keys are never 0) becomes a uniform
    token over the vocabulary."""
    zero = tokens == 0
    tokens[zero] = rng.integers(0, vocab_size, size=int(zero.sum()))


def check_recall_fields(task: Task) -> None:
    """The field checks that MQAR and Forgetting-MQAR share (for their `__post_init__`):
    vocab_size >= 4, seq_len >= 4 and even, num_kv_pairs >= 1, num_examples, seed, filler
    ("random" or "zero") and power_a > 0."""
    task._check_fields(min_vocab_size=4, min_seq_len=4)
    check_positive("num_kv_pairs", task.num_kv_pairs)  # type: ignore[attr-defined]
    check_choice("filler", task.filler, ("random", "zero"))  # type: ignore[attr-defined]
    if task.seq_len % 2:  # type: ignore[attr-defined]
        raise ValueError(f"seq_len must be even, got {task.seq_len}")  # type: ignore[attr-defined]
    check_number("power_a", task.power_a, 0.0, exclusive_minimum=True)  # type: ignore[attr-defined]


@dataclasses.dataclass(frozen=True)
class MQAR(Task):
    """Multi-query associative recall source (grain RandomAccessDataSource).

    Attributes:
      vocab_size: V; must leave room for N distinct keys and values. (Zoology also asserts
        V > L, which the distribution does not need; it is dropped here so that the length
        extrapolation probes can evaluate at 16x the training length.)
      seq_len: L, even, with `4 * num_kv_pairs <= L`.
      num_kv_pairs: N, the number of key-value pairs (and of queries) per example.
      seed: examples are deterministic in (seed, index).
      num_examples: `len(task)`.
      power_a: exponent a of the query-gap power law (0.01 in Zoology; 1.0 is uniform).
      filler: "random" (uniform tokens over the vocabulary) or "zero".
      jrt_prompt: repeat the context before the queries (JRT-Prompt; needs `6 N <= L`).

    `task[i]` -> {"tokens": int32[L], "targets": int32[L], "loss_mask": bool[L],
    "prefix_length": int32[]}; the N masked positions are the query keys and their targets are
    the values bound to them.
    """

    vocab_size: int = 8192
    seq_len: int = 64
    num_kv_pairs: int = 4
    seed: int = 0
    num_examples: int = 100_000
    power_a: float = 0.01
    filler: str = "random"
    jrt_prompt: bool = False

    def __post_init__(self):
        check_recall_fields(self)
        check_bool("jrt_prompt", self.jrt_prompt)
        if self.jrt_prompt and 6 * self.num_kv_pairs > self.seq_len:
            raise ValueError(
                f"num_kv_pairs must satisfy 6 * num_kv_pairs <= seq_len with jrt_prompt (the "
                f"context twice, then the queries), got num_kv_pairs={self.num_kv_pairs}, "
                f"seq_len={self.seq_len}"
            )
        if 4 * self.num_kv_pairs > self.seq_len:
            raise ValueError(
                f"num_kv_pairs must satisfy 4 * num_kv_pairs <= seq_len, got num_kv_pairs="
                f"{self.num_kv_pairs}, seq_len={self.seq_len}"
            )
        if self.num_kv_pairs > self.vocab_size // 2 - 1:
            raise ValueError(
                f"num_kv_pairs must be <= vocab_size // 2 - 1 = {self.vocab_size // 2 - 1} "
                f"distinct keys, got {self.num_kv_pairs}"
            )

    @property
    def context_len(self) -> int:
        """2N: the number of tokens holding the key-value pairs."""
        return 2 * self.num_kv_pairs

    @property
    def prompt_len(self) -> int:
        """The tokens before the query slots: 2N, or 4N with jrt_prompt (the context twice)."""
        return self.context_len * (2 if self.jrt_prompt else 1)

    @property
    def num_gap_slots(self) -> int:
        """S = (L - prompt_len) // 2: the query slots after the prompt."""
        return (self.seq_len - self.prompt_len) // 2

    def _generate(self, rng: np.random.Generator) -> Example:
        n, L, V = self.num_kv_pairs, self.seq_len, self.vocab_size
        keys = rng.choice(np.arange(1, V // 2), size=n, replace=False)
        values = rng.choice(np.arange(V // 2, V), size=n, replace=False)
        gaps = sample_query_gaps(rng, self.num_gap_slots, n, self.power_a)

        tokens = np.zeros(L, dtype=np.int64)
        tokens[0 : 2 * n : 2] = keys
        tokens[1 : 2 * n : 2] = values
        if self.jrt_prompt:
            tokens[2 * n : 4 * n] = tokens[: 2 * n]
        query_pos = self.prompt_len + 2 * gaps
        tokens[query_pos] = keys
        if self.filler == "random":
            fill_zeros(tokens, rng, V)
        return labelled(tokens, query_pos, values, prefix_length=self.prompt_len)

"""Set disjointness (Arora et al., "Just read twice", 2024): find the one element two sets share.

    tokens:  A (|A| distinct elements) SEP B (|B| distinct elements) QUERY
    targets: the single element in A ∩ B, at QUERY (the only masked position)

The two sets share exactly one element. A recurrent model must store the first set to test the
second against it, so its state requirement depends on the ORDER: `order="short_first"` puts the
short set first (easy for a fixed-size state), `"long_first"` the long one. Sizes: the short set
has `short_size` elements and the long set fills the rest, `seq_len - short_size - 2`.

Tokens: 0 = SEP, 1 = QUERY, elements from `2..V-1`.

JRT-Prompt (`jrt_prompt=True`, Arora et al. 2024): the two sets are given twice before the query,

    tokens:  [SEP] A SEP B SEP A SEP B QUERY        (the leading SEP only when L is odd)

so a recurrent model reads the second set before the first comes again; then the long set has
`(seq_len - 4) // 2 - short_size` elements. Every example carries "prefix_length" = L - 1 (all
but the query), the prefix that prefix-attention models (`jrt`) read non-causally.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from research.tasks.base import Example, Task, check_bool, check_choice, check_positive, labelled

SEP = 0
QUERY = 1


@dataclasses.dataclass(frozen=True)
class SetDisjointness(Task):
    """Set disjointness source (grain RandomAccessDataSource).

    Attributes:
      vocab_size: V; the two sets need `short_size + long_size - 1 <= V - 2` distinct elements.
      seq_len: L = short_size + long_size + 2.
      short_size: elements in the short set (>= 1, <= long_size).
      order: "short_first" or "long_first".
      seed, num_examples: examples are deterministic in (seed, index).
      jrt_prompt: give the two sets twice (JRT-Prompt; see the module docstring).

    `task[i]` -> {"tokens": int32[L], "targets": int32[L], "loss_mask": bool[L],
    "prefix_length": int32[]}.
    """

    vocab_size: int = 256
    seq_len: int = 64
    short_size: int = 8
    order: str = "short_first"
    seed: int = 0
    num_examples: int = 100_000
    jrt_prompt: bool = False

    def __post_init__(self):
        check_positive("short_size", self.short_size)
        check_bool("jrt_prompt", self.jrt_prompt)
        self._check_fields(min_seq_len=(4 if self.jrt_prompt else 2) * (self.short_size + 1))
        check_choice("order", self.order, ("short_first", "long_first"))
        need = self.short_size + self.long_size - 1
        if need > self.vocab_size - 2:
            raise ValueError(
                f"vocab_size must be >= {need + 2} for short_size={self.short_size} and "
                f"seq_len={self.seq_len} (distinct elements), got {self.vocab_size}"
            )

    @property
    def long_size(self) -> int:
        """Elements in the long set: seq_len - short_size - 2 ((seq_len - 4) // 2 - short_size
        with jrt_prompt)."""
        if self.jrt_prompt:
            return (self.seq_len - 4) // 2 - self.short_size
        return self.seq_len - self.short_size - 2

    def _generate(self, rng: np.random.Generator) -> Example:
        s, l = self.short_size, self.long_size
        elems = rng.choice(np.arange(2, self.vocab_size), size=s + l - 1, replace=False)
        common = elems[0]
        short = rng.permutation(np.concatenate([[common], elems[1:s]]))
        long_ = rng.permutation(np.concatenate([[common], elems[s:]]))
        first, second = (short, long_) if self.order == "short_first" else (long_, short)
        prompt = [first, [SEP], second]
        if self.jrt_prompt:
            pad = [[SEP]] if self.seq_len % 2 else []
            prompt = [*pad, *prompt, [SEP], *prompt]
        tokens = np.concatenate([*prompt, [QUERY]]).astype(np.int64)
        L = self.seq_len
        return labelled(tokens, L - 1, common, prefix_length=L - 1)

"""In-context learning of regular languages (random DFAs), after Akyürek, Wang, Kim and Andreas,
"In-Context Language Learning: Architectures and Algorithms" (ICML 2024).

Every example comes from its own random DFA (a probabilistic automaton):

- the alphabet is `NUM_LETTERS = 18` letters (tokens `0..17`); the separator is token 18;
- a DFA has `n ~ U{4..12}` states and uses `c ~ U{4..18}` letters chosen from the 18; every state
  has `m ~ U{1..3}` outgoing edges with distinct letters from the DFA's alphabet and uniformly
  random target states; state 0 is the start state and every state accepts;
- a string is a random walk from the start state of length `l ~ U{1..49}` (each step takes one of
  the current state's edges uniformly); strings are joined by the separator, and an example is the
  first `seq_len` tokens of that stream with next-token targets (every position counts for loss).

Train and test DFAs are disjoint: each DFA is reduced to a canonical form (its reachable part,
states renumbered in breadth-first order from the start, edges in letter order) whose CRC32 puts it
in the test split when `crc % 1000 < 1000 * test_fraction`; each split rejects the other's DFAs.

Metrics (`dfa_metrics`), at positions whose next token is a letter (the string goes on):
- accuracy: the greedy letter (argmax of the logits over the 18 letters) is a legal transition;
- total variation distance between the model's distribution over letters (renormalised) and the
  uniform distribution over the legal next letters (the automaton's true transition distribution).
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np

from research.tasks.base import Example, Task, check_choice, check_number

NUM_LETTERS = 18
SEPARATOR = NUM_LETTERS  # token 18
MIN_STATES, MAX_STATES = 4, 12
MIN_ALPHABET, MAX_ALPHABET = 4, NUM_LETTERS
MIN_EDGES, MAX_EDGES = 1, 3
MIN_STRING_LEN, MAX_STRING_LEN = 1, 49


@dataclasses.dataclass(frozen=True)
class DFA:
    """A random DFA: `transitions[s, a]` is the next state from s on letter a, or -1 (no edge).

    Attributes:
      transitions: int32 [num_states, NUM_LETTERS].
      alphabet: int32 [c], the letters this DFA may use (sorted).
    """

    transitions: np.ndarray
    alphabet: np.ndarray

    @property
    def num_states(self) -> int:
        return int(self.transitions.shape[0])

    def canonical(self) -> bytes:
        """Bytes identifying the DFA's reachable part up to a renaming of its states."""
        order = {0: 0}
        queue = [0]
        triples = []
        while queue:
            s = queue.pop(0)
            for a in range(NUM_LETTERS):
                t = int(self.transitions[s, a])
                if t < 0:
                    continue
                if t not in order:
                    order[t] = len(order)
                    queue.append(t)
                triples.append((order[s], a, order[t]))
        return np.asarray(triples, dtype=np.int8).tobytes()

    def bucket(self) -> int:
        """CRC32 of the canonical form, mod 1000 (decides the split)."""
        return zlib.crc32(self.canonical()) % 1000


def sample_dfa(rng: np.random.Generator) -> DFA:
    """Draw one DFA with the paper's ranges (states 4-12, alphabet 4-18, edges 1-3 per state)."""
    n = int(rng.integers(MIN_STATES, MAX_STATES + 1))
    c = int(rng.integers(MIN_ALPHABET, MAX_ALPHABET + 1))
    alphabet = np.sort(rng.choice(NUM_LETTERS, size=c, replace=False))
    transitions = np.full((n, NUM_LETTERS), -1, dtype=np.int32)
    for s in range(n):
        m = int(rng.integers(MIN_EDGES, MAX_EDGES + 1))
        letters = rng.choice(alphabet, size=m, replace=False)
        transitions[s, letters] = rng.integers(0, n, size=m)
    return DFA(transitions=transitions, alphabet=alphabet.astype(np.int32))


def random_walk_stream(dfa: DFA, length: int, rng: np.random.Generator):
    """`length` tokens of strings from `dfa` joined by SEPARATOR, with the state before each token.

    Each string has a length uniform in [1, 49]; each step takes one of the current state's edges
    uniformly. Returns (tokens int64 [length], states int64 [length]): `states[t]` is the DFA
    state after reading the current string's tokens before t (0 right after a separator).
    """
    out = [np.flatnonzero(row >= 0).tolist() for row in dfa.transitions]
    nxt = dfa.transitions.tolist()
    # Enough draws for the worst cases: every string of length 1 (one string per two tokens),
    # and a last string that runs up to 49 letters past `length`.
    lengths = rng.integers(MIN_STRING_LEN, MAX_STRING_LEN + 1, size=length + 1).tolist()
    picks = rng.random(length + MAX_STRING_LEN + 1).tolist()
    tokens, states = [], []
    i = 0
    for n in lengths:
        s = 0
        for _ in range(n):
            letters = out[s]
            a = letters[int(picks[i] * len(letters))]
            i += 1
            tokens.append(a)
            states.append(s)
            s = nxt[s][a]
        tokens.append(SEPARATOR)
        states.append(s)
        if len(tokens) >= length:
            break
    return np.asarray(tokens[:length]), np.asarray(states[:length])


@dataclasses.dataclass(frozen=True)
class RegularLanguages(Task):
    """In-context regular language source: one random DFA per example (grain source).

    Attributes:
      seq_len: L tokens per example (the example holds L + 1 stream tokens: inputs and targets).
      split: "train" or "test"; the two draw from disjoint sets of DFAs.
      test_fraction: share of canonical DFAs reserved for the test split (by hash bucket).
      vocab_size: >= 19 (18 letters and the separator); larger leaves unused tokens.
      seed, num_examples: examples are deterministic in (seed, split, index).

    `task[i]` -> {"tokens": int32[L], "targets": int32[L], "loss_mask": bool[L]} with targets the
    next stream token and loss_mask all True. `task.dfa(i)` is example i's DFA and
    `task.annotations(i)` its legal next letters for `dfa_metrics`.
    """

    seq_len: int = 256
    split: str = "train"
    test_fraction: float = 0.1
    vocab_size: int = NUM_LETTERS + 1
    seed: int = 0
    num_examples: int = 100_000

    def __post_init__(self):
        self._check_fields(min_vocab_size=NUM_LETTERS + 1, min_seq_len=2)
        check_choice("split", self.split, ("train", "test"))
        check_number("test_fraction", self.test_fraction, 0.0, 1.0, exclusive_minimum=True,
                     exclusive_maximum=True)

    def rng(self, index: int) -> np.random.Generator:
        """Example `index`'s generator; the split is part of the seed."""
        return np.random.default_rng(
            np.random.SeedSequence([self.seed, zlib.crc32(b"RegularLanguages"),
                                    ("train", "test").index(self.split), int(index)])
        )

    def _in_split(self, dfa: DFA) -> bool:
        is_test = dfa.bucket() < round(1000 * self.test_fraction)
        return is_test == (self.split == "test")

    def _sample(self, rng: np.random.Generator):
        while True:  # rejection: keep only this split's DFAs
            dfa = sample_dfa(rng)
            if self._in_split(dfa):
                break
        stream, states = random_walk_stream(dfa, self.seq_len + 1, rng)
        return dfa, stream, states

    def _generate(self, rng: np.random.Generator) -> Example:
        _, stream, _ = self._sample(rng)
        return {
            "tokens": stream[:-1],
            "targets": stream[1:],
            "loss_mask": np.ones(self.seq_len, dtype=bool),
        }

    def dfa(self, index: int) -> DFA:
        """The DFA of example `index`."""
        return self._sample(self.rng(self._check_index(index)))[0]

    def annotations(self, index: int) -> dict[str, np.ndarray]:
        """Legal next letters for example `index`.

        Returns {"legal": bool [L, vocab_size] (only letter columns can be True),
        "eval_mask": bool [L] (positions whose target is a letter)}.
        """
        dfa, stream, states = self._sample(self.rng(self._check_index(index)))
        L = self.seq_len
        # state after reading tokens[: t + 1] within its string = state before stream token t + 1
        next_state = states[1 : L + 1]
        legal = np.zeros((L, self.vocab_size), dtype=bool)
        legal[:, :NUM_LETTERS] = dfa.transitions[next_state] >= 0
        eval_mask = stream[1 : L + 1] != SEPARATOR
        return {"legal": legal, "eval_mask": eval_mask}

    def batch_annotations(self, indices) -> dict[str, np.ndarray]:
        """`annotations` stacked over `indices`: legal [B, L, V], eval_mask [B, L]."""
        anns = [self.annotations(int(i)) for i in indices]
        return {k: np.stack([a[k] for a in anns]) for k in anns[0]}


def dfa_metrics(logits: np.ndarray, legal: np.ndarray, eval_mask: np.ndarray) -> dict[str, float]:
    """Legality accuracy and total variation distance of next-letter predictions.

    Args:
      logits: float [B, L, V] model outputs (V >= 18; only the letter columns are read).
      legal: bool [B, L, V'] legal next letters (from `RegularLanguages.annotations`; V' may
        differ from V, only the first 18 columns are read).
      eval_mask: bool [B, L] positions to score.

    Returns {"accuracy": greedy letter is legal, "tvd": mean total variation distance between the
    renormalised letter distribution and the uniform distribution over legal letters}.
    """
    logits = np.asarray(logits, dtype=np.float64)
    legal, eval_mask = np.asarray(legal, dtype=bool), np.asarray(eval_mask, dtype=bool)
    if (logits.ndim != 3 or legal.ndim != 3 or legal.shape[:2] != logits.shape[:2]
            or eval_mask.shape != logits.shape[:2]):
        raise ValueError(
            "logits must be [B, L, V], legal [B, L, V'] and eval_mask [B, L], got logits "
            f"{logits.shape}, legal {legal.shape}, eval_mask {eval_mask.shape}"
        )
    if logits.shape[-1] < NUM_LETTERS or legal.shape[-1] < NUM_LETTERS:
        raise ValueError(f"logits and legal must have at least {NUM_LETTERS} classes, got "
                         f"logits {logits.shape}, legal {legal.shape}")
    letters = logits[..., :NUM_LETTERS]
    legal = legal[..., :NUM_LETTERS]
    greedy = letters.argmax(-1)
    ok = np.take_along_axis(legal, greedy[..., None], -1)[..., 0]
    p = np.exp(letters - letters.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    u = legal / np.maximum(legal.sum(-1, keepdims=True), 1)
    tvd = 0.5 * np.abs(p - u).sum(-1)
    n = max(int(eval_mask.sum()), 1)
    return {
        "accuracy": float((ok & eval_mask).sum() / n),
        "tvd": float((tvd * eval_mask).sum() / n),
    }

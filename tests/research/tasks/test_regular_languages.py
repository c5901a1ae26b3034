"""Random-DFA in-context language learning: DFA ranges, legality of strings, disjoint splits,
and the two metrics."""

import numpy as np
import pytest

from research.tasks import RegularLanguages, dfa_metrics, sample_dfa
from research.tasks.regular_languages import DFA, NUM_LETTERS, SEPARATOR


def test_dfa_ranges():
    rng = np.random.default_rng(0)
    n_states, alph, edges = set(), set(), set()
    for _ in range(400):
        dfa = sample_dfa(rng)
        assert 4 <= dfa.num_states <= 12
        assert 4 <= len(dfa.alphabet) <= 18 and len(set(dfa.alphabet.tolist())) == len(dfa.alphabet)
        out = (dfa.transitions >= 0).sum(1)
        assert np.all((out >= 1) & (out <= 3))
        used = np.flatnonzero((dfa.transitions >= 0).any(0))
        assert set(used.tolist()) <= set(dfa.alphabet.tolist())
        assert dfa.transitions.max() < dfa.num_states
        n_states.add(dfa.num_states)
        alph.add(len(dfa.alphabet))
        edges.update(out.tolist())
    assert n_states == set(range(4, 13)) and alph == set(range(4, 19)) and edges == {1, 2, 3}


def _walk(dfa, stream):
    """Check every string in the stream is a walk from state 0; return string lengths."""
    lengths, s, n = [], 0, 0
    for tok in stream:
        if tok == SEPARATOR:
            lengths.append(n)
            s, n = 0, 0
            continue
        assert dfa.transitions[s, tok] >= 0
        s = dfa.transitions[s, tok]
        n += 1
    return lengths


def test_strings_are_legal_walks_with_lengths_1_to_49():
    task = RegularLanguages(seq_len=512, seed=1, num_examples=100)
    lengths = []
    for i in range(30):
        ex = task[i]
        assert ex["loss_mask"].all()
        np.testing.assert_array_equal(ex["tokens"][1:], ex["targets"][:-1])
        stream = np.concatenate([ex["tokens"], ex["targets"][-1:]])
        assert stream.max() <= SEPARATOR and stream.min() >= 0
        lengths += _walk(task.dfa(i), stream)
    assert min(lengths) >= 1 and max(lengths) <= 49
    assert np.mean(lengths) == pytest.approx(25, abs=4)


def test_annotations_match_the_dfa():
    task = RegularLanguages(seq_len=128, seed=3, num_examples=100)
    for i in range(5):
        ex, ann, dfa = task[i], task.annotations(i), task.dfa(i)
        assert ann["legal"].shape == (128, task.vocab_size)
        s = 0
        for t in range(128):
            tok = ex["tokens"][t]
            s = 0 if tok == SEPARATOR else dfa.transitions[s, tok]
            np.testing.assert_array_equal(ann["legal"][t, :NUM_LETTERS], dfa.transitions[s] >= 0)
            assert ann["eval_mask"][t] == (ex["targets"][t] != SEPARATOR)
            if ann["eval_mask"][t]:
                assert ann["legal"][t, ex["targets"][t]]


def test_train_and_test_dfas_are_disjoint():
    train = RegularLanguages(seq_len=16, split="train", seed=0, num_examples=400)
    test = RegularLanguages(seq_len=16, split="test", seed=0, num_examples=400)
    tr = {train.dfa(i).canonical() for i in range(300)}
    te = {test.dfa(i).canonical() for i in range(300)}
    assert not tr & te
    assert all(test.dfa(i).bucket() < 100 for i in range(20))
    assert all(train.dfa(i).bucket() >= 100 for i in range(20))
    # relabelling the states of a DFA keeps its canonical form
    dfa = train.dfa(0)
    n = dfa.num_states
    perm = np.concatenate([[0], 1 + np.random.default_rng(0).permutation(n - 1)])
    inv = np.argsort(perm)
    t2 = np.full_like(dfa.transitions, -1)
    for s in range(n):
        row = dfa.transitions[s]
        t2[perm[s]] = np.where(row >= 0, perm[np.maximum(row, 0)], -1)
    assert DFA(t2, dfa.alphabet).canonical() == dfa.canonical()
    assert inv[0] == 0


def test_metrics():
    rng = np.random.default_rng(5)
    B, L, V = 2, 6, 19
    legal = np.zeros((B, L, V), bool)
    legal[..., :NUM_LETTERS] = rng.random((B, L, NUM_LETTERS)) < 0.2
    legal[..., 0] = True
    mask = np.ones((B, L), bool)
    # uniform over legal letters (and a huge separator logit that is ignored): acc 1, tvd 0
    logits = np.where(legal, 0.0, -1e9)
    logits[..., SEPARATOR] = 50.0
    m = dfa_metrics(logits, legal, mask)
    assert m["accuracy"] == 1.0 and m["tvd"] == pytest.approx(0.0, abs=1e-9)
    # all mass on an illegal letter: acc 0, tvd 1
    bad = np.full((B, L, V), -1e9)
    illegal = np.argmin(legal[..., :NUM_LETTERS], -1)
    np.put_along_axis(bad, illegal[..., None], 0.0, -1)
    m = dfa_metrics(bad, legal, mask)
    assert m["accuracy"] == 0.0 and m["tvd"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="logits"):
        dfa_metrics(logits[0], legal, mask)


def test_bad_config():
    with pytest.raises(ValueError, match="split"):
        RegularLanguages(split="val")
    with pytest.raises(ValueError, match="vocab_size"):
        RegularLanguages(vocab_size=10)
    with pytest.raises(ValueError, match="test_fraction"):
        RegularLanguages(test_fraction=1.0)


def test_walk_picks_edges_uniformly():
    from research.tasks.regular_languages import random_walk_stream
    transitions = np.full((4, NUM_LETTERS), -1, dtype=np.int32)
    transitions[0, [2, 5, 7]] = [1, 2, 3]
    transitions[1:, 0] = 0
    dfa = DFA(transitions, np.array([0, 2, 5, 7], dtype=np.int32))
    stream, states = random_walk_stream(dfa, 30_000, np.random.default_rng(0))
    from_start = stream[(states == 0) & (stream != SEPARATOR)]
    counts = np.bincount(from_start, minlength=NUM_LETTERS)[[2, 5, 7]]
    assert np.all(np.abs(counts / counts.sum() - 1 / 3) < 0.02), counts
    lengths = np.diff(np.flatnonzero(stream == SEPARATOR)) - 1
    assert lengths.min() >= 1 and lengths.max() <= 49
    assert abs(np.mean(lengths) - 25) < 1.5

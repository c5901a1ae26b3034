"""Passkey, selective copying, induction heads, set disjointness and copying: defining
properties, determinism and config errors."""

import numpy as np
import pytest

from research.tasks import (
    TASKS,
    Copying,
    InductionHeads,
    Passkey,
    SelectiveCopying,
    SetDisjointness,
    make_task,
    passkey_grid,
)
from research.tasks.passkey import FIRST_FILLER, KEY, QUERY


@pytest.mark.parametrize("filler", ["random", "repeat"])
@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0, None])
def test_passkey(filler, depth):
    task = Passkey(vocab_size=64, seq_len=100, passkey_len=4, depth=depth, filler=filler, seed=1,
                   num_examples=50)
    depths = []
    for i in range(20):
        ex = task[i]
        tok, tgt, mask = ex["tokens"], ex["targets"], ex["loss_mask"]
        H = 96
        key_pos = np.flatnonzero(tok == KEY)
        assert len(key_pos) == 1 and np.flatnonzero(tok == QUERY).tolist() == [H]
        p = int(key_pos[0])
        digits = tok[p + 1 : p + 5]
        assert np.all(digits < 10)
        assert np.flatnonzero(mask).tolist() == [96, 97, 98, 99]
        np.testing.assert_array_equal(tgt[mask], digits)
        np.testing.assert_array_equal(tok[97:], digits[:-1])
        hay = np.delete(tok[:H], np.arange(p, p + 5))
        assert np.all(hay >= FIRST_FILLER)
        if depth is not None:
            assert p == round(depth * (H - 5))
        depths.append(p / (H - 5))
        if filler == "repeat":
            tiled = np.resize(task._pattern(), 100)
            keep = np.setdiff1d(np.arange(H), np.arange(p, p + 5))
            np.testing.assert_array_equal(tok[keep], tiled[keep])
    if depth is None:
        assert np.std(depths) > 0.15
    grid = passkey_grid([64, 128], [0.0, 0.5], vocab_size=64)
    assert [(t.seq_len, t.depth) for t in grid] == [(64, 0.0), (64, 0.5), (128, 0.0), (128, 0.5)]


def test_selective_copying():
    task = SelectiveCopying(vocab_size=10, seq_len=64, num_tokens=8, seed=3, num_examples=50)
    for i in range(20):
        ex = task[i]
        tok, tgt, mask = ex["tokens"], ex["targets"], ex["loss_mask"]
        ctx = tok[:56]
        content = ctx[ctx != 0]
        assert len(content) == 8 and np.all(content >= 2)
        assert np.all(tok[56:] == 1) and mask[56:].all() and not mask[:56].any()
        np.testing.assert_array_equal(tgt[56:], content)  # in order of appearance


def test_induction_heads():
    task = InductionHeads(vocab_size=12, seq_len=50, seed=4, num_examples=500)
    ps = []
    for i in range(200):
        ex = task[i]
        tok = ex["tokens"]
        trig = np.flatnonzero(tok == 0)
        assert len(trig) == 2 and trig[1] == 49
        assert np.flatnonzero(ex["loss_mask"]).tolist() == [49]
        assert ex["targets"][49] == tok[trig[0] + 1] and tok[trig[0] + 1] != 0
        ps.append(trig[0])
    assert min(ps) < 5 and max(ps) > 43


@pytest.mark.parametrize("order", ["short_first", "long_first"])
def test_set_disjointness(order):
    task = SetDisjointness(vocab_size=100, seq_len=40, short_size=6, order=order, seed=5,
                           num_examples=50)
    assert task.long_size == 32
    for i in range(20):
        ex = task[i]
        tok = ex["tokens"]
        assert tok.shape == (40,) and tok[-1] == 1
        sep = np.flatnonzero(tok == 0)
        assert len(sep) == 1
        a, b = tok[: sep[0]], tok[sep[0] + 1 : -1]
        assert (len(a), len(b)) == ((6, 32) if order == "short_first" else (32, 6))
        assert len(set(a.tolist())) == len(a) and len(set(b.tolist())) == len(b)
        common = set(a.tolist()) & set(b.tolist())
        assert len(common) == 1
        assert ex["targets"][-1] == common.pop() and ex["loss_mask"].sum() == 1


@pytest.mark.parametrize("L", [21, 22])
def test_copying(L):
    task = Copying(vocab_size=8, seq_len=L, seed=6, num_examples=50)
    for i in range(10):
        ex = task[i]
        tok, tgt, mask = ex["tokens"], ex["targets"], ex["loss_mask"]
        x = tok[:10]
        assert np.all(x >= 2) and tok[10] == 1
        np.testing.assert_array_equal(tgt[mask], x)
        assert np.flatnonzero(mask).tolist() == list(range(10, 20))
        np.testing.assert_array_equal(tok[11:20], x[:-1])
        if L == 22:
            assert tok[21] == 0 and not mask[21]


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_is_a_seeded_source(name):
    kw = {"num_examples": 30, "seed": 9}
    if name in ("mqar", "forgetting_mqar"):
        kw["vocab_size"] = 512
    task = make_task(name, **kw)
    assert len(task) == 30
    ex = task[29]
    assert ex["tokens"].dtype == np.int32 and ex["targets"].dtype == np.int32
    assert ex["loss_mask"].dtype == bool and ex["loss_mask"].any()
    assert ex["tokens"].shape == (task.seq_len,) == ex["targets"].shape
    assert ex["tokens"].max() < task.vocab_size and ex["targets"].max() < task.vocab_size
    np.testing.assert_array_equal(make_task(name, **kw)[29]["tokens"], ex["tokens"])
    other = make_task(name, **{**kw, "seed": 10})
    assert not np.array_equal(other[29]["tokens"], ex["tokens"])
    with pytest.raises(IndexError):
        task[30]
    # a longer copy (length extrapolation) still generates
    longer = task.with_(seq_len=2 * task.seq_len)
    assert longer[0]["tokens"].shape == (2 * task.seq_len,)


def test_bad_configs():
    with pytest.raises(ValueError, match="depth"):
        Passkey(depth=1.5)
    with pytest.raises(ValueError, match="order"):
        SetDisjointness(order="sideways")
    with pytest.raises(ValueError, match="vocab_size"):
        SetDisjointness(vocab_size=20, seq_len=64)
    with pytest.raises(ValueError, match="seq_len"):
        SelectiveCopying(seq_len=10, num_tokens=8)
    with pytest.raises(ValueError, match="task name"):
        make_task("nope")


@pytest.mark.parametrize("seq_len", [40, 41])
def test_set_disjointness_jrt_prompt_gives_the_sets_twice(seq_len):
    task = SetDisjointness(vocab_size=100, seq_len=seq_len, short_size=6, seed=5, num_examples=20,
                           jrt_prompt=True)
    assert task.long_size == 12
    for i in range(10):
        ex = task[i]
        tok = ex["tokens"]
        assert tok.shape == (seq_len,) and tok[-1] == 1 and int(ex["prefix_length"]) == seq_len - 1
        body = tok[seq_len % 2: -1]  # without the leading SEP of an odd length
        half = len(body) // 2
        np.testing.assert_array_equal(body[:half], body[half + 1:])
        assert body[half] == 0
        a, b = body[:6], body[7:half]
        assert ex["targets"][-1] == (set(a.tolist()) & set(b.tolist())).pop()
    with pytest.raises(ValueError, match="seq_len"):
        SetDisjointness(seq_len=20, short_size=6, jrt_prompt=True)

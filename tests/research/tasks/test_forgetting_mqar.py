"""Forgetting-MQAR: re-bound keys, the latest value is the target."""

import numpy as np
import pytest

from research.tasks import MQAR, ForgettingMQAR


def _task(**kw):
    base = {"vocab_size": 512, "seq_len": 128, "num_kv_pairs": 8, "num_updates": 12, "seed": 2,
                "num_examples": 500}
    base.update(kw)
    return ForgettingMQAR(**base)


@pytest.mark.parametrize("filler", ["random", "zero"])
def test_latest_binding_is_the_target(filler):
    task = _task(filler=filler)
    n, u, V = 8, 12, 512
    saw_update_of_queried_key = False
    for i in range(50):
        ex = task[i]
        tok, tgt, mask = ex["tokens"], ex["targets"], ex["loss_mask"]
        wk, wv = tok[0 : 2 * (n + u) : 2], tok[1 : 2 * (n + u) : 2]
        assert np.all((wk >= 1) & (wk < V // 2)) and np.all(wv >= V // 2)
        assert len(set(wk[:n].tolist())) == n          # the first n writes bind n distinct keys
        assert set(wk[n:].tolist()) <= set(wk[:n].tolist())  # updates re-bind those keys
        assert len(set(wv.tolist())) == n + u          # every written value is new
        qpos = np.flatnonzero(mask)
        assert len(qpos) == n and qpos.min() >= 2 * (n + u)
        assert sorted(tok[qpos].tolist()) == sorted(wk[:n].tolist())
        stale = task.stale_values(i)
        for p in qpos:
            written = wv[wk == tok[p]]
            assert tgt[p] == written[-1]
            assert sorted(stale[p][stale[p] >= 0].tolist()) == sorted(written[:-1].tolist())
            saw_update_of_queried_key |= len(written) > 1
        assert np.all(stale[~mask] == -1)
        if filler == "zero":
            assert np.all(tok[np.setdiff1d(np.arange(2 * (n + u), 128), qpos)] == 0)
    assert saw_update_of_queried_key


def test_updates_are_uniform_over_keys():
    task = _task(num_kv_pairs=4, num_updates=20, seq_len=128)
    counts = np.zeros(4)
    for i in range(200):
        tok = task[i]["tokens"]
        first = tok[0:8:2].tolist()
        for k in tok[8:48:2]:
            counts[first.index(int(k))] += 1
    # 1000 expected per key
    assert np.all(np.abs(counts - 1000) < 150), counts


def test_zero_updates_is_mqar_shaped():
    ex = _task(num_updates=0, seq_len=64, num_kv_pairs=4)[0]
    assert ex["loss_mask"].sum() == 4


@pytest.mark.parametrize(
    "kw,field",
    [({"num_updates": 50}, "num_updates"), ({"vocab_size": 16}, "vocab_size"),
     ({"seq_len": 127}, "seq_len"), ({"num_updates": -1}, "num_updates")],
)
def test_bad_config(kw, field):
    with pytest.raises(ValueError, match=field):
        _task(**kw)


def test_determinism_and_difference_from_mqar():
    a, b = _task(), _task()
    np.testing.assert_array_equal(a[4]["tokens"], b[4]["tokens"])
    assert not np.array_equal(a[4]["tokens"], a[5]["tokens"])
    m = MQAR(vocab_size=512, seq_len=128, num_kv_pairs=8, seed=2, num_examples=10)
    assert not np.array_equal(m[0]["tokens"], _task(num_updates=0)[0]["tokens"])

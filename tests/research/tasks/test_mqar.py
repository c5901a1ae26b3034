"""Defining properties of the MQAR generator (Zoology's definition)."""

import pickle

import numpy as np
import pytest

from research.tasks import MQAR, power_law_gap_probs


def _task(**kw):
    base = {"vocab_size": 256, "seq_len": 64, "num_kv_pairs": 4, "seed": 3, "num_examples": 1000}
    base.update(kw)
    return MQAR(**base)


def test_example_format_and_dtypes():
    task = _task()
    ex = task[7]
    assert set(ex) == {"tokens", "targets", "loss_mask", "prefix_length"}
    assert ex["tokens"].dtype == np.int32 and ex["targets"].dtype == np.int32
    assert ex["loss_mask"].dtype == np.bool_
    assert ex.pop("prefix_length") == 8 and task.prompt_len == 8  # the kv context
    for v in ex.values():
        assert v.shape == (64,)
    assert len(task) == 1000
    assert task.vocab_size == 256


def test_deterministic_in_seed_and_index():
    a, b = _task(seed=5), _task(seed=5)
    for i in (0, 1, 999):
        for key in ("tokens", "targets", "loss_mask"):
            np.testing.assert_array_equal(a[i][key], b[i][key])
    assert not np.array_equal(a[0]["tokens"], a[1]["tokens"])
    assert not np.array_equal(a[0]["tokens"], _task(seed=6)[0]["tokens"])
    # picklable (grain workers) and negative indexing
    c = pickle.loads(pickle.dumps(a))
    np.testing.assert_array_equal(c[3]["tokens"], a[3]["tokens"])
    np.testing.assert_array_equal(a[-1]["tokens"], a[999]["tokens"])
    with pytest.raises(IndexError):
        a[1000]


@pytest.mark.parametrize("filler", ["random", "zero"])
@pytest.mark.parametrize("n,L,V", [(4, 64, 256), (16, 256, 512), (1, 4, 8)])
def test_defining_properties(filler, n, L, V):
    task = _task(vocab_size=V, seq_len=L, num_kv_pairs=n, filler=filler, seed=11)
    half = V // 2
    for i in range(40):
        ex = task[i]
        tok, tgt, mask = ex["tokens"], ex["targets"], ex["loss_mask"]
        keys, values = tok[0 : 2 * n : 2], tok[1 : 2 * n : 2]
        # keys from the lower half (excluding 0), values from the upper half, all distinct
        assert np.all((keys >= 1) & (keys < half)), keys
        assert np.all((values >= half) & (values < V)), values
        assert len(set(keys.tolist())) == n and len(set(values.tolist())) == n
        # no labels inside the context; exactly n query positions, at even offsets after it
        assert not mask[: 2 * n].any()
        qpos = np.flatnonzero(mask)
        assert len(qpos) == n
        assert np.all((qpos - 2 * n) % 2 == 0)
        # each key queried exactly once, the target being its value
        binding = dict(zip(keys.tolist(), values.tolist()))
        assert sorted(tok[qpos].tolist()) == sorted(keys.tolist())
        for p in qpos:
            assert tgt[p] == binding[int(tok[p])]
        assert np.all(tgt[~mask] == 0)
        filler_pos = np.setdiff1d(np.arange(2 * n, L), qpos)
        if filler == "zero":
            assert np.all(tok[filler_pos] == 0)
        else:
            assert np.all((tok >= 0) & (tok < V))


def test_random_filler_is_uniform_over_vocab():
    task = _task(vocab_size=64, seq_len=60, num_kv_pairs=2, seed=1)
    fill = []
    for i in range(300):
        ex = task[i]
        pos = np.setdiff1d(np.arange(4, 60), np.flatnonzero(ex["loss_mask"]))
        fill.append(ex["tokens"][pos])
    counts = np.bincount(np.concatenate(fill), minlength=64)
    # ~253 per token; every token appears and none dominates
    assert counts.min() > 150 and counts.max() < 330


def test_gap_distribution_follows_power_law():
    # With one kv pair, the query gap is one draw from p(g) ~ a (g+1)^(a-1).
    L, a = 64, 0.01
    task = _task(vocab_size=128, seq_len=L, num_kv_pairs=1, power_a=a, num_examples=4000)
    slots = task.num_gap_slots
    gaps = np.array([(np.flatnonzero(task[i]["loss_mask"])[0] - 2) // 2 for i in range(4000)])
    p = power_law_gap_probs(slots, a)
    expected = p * len(gaps)
    observed = np.bincount(gaps, minlength=slots)
    # gap 0 carries ~ 1/H(slots) of the mass: check it and a chi-square over coarse bins
    assert abs(observed[0] - expected[0]) < 4 * np.sqrt(expected[0])
    edges = [0, 1, 2, 4, 8, 16, slots]
    obs_b = np.add.reduceat(observed, edges[:-1])
    exp_b = np.add.reduceat(expected, edges[:-1])
    chi2 = float(((obs_b - exp_b) ** 2 / exp_b).sum())
    assert chi2 < 20.5  # 99.9% quantile with 5 dof
    # decreasing and a power law: log p is linear in log(g+1) with slope a - 1
    slope = np.polyfit(np.log(np.arange(1, slots + 1)), np.log(p), 1)[0]
    assert abs(slope - (a - 1)) < 1e-9
    # a = 1 is uniform
    np.testing.assert_allclose(power_law_gap_probs(10, 1.0), np.full(10, 0.1))


@pytest.mark.parametrize(
    "kw,field",
    [
        ({"seq_len": 63}, "seq_len"),
        ({"num_kv_pairs": 17}, "num_kv_pairs"),
        ({"vocab_size": 8}, "num_kv_pairs"),
        ({"vocab_size": 2}, "vocab_size"),
        ({"filler": "ones"}, "filler"),
        ({"power_a": 0.0}, "power_a"),
        ({"num_examples": 0}, "num_examples"),
    ],
)
def test_bad_config_names_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        _task(**kw)


def test_batch_stacks():
    b = _task().batch([0, 5, 9])
    assert b["tokens"].shape == (3, 64) and b["loss_mask"].shape == (3, 64)


def test_jrt_prompt_repeats_the_context_before_the_queries():
    plain, jrt = _task(), _task(jrt_prompt=True)
    for i in range(10):
        a, b = plain[i], jrt[i]
        n2 = 8
        np.testing.assert_array_equal(b["tokens"][:n2], b["tokens"][n2:2 * n2])
        assert int(b["prefix_length"]) == 2 * n2 == jrt.prompt_len
        q = np.flatnonzero(b["loss_mask"])
        assert len(q) == 4 and q.min() >= 2 * n2 and (q - 2 * n2).max() // 2 < jrt.num_gap_slots
        keys, values = b["tokens"][:n2:2], b["tokens"][1:n2:2]
        bound = dict(zip(keys.tolist(), values.tolist()))
        assert all(bound[k] == v for k, v in zip(b["tokens"][q], b["targets"][q]))
        assert set(a["tokens"][:n2:2]) == set(keys)  # same draws: the plain example's pairs
    with pytest.raises(ValueError, match="jrt_prompt"):
        _task(jrt_prompt=True, seq_len=40, num_kv_pairs=8)

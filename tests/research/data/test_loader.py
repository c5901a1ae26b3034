"""The grain pipeline: determinism, epochs, process sharding, checkpointable iterator state."""

import numpy as np
import pytest

from research.data import eval_batches, train_dataset
from research.tasks import MQAR


@pytest.fixture(scope="module")
def task():
    return MQAR(vocab_size=64, seq_len=16, num_kv_pairs=2, seed=3, num_examples=50)


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_batches_are_deterministic_and_reshuffled_per_epoch(task):
    a = _take(iter(train_dataset(task, batch_size=10, seed=1)), 10)
    b = _take(iter(train_dataset(task, batch_size=10, seed=1)), 10)
    c = _take(iter(train_dataset(task, batch_size=10, seed=2)), 1)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["tokens"], y["tokens"])
    assert not np.array_equal(a[0]["tokens"], c[0]["tokens"])
    assert a[0]["tokens"].shape == (10, 16) and a[0]["tokens"].dtype == np.int32
    assert a[0]["loss_mask"].dtype == bool
    # epoch 1 (batches 0-4) and epoch 2 (5-9) hold every example once, in different orders
    epoch1 = np.concatenate([x["tokens"] for x in a[:5]])
    epoch2 = np.concatenate([x["tokens"] for x in a[5:]])
    key = lambda arr: sorted(map(bytes, arr))
    assert key(epoch1) == key(epoch2) == key(np.stack([task[i]["tokens"] for i in range(50)]))
    assert not np.array_equal(epoch1, epoch2)


def test_iterator_state_resumes_exactly(task):
    it = iter(train_dataset(task, batch_size=8, seed=5))
    _take(it, 7)
    state = it.get_state()
    expected = _take(it, 5)
    it2 = iter(train_dataset(task, batch_size=8, seed=5))
    it2.set_state(state)
    for x, y in zip(expected, _take(it2, 5)):
        np.testing.assert_array_equal(x["tokens"], y["tokens"])
        np.testing.assert_array_equal(x["targets"], y["targets"])


def test_processes_split_the_same_global_batch(task):
    whole = _take(iter(train_dataset(task, batch_size=8, seed=9)), 4)
    parts = [_take(iter(train_dataset(task, batch_size=8, seed=9, process_index=p,
                                      process_count=2)), 4) for p in range(2)]
    for s in range(4):
        joined = np.concatenate([parts[0][s]["tokens"], parts[1][s]["tokens"]])
        np.testing.assert_array_equal(joined, whole[s]["tokens"])


def test_eval_batches_in_order_and_sharded(task):
    ev = eval_batches(task, batch_size=4, num_batches=3)
    np.testing.assert_array_equal(ev[1]["tokens"][0], task[4]["tokens"])
    halves = [eval_batches(task, batch_size=4, num_batches=3, process_index=p, process_count=2)
              for p in range(2)]
    np.testing.assert_array_equal(
        np.concatenate([halves[0][2]["tokens"], halves[1][2]["tokens"]]), ev[2]["tokens"])


def test_bad_arguments():
    task = MQAR(vocab_size=64, seq_len=16, num_kv_pairs=2, num_examples=10)
    with pytest.raises(ValueError, match="batch_size"):
        train_dataset(task, batch_size=3, seed=0, process_count=2)
    with pytest.raises(ValueError, match="process_index"):
        train_dataset(task, batch_size=4, seed=0, process_index=2, process_count=2)
    with pytest.raises(ValueError, match="source"):
        train_dataset(object(), batch_size=4, seed=0)

"""Probes on tiny models: metric plumbing against an oracle, decay half-lives against the
configured initial half-life, state norms through the decode cache, and the JSON/PNG runner."""

import json
import math

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import research
from research.probes import (
    ProbeSettings,
    decay_statistics,
    evaluate_task,
    half_life,
    length_extrapolation,
    recall_vs_kv_pairs,
    run_probes,
    state_norms,
)
from research.tasks import MQAR, ForgettingMQAR, RegularLanguages


class RecallOracle(nnx.Module):
    """Answers an MQAR-style query with the value written right after the key's FIRST (or last)
    occurrence in the first `context` tokens: logits [B, T, V] one-hot."""

    def __init__(self, vocab_size, context, last=False):
        self.vocab_size, self.context, self.last = vocab_size, context, last

    def __call__(self, tokens):
        keys, vals = tokens[:, 0 : self.context : 2], tokens[:, 1 : self.context : 2]
        match = tokens[:, :, None] == keys[:, None, :]                     # [B, T, C]
        n = keys.shape[1]
        idx = jnp.arange(n)
        pick = jnp.where(match, idx if self.last else n - idx, -1).argmax(-1)
        ans = jnp.take_along_axis(vals, pick, axis=1)                      # [B, T]
        return 20.0 * jnp.eye(self.vocab_size)[ans]


def _tiny(**kw):
    base = {"mixer": "gla", "vocab_size": 64, "d_model": 16, "n_layers": 2, "n_heads": 2, "d_ff": 32}
    base.update(kw)
    return research.LanguageModel(research.ModelConfig(**base), rngs=nnx.Rngs(0))


def test_evaluate_task_with_an_oracle():
    task = MQAR(vocab_size=64, seq_len=32, num_kv_pairs=4, seed=1, num_examples=100)
    m = evaluate_task(RecallOracle(64, 8), task, num_examples=20, batch_size=8)
    assert m["accuracy"] == 1.0 and m["sequence_accuracy"] == 1.0
    assert m["num_examples"] == 20 and m["num_positions"] == 80
    assert m["loss"] < 1e-3
    fm = ForgettingMQAR(vocab_size=64, seq_len=48, num_kv_pairs=4, num_updates=6, seed=1,
                        num_examples=50)
    latest = evaluate_task(RecallOracle(64, 20, last=True), fm, 20, 8)
    first = evaluate_task(RecallOracle(64, 20, last=False), fm, 20, 8)
    assert latest["accuracy"] == 1.0 and latest["stale_rate"] == 0.0
    # recalling the first binding is stale exactly where the key was updated
    assert first["accuracy"] + first["stale_rate"] == pytest.approx(1.0)
    assert first["stale_rate"] > 0.3


def test_evaluate_random_model_and_dfa_metrics():
    model = _tiny(vocab_size=32)
    m = evaluate_task(model, RegularLanguages(seq_len=24, vocab_size=32, num_examples=20), 6, 4)
    assert 0 <= m["dfa_accuracy"] <= 1 and 0 <= m["dfa_tvd"] <= 1
    assert math.isfinite(m["loss"]) and m["loss"] > 1.0


class TableModel(nnx.Module):
    """Looks its input up in a table of token rows and returns that row's logits [B, T, V]."""

    def __init__(self, tokens, logits):
        self.tokens = nnx.Variable(jnp.asarray(tokens))
        self.logits = nnx.Variable(jnp.asarray(logits))

    def __call__(self, tokens):
        row = (tokens[:, None, :] == self.tokens[...][None]).all(-1).argmax(-1)  # [B]
        return self.logits[...][row]


def test_dfa_metrics_against_strings_seen():
    """An oracle that predicts an illegal letter in an example's first string and the true next
    letter afterwards: dfa_accuracy@0 = 0, every later bin 1, the total their position share."""
    from research.probes.evaluate import DFA_BINS
    from research.tasks.regular_languages import NUM_LETTERS, SEPARATOR
    task = RegularLanguages(seq_len=96, vocab_size=32, split="test", num_examples=8)
    tokens = np.stack([task[i]["tokens"] for i in range(8)])
    targets = np.stack([task[i]["targets"] for i in range(8)])
    ann = task.batch_annotations(range(8))
    seen = np.cumsum(tokens == SEPARATOR, axis=1)
    illegal = np.argmin(ann["legal"][..., :NUM_LETTERS], -1)       # a letter with no edge
    assert not np.take_along_axis(ann["legal"], illegal[..., None], -1).any()
    logits = 30.0 * np.eye(32)[np.where(seen == 0, illegal, targets)]
    m = evaluate_task(TableModel(tokens, logits), task, num_examples=8, batch_size=4)
    scored = ann["eval_mask"]
    assert m["dfa_accuracy@0"] == 0.0 and m["dfa_tvd@0"] == pytest.approx(1.0, abs=1e-6)
    for name, low, _ in DFA_BINS[1:]:
        if (scored & (seen >= low)).any():
            assert m[f"dfa_accuracy@{name}"] == 1.0
    assert "dfa_accuracy@4+" in m and "dfa_accuracy@1" in m       # 96 tokens reach 4 strings
    assert m["dfa_accuracy"] == pytest.approx((scored & (seen > 0)).sum() / scored.sum())
    # a bin's tvd is 1 - 1 / (legal letters) at the one-hot true letter
    legal_n = ann["legal"][..., :NUM_LETTERS].sum(-1)
    in1 = scored & (seen == 1)
    assert m["dfa_tvd@1"] == pytest.approx((1 - 1 / legal_n[in1]).mean(), abs=1e-6)


def test_length_and_kv_pair_probes():
    task = MQAR(vocab_size=64, seq_len=16, num_kv_pairs=2, num_examples=50)
    oracle = RecallOracle(64, 4)
    rows = length_extrapolation(oracle, task, (1, 2, 4), num_examples=8, batch_size=8)
    assert [r["seq_len"] for r in rows] == [16, 32, 64]
    assert all(r["accuracy"] == 1.0 for r in rows)
    rows = recall_vs_kv_pairs(RecallOracle(64, 8), task.with_(seq_len=32), (1, 2, 4), 8, 8)
    assert [r["num_kv_pairs"] for r in rows] == [1, 2, 4]
    assert rows[-1]["accuracy"] == 1.0  # the oracle reads exactly 4 pairs


def test_half_life():
    np.testing.assert_allclose(half_life([-math.log(2), -math.log(2) / 10]), [1.0, 10.0])
    assert half_life([0.0])[0] == np.inf


@pytest.mark.parametrize("decay,tol", [("fixed", 1e-5), ("scalar", 0.3), ("vector", 0.3)])
def test_decay_statistics_match_the_initial_half_life(decay, tol):
    model = _tiny(decay=decay, init_half_life=12.0)
    tokens = np.random.default_rng(0).integers(0, 64, size=(2, 16))
    stats = decay_statistics(model, tokens)
    assert len(stats["layers"]) == 2
    for layer in stats["layers"]:
        assert layer["kind"] == decay
        assert len(layer["heads"]) == 2
        for h in layer["heads"]:
            assert h["median_half_life"] == pytest.approx(12.0, rel=tol)
            assert h["p10_half_life"] <= h["median_half_life"] <= h["p90_half_life"]
    none = decay_statistics(_tiny(mixer="linear_attention"), tokens)
    assert [layer["kind"] for layer in none["layers"]] == ["none", "none"]


def test_state_norms_are_consistent_across_chunk_sizes():
    model = _tiny()
    tokens = np.random.default_rng(1).integers(0, 64, size=(2, 32))
    a = state_norms(model, tokens, chunk=8)
    b = state_norms(model, tokens, chunk=16)
    np.testing.assert_array_equal(a["positions"], [8, 16, 24, 32])
    assert a["layers"][0]["norm"].shape == (4, 2)
    for la, lb in zip(a["layers"], b["layers"]):
        np.testing.assert_allclose(la["norm"][1::2], lb["norm"], rtol=1e-4)
        assert np.all(la["norm"] > 0)
    with pytest.raises(ValueError, match="chunk"):
        state_norms(model, tokens, chunk=5)


def test_run_probes_writes_json_and_png(tmp_path):
    from research.train.config import get_preset
    config = get_preset("test-tiny")
    model = research.LanguageModel(config.model, rngs=nnx.Rngs(0))
    settings = ProbeSettings(num_examples=8, batch_size=8, factors=(1, 2), kv_pairs=(1, 2),
                             decay_examples=2, state_norm_examples=2, state_norm_chunk=8)
    results = run_probes(model, config, tmp_path, settings=settings)
    assert set(results) == {"task", "length", "kv_pairs", "decay", "state_norm"}
    for name in ("task", "length", "kv_pairs", "decay", "state_norm", "summary"):
        assert json.loads((tmp_path / f"{name}.json").read_text())
    for name in ("length", "kv_pairs", "decay", "state_norm"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="passkey"):
        run_probes(model, config, tmp_path, names=["passkey"], settings=settings)


def test_run_probes_on_a_text_model(tmp_path):
    from research.train.config import get_preset
    config = get_preset("shakespeare-byte").override(
        "model.d_model=16", "model.n_layers=1", "model.d_ff=32", "data.seq_len=32")
    model = research.LanguageModel(config.model, rngs=nnx.Rngs(0))
    settings = ProbeSettings(num_examples=4, batch_size=4, factors=(1, 2), decay_examples=2,
                             state_norm_examples=2, state_norm_chunk=16)
    results = run_probes(model, config, tmp_path, settings=settings)
    assert set(results) == {"task", "length", "decay", "state_norm"}
    assert [r["seq_len"] for r in results["length"]] == [32, 64]
    assert all(4.0 < r["loss"] < 7.0 for r in results["length"])  # ~ln(256) untrained
    assert (tmp_path / "length.png").exists()

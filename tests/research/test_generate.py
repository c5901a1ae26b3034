"""research.generate: jitted prefill + decode, consistent with the full forward pass."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import research
from research.generate import _generate, sample_logits


def tiny(**kw):
    base = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=2, d_ff=48, conv_size=3,
                window_size=4, chunk_size=8)
    base.update(kw)
    return research.ModelConfig(**base)


@pytest.mark.parametrize("kw", [dict(mixer="gla"),
                                dict(mixer="deltanet", layer_pattern=("deltanet", "sliding_window_attention"))],
                         ids=["gla", "hybrid"])
def test_greedy_generation_is_the_argmax_of_the_full_pass(kw):
    model = research.LanguageModel(tiny(**kw), rngs=nnx.Rngs(0))
    prompt = jax.random.randint(jax.random.key(1), (2, 7), 0, 64)
    out = research.generate(model, prompt, max_new_tokens=6, temperature=0.0)
    assert out.shape == (2, 13) and out.dtype == jnp.int32
    np.testing.assert_array_equal(out[:, :7], prompt)
    logits = nnx.jit(lambda m, t: m(t))(model, out)
    np.testing.assert_array_equal(jnp.argmax(logits[:, 6:-1], -1), out[:, 7:])


def test_generation_is_jitted_once_and_sampling_is_seeded():
    model = research.LanguageModel(tiny(mixer="gla"), rngs=nnx.Rngs(0))
    prompt = jax.random.randint(jax.random.key(1), (3, 5), 0, 64)
    before = _generate._cache_size()
    a = research.generate(model, prompt, 5, temperature=1.0, top_k=8, rng=jax.random.key(0))
    b = research.generate(model, prompt, 5, temperature=1.0, top_k=8, rng=jax.random.key(0))
    c = research.generate(model, prompt, 5, temperature=1.0, top_k=8, rng=jax.random.key(1))
    assert _generate._cache_size() == before + 1
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert int(a.min()) >= 0 and int(a.max()) < 64


def test_sample_logits_top_k_and_greedy():
    logits = jax.random.normal(jax.random.key(0), (4, 10))
    greedy = sample_logits(logits, None, temperature=0.0, top_k=None)
    top1 = sample_logits(logits, jax.random.key(1), temperature=1.0, top_k=1)
    np.testing.assert_array_equal(greedy, top1)
    top3 = jax.lax.top_k(logits, 3)[1]
    for seed in range(5):
        s = sample_logits(logits, jax.random.key(seed), temperature=2.0, top_k=3)
        assert all(int(s[i]) in np.asarray(top3[i]) for i in range(4))


@pytest.mark.parametrize("args,match", [
    (dict(prompt=jnp.zeros((2,), jnp.int32) + 1), "prompt"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(temperature=-1.0), "temperature"),
    (dict(top_k=100), "top_k"),
    (dict(temperature=1.0, rng=None), "rng"),
])
def test_bad_arguments(args, match):
    model = research.LanguageModel(tiny(mixer="gla", n_layers=1), rngs=nnx.Rngs(0))
    call = dict(prompt=jnp.ones((1, 3), jnp.int32), max_new_tokens=2, temperature=0.0, top_k=None,
                rng=jax.random.key(0))
    call.update(args)
    with pytest.raises(ValueError, match=match):
        research.generate(model, **call)

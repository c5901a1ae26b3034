"""The trainer's memory options change memory only: `train.loss_chunk_size` (the chunked
cross-entropy equals the whole-logits one, sums and gradients, for tied and untied heads and a T
that the chunk does not divide) and `train.remat_policy` (the same gradients)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import research.train as rt
from research.config import ModelConfig
from research.model import REMAT_POLICIES, LanguageModel
from research.train import trainer


def _setup(tie: bool, mixer: str = "gla"):
    cfg = ModelConfig(mixer=mixer, vocab_size=97, d_model=16, n_layers=1, n_heads=2, d_ff=32,
                      tie_embeddings=tie, conv_size=4)
    model = LanguageModel(cfg, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    rng = np.random.default_rng(0)
    B, T = 2, 12
    batch = {"tokens": jnp.asarray(rng.integers(0, 97, (B, T)), jnp.int32),
             "targets": jnp.asarray(rng.integers(0, 97, (B, T)), jnp.int32),
             "loss_mask": jnp.asarray(rng.random((B, T)) < 0.8)}
    return graphdef, params, nnx.to_pure_dict(params), rest, batch


@pytest.mark.parametrize("tie,dtype,tol", [
    (True, jnp.float32, 1e-5),  # the fast default case; the others are slow on 2 CPU cores
    pytest.param(False, jnp.float32, 1e-5, marks=pytest.mark.slow),
    pytest.param(True, jnp.bfloat16, 2e-2, marks=pytest.mark.slow),
    pytest.param(False, jnp.bfloat16, 2e-2, marks=pytest.mark.slow),
])
def test_chunked_loss_matches_the_whole_logits(tie, dtype, tol):
    graphdef, abs_params, pure, rest, batch = _setup(tie)

    def loss(p, chunk):
        s, n, c, a = trainer._masked_sums(graphdef, abs_params, p, rest, batch, dtype, chunk)
        return s + a, (s, n, c)

    grad = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
    (_, ref), g_ref = grad(pure, 0)
    for chunk in (5, 64):  # 5 does not divide T = 12; 64 > T: one chunk
        (_, out), g = grad(pure, chunk)
        for a, b in zip(out, ref):
            np.testing.assert_allclose(float(a), float(b), rtol=tol)
        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
            scale = float(jnp.abs(b).max()) + 1e-12
            assert float(jnp.abs(a - b).max()) <= tol * scale


def test_remat_policy_gives_the_same_gradients():
    graphdef, abs_params, pure, rest, batch = _setup(True, "deltanet")
    batch["segment_ids"] = jnp.asarray([[0] * 6 + [1] * 6, [0] * 12], jnp.int32)

    def loss(p, policy):
        s, n, c, a = trainer._masked_sums(graphdef, abs_params, p, rest, batch, jnp.float32, 0,
                                          policy)
        return s + a

    ref = jax.grad(loss)(pure, None)
    got = jax.grad(loss)(pure, REMAT_POLICIES["save_dots_and_kernels"])
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_memory_options_are_validated():
    with pytest.raises(ValueError, match="train.loss_chunk_size"):
        rt.get_preset("test-tiny").override("train.loss_chunk_size=-1")
    with pytest.raises(ValueError, match="train.remat_policy"):
        rt.get_preset("test-tiny").override("train.remat_policy=dots")
    assert rt.get_preset("test-tiny").override("train.loss_chunk_size=8").train.loss_chunk_size \
        == 8

"""impl="pallas" for linear_attention, simple_gla, gla and gsa against the float64 recurrence, in
both interpret flavours on CPU (the `pallas_flavour` fixture: the TPU kernels on two interpreted
cores with the race detector, the Triton kernels under `interpret=True`): outputs, final states and the gradients of q, k, v,
every gate and the initial state (the loss reaches through the final state), at ragged T, with
segment ids, initial states and strong decay. The shared stages on their own: test_stages.py."""

import jax
import jax.numpy as jnp
import pytest
from conftest import rel_rms
from oracle64 import compare, make_inputs

import pallas_kernels

FAMILY = ("linear_attention", "simple_gla", "gla", "gsa")
BOTH = pytest.mark.parametrize("pallas_flavour", ["tpu", "triton"], indirect=True)


def assert_matches_oracle(op, tol, *, chunk_size, dtype=jnp.float32, **shapes):
    """impl="pallas" on `make_inputs(op, **shapes)` against the float64 oracle: every relative
    error (outputs, final state, gradients) below `tol`."""
    inputs, h, seg = make_inputs(op, **shapes)
    errs = compare(op, inputs, h, seg, impl="pallas", dtype=dtype, chunk_size=chunk_size)
    assert max(errs.values()) < tol, errs


@BOTH
@pytest.mark.parametrize("op", FAMILY)
def test_float32_segments_initial_state_ragged(op, pallas_flavour):
    assert_matches_oracle(op, 2e-3, chunk_size=16, B=2, T=45, H=2, K=16, V=32, M=16, decay=1.0,
                          seed=11)


@BOTH
@pytest.mark.parametrize("op", ["simple_gla", "gla", "gsa"])
def test_strong_decay_no_segments(op, pallas_flavour):
    """log-decays around -8 per step: exp(b) spans far beyond float32 within one chunk."""
    assert_matches_oracle(op, 2e-3, chunk_size=32, B=1, T=40, H=1, K=16, V=16, M=16, decay=8.0,
                          seed=12, segments=False)


@BOTH
@pytest.mark.parametrize("op", FAMILY)
def test_bfloat16(op, pallas_flavour):
    assert_matches_oracle(op, 2e-2, chunk_size=16, dtype=jnp.bfloat16, B=1, T=40, H=1, K=16,
                          V=16, M=16, decay=2.0, seed=13)


@pytest.mark.parametrize("pallas_flavour", ["triton"], indirect=True)
@pytest.mark.parametrize("op", FAMILY)
def test_no_initial_state_and_final_state_only_loss(op, pallas_flavour):
    inputs, _, seg = make_inputs(op, B=1, T=33, H=1, K=16, V=16, M=16, seed=14, initial_state=False)
    errs = compare(op, inputs, None, seg, impl="pallas", chunk_size=16)
    assert max(errs.values()) < 2e-3, errs
    xs = [jnp.asarray(x) for x in inputs]
    fn = getattr(pallas_kernels, op)

    def f(k, impl):
        args = list(xs)
        args[1] = k
        _, s = fn(*args, output_final_state=True, chunk_size=16, impl=impl)
        return sum(jnp.sum(a**2) for a in jax.tree.leaves(s))

    g1 = jax.grad(f)(xs[1], "pallas")
    g2 = jax.grad(f)(xs[1], "reference")
    assert rel_rms(g1, g2) < 2e-3 and float(jnp.abs(g2).max()) > 0


@pytest.mark.slow
@BOTH
@pytest.mark.parametrize("op", FAMILY)
def test_larger_chunks_and_head_dims(op, pallas_flavour):
    assert_matches_oracle(op, 2e-3, chunk_size=64, B=1, T=150, H=2, K=64, V=32, M=32, decay=1.0,
                          seed=15)


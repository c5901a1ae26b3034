"""The TPU flavour's fused kernels (pallas_kernels/pallas/chunk_fused.py), interpreted on CPU:
the forward without gradients (the primal kernel, which writes no per-chunk states; the oracle
tests of the other files run it under differentiation) against the float32 reference, and the
[B, T, H, D] blocks of 8 heads (H = 16: two head blocks per chunk, each a loop over its heads)
against the float64 oracle, gradients included; ttt_linear on the delta rule's kernels."""

import jax
import jax.numpy as jnp
import pytest
from conftest import rel_rms
from oracle64 import compare, make_inputs

import pallas_kernels

FUSED = ("linear_attention", "simple_gla", "gla", "gsa", "delta_rule", "gated_delta_rule")


@pytest.mark.parametrize("pallas_flavour", ["tpu"], indirect=True)
@pytest.mark.parametrize("op", FUSED)
@pytest.mark.parametrize("H,decay", [(2, 6.0), (16, 1.0)], ids=["strong-decay", "head-blocks"])
def test_forward_without_gradients(op, H, decay, pallas_flavour):
    inputs, h0, seg = make_inputs(op, B=2, T=37, H=H, K=16, V=32, M=16, decay=decay, seed=31)
    xs = [jnp.asarray(x) for x in inputs]
    h0 = jax.tree.map(jnp.asarray, h0)
    fn = getattr(pallas_kernels, op)
    run = lambda impl: fn(*xs, initial_state=h0, segment_ids=jnp.asarray(seg),  # noqa: E731
                          output_final_state=True, chunk_size=16, impl=impl)
    (o, s), (o_ref, s_ref) = run("pallas"), run("reference")
    assert rel_rms(o, o_ref) < 2e-3
    for a, b in zip(jax.tree.leaves(s), jax.tree.leaves(s_ref)):
        assert rel_rms(a, b) < 2e-3


@pytest.mark.parametrize("pallas_flavour", ["tpu"], indirect=True)
@pytest.mark.parametrize("op", ("linear_attention", "simple_gla", "gla", "gsa", "delta_rule",
                                "gated_delta_rule"))
def test_head_blocks_against_float64(op, pallas_flavour):
    inputs, h, seg = make_inputs(op, B=1, T=37, H=16, K=16, V=32, M=16, decay=1.0, seed=16)
    errs = compare(op, inputs, h, seg, impl="pallas", chunk_size=16)
    assert max(errs.values()) < 2e-3, errs


@pytest.mark.parametrize("pallas_flavour", ["tpu"], indirect=True)
@pytest.mark.parametrize("b", [4, 16])
def test_ttt_linear_forward_without_gradients_and_head_blocks(b, pallas_flavour):
    """ttt_linear on the delta rule's fused kernels (the mini-batch mask): the primal kernel
    against the reference, and 16 heads (two head blocks) against the float64 oracle."""
    inputs, h0, seg = make_inputs("ttt_linear", B=1, T=45, H=16, K=16, V=32, seed=41,
                                  segments=False)
    xs = [jnp.asarray(x) for x in inputs]
    run = lambda impl: pallas_kernels.ttt_linear(  # noqa: E731
        *xs, initial_state=jnp.asarray(h0), output_final_state=True, chunk_size=16,
        mini_batch_size=b, impl=impl)
    (o, s), (o_ref, s_ref) = run("pallas"), run("reference")
    assert rel_rms(o, o_ref) < 2e-3 and rel_rms(s, s_ref) < 2e-3
    errs = compare("ttt_linear", inputs, h0, seg, impl="pallas", chunk_size=16,
                   options={"mini_batch_size": b})
    assert max(errs.values()) < 2e-3, errs


@pytest.mark.parametrize("pallas_flavour", ["tpu"], indirect=True)
@pytest.mark.parametrize("op", [pytest.param(op, marks=pytest.mark.slow) if op in ("gla", "gsa")
                                else op for op in FUSED + ("ttt_linear",)])  # slow: 50-90 s each
def test_long_sequence_against_float64(op, pallas_flavour):
    """T = 4096 (64 chunks walked by one kernel, the state in VMEM all along), weak decay:
    outputs, final states and every gradient still on the float64 recurrence."""
    seg = op != "ttt_linear"
    inputs, h, ids = make_inputs(op, B=1, T=4096, H=1, K=16, V=16, M=4, decay=0.05, seed=7,
                                 segments=seg)
    errs = compare(op, inputs, h, ids, impl="pallas", chunk_size=64)
    assert max(errs.values()) < 2e-3, errs

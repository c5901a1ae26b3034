"""The reference and chunked-XLA paths of every op against an independent float64 recurrence:
outputs, final states and every gradient, at awkward sizes, with segment ids, initial states and
decays from almost none to very strong."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import rel_rms
from hypothesis import given, settings
from hypothesis import strategies as st
from oracle64 import compare, make_inputs

import pallas_kernels

OPS = pallas_kernels.OPS

# (B, T, H, K, V, chunk, decay, segments, initial_state)
CASES = [
    (2, 63, 2, 16, 32, 16, 1.0, True, True),
    (1, 100, 3, 32, 16, 32, 8.0, True, False),
    (2, 37, 1, 64, 64, 64, 1 / 16, False, True),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"T{c[1]}K{c[3]}V{c[4]}C{c[5]}d{c[6]:g}")
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("impl", ["xla", "reference"])
def test_matches_float64(op, impl, case):
    B, T, H, K, V, C, decay, segments, h0 = case
    inputs, h, seg = make_inputs(op, B=B, T=T, H=H, K=K, V=V, decay=decay, segments=segments,
                                 initial_state=h0, seed=hash((op, T)) % 1000)
    errs = compare(op, inputs, h, seg, impl=impl, chunk_size=C)
    assert max(errs.values()) < 1e-3, errs


@pytest.mark.parametrize("op", OPS)
def test_bfloat16_inputs(op):
    inputs, h, seg = make_inputs(op, T=50, K=32, V=32, decay=2.0, seed=3)
    errs = compare(op, inputs, h, seg, impl="xla", dtype=jnp.bfloat16, chunk_size=16)
    assert max(errs.values()) < 2e-2, errs


@pytest.mark.parametrize("op", ["delta_rule", "gated_delta_rule"])
@pytest.mark.parametrize("beta_range", ["near0", "near1"])
def test_delta_rule_unnormalised_keys_and_extreme_beta(op, beta_range):
    inputs, h, seg = make_inputs(op, T=70, K=16, V=16, key_norm="raw", seed=5)
    beta = inputs[-1]
    beta = 1e-3 * beta if beta_range == "near0" else 1.0 - 1e-3 * beta
    errs = compare(op, (*inputs[:-1], beta), h, seg, impl="xla", chunk_size=32)
    assert max(errs.values()) < 1e-3, errs


@pytest.mark.parametrize("op", OPS)
def test_long_sequence_stays_accurate(op):
    """T = 4096: finite, and still on the float64 recurrence (forward and state)."""
    inputs, h, seg = make_inputs(op, B=1, T=4096, H=1, K=16, V=16, M=4, decay=0.05, seed=7)
    errs = compare(op, inputs, h, seg, impl="xla", chunk_size=64)
    assert max(errs.values()) < 2e-3, errs


@settings(max_examples=6, deadline=None)
@given(
    op=st.sampled_from(OPS),
    T=st.integers(1, 80),
    H=st.integers(1, 3),
    K=st.sampled_from([4, 8, 20]),
    V=st.sampled_from([4, 12]),
    chunk=st.sampled_from([1, 8, 32]),
    segments=st.booleans(),
)
def test_property_shapes(op, T, H, K, V, chunk, segments):
    inputs, h, seg = make_inputs(op, B=1, T=T, H=H, K=K, V=V, M=4, segments=segments, seed=T)
    errs = compare(op, inputs, h, seg, impl="xla", chunk_size=chunk)
    assert max(errs.values()) < 1e-3, errs


@pytest.mark.parametrize("op", ["gla", "gated_delta_rule"])
def test_segment_id_that_comes_back_is_a_new_segment(op):
    """Ids 0 0 1 1 0 0 ...: every change resets, even back to an id seen before in the chunk."""
    inputs, h, _ = make_inputs(op, B=1, T=40, segments=False)
    seg = (np.arange(40)[None] // 5 % 2).astype(np.int32)
    errs = compare(op, inputs, h, seg, impl="xla", chunk_size=32)
    assert max(errs.values()) < 1e-3, errs


def test_chunk_size_does_not_change_the_answer():
    inputs, h, seg = make_inputs("gla", T=90, K=16, V=16, decay=3.0)
    outs = [pallas_kernels.gla(*inputs, initial_state=h, segment_ids=seg, chunk_size=c,
                               impl="xla")[0] for c in (16, 32, 64, 128)]
    for o in outs[1:]:
        assert rel_rms(o, outs[0]) < 1e-5


def test_output_dtype_and_final_state():
    inputs, h, _ = make_inputs("simple_gla", T=20)
    args = [jnp.asarray(x, jnp.bfloat16) for x in inputs]
    o, s = pallas_kernels.simple_gla(*args, impl="xla")
    assert o.dtype == jnp.bfloat16 and s is None
    o, s = pallas_kernels.simple_gla(*args, output_final_state=True, initial_state=jnp.asarray(h))
    assert s.dtype == jnp.float32 and s.shape == (2, 2, 16, 32)


def test_auto_is_xla_on_cpu():
    inputs, _, _ = make_inputs("gla", T=8)
    assert pallas_kernels.resolve_impl("gla", "auto", *inputs[:3], inputs[3:], 64) == "xla"


def _args(op, T=8):
    inputs, _, _ = make_inputs(op, T=T, segments=False, initial_state=False)
    return [jnp.asarray(x) for x in inputs]


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda a: {"args": [a[0][0], *a[1:]]}, r"q must have rank 4"),
        (lambda a: {"args": [a[0], a[1][:, :, :, :8], *a[2:]]}, r"q and k must have the same shape"),
        (lambda a: {"args": [a[0], a[1], a[2][:1], *a[3:]]}, r"v must share \[B, T, H\]"),
        (lambda a: {"args": [a[0].astype(jnp.int32), *a[1:]]}, r"q must be a floating-point"),
        (lambda a: {"args": [*a[:3], a[3][..., :3]]}, r"g must have shape \[2, 8, 2, 16\]"),
        (lambda a: {"args": a, "chunk_size": 48}, r"chunk_size must be a positive power of two, got 48"),
        (lambda a: {"args": a, "impl": "cuda"}, r"impl must be one of .*'cuda'"),
        (lambda a: {"args": a, "initial_state": jnp.zeros((2, 2, 16, 31))},
         r"initial_state must have shape \[B, H, K, V\] = \[2, 2, 16, 32\], got \(2, 2, 16, 31\)"),
        (lambda a: {"args": a, "segment_ids": jnp.zeros((2, 7), jnp.int32)},
         r"segment_ids must have shape \[B, T\] = \[2, 8\], got \(2, 7\)"),
        (lambda a: {"args": a, "segment_ids": jnp.zeros((2, 8))}, r"segment_ids must be an integer"),
    ],
)
def test_bad_input_names_the_argument(mutate, match):
    kw = mutate(_args("gla"))
    args = kw.pop("args")
    with pytest.raises(ValueError, match=match):
        pallas_kernels.gla(*args, **kw)


def test_gate_count_and_gsa_state_checked():
    a = _args("gsa")
    with pytest.raises(ValueError, match=r"initial_state for gsa must be a tuple"):
        pallas_kernels.gsa(*a, initial_state=jnp.zeros((2, 2, 16, 8)))
    b = _args("gated_delta_rule")
    with pytest.raises(ValueError, match=r"beta must have shape \[2, 8, 2\]"):
        pallas_kernels.gated_delta_rule(*b[:4], b[4][..., None])


def test_gradient_through_final_state_only():
    """A loss on the final state alone reaches q-independent inputs and the initial state."""
    inputs, h, seg = make_inputs("gated_delta_rule", T=40)
    xs = [jnp.asarray(x) for x in inputs]

    def f(h0, impl):
        return jnp.sum(pallas_kernels.gated_delta_rule(
            *xs, initial_state=h0, output_final_state=True, segment_ids=None, impl=impl,
            chunk_size=16)[1] ** 2)

    g1 = jax.grad(f)(jnp.asarray(h), "xla")
    g2 = jax.grad(f)(jnp.asarray(h), "reference")
    assert np.isfinite(np.asarray(g1)).all()
    assert rel_rms(g1, g2) < 1e-4 and float(jnp.abs(g1).max()) > 0
    # q reaches only the outputs: through the final state alone its gradient is exactly zero,
    # while k's is not (and agrees with the reference)
    def fk(q, k, impl):
        args = [q, k, *xs[2:]]
        return jnp.sum(pallas_kernels.gated_delta_rule(
            *args, output_final_state=True, impl=impl, chunk_size=16)[1] ** 2)

    gq, gk = jax.grad(fk, argnums=(0, 1))(xs[0], xs[1], "xla")
    _, gk_ref = jax.grad(fk, argnums=(0, 1))(xs[0], xs[1], "reference")
    assert float(jnp.abs(gq).max()) == 0.0
    assert rel_rms(gk, gk_ref) < 1e-4 and float(jnp.abs(gk).max()) > 1e-3


def test_op_table_matches_the_public_ops():
    """Every op of the table is public, with its gates as the positional arguments after q, k, v
    in the table's order; an unknown name is a ValueError naming the ops."""
    import inspect

    assert pallas_kernels.OPS == tuple(pallas_kernels.OP_SPECS)
    for name, sp in pallas_kernels.OP_SPECS.items():
        params = list(inspect.signature(getattr(pallas_kernels, name)).parameters)
        assert params[:3] == ["q", "k", "v"] and tuple(params[3:3 + len(sp.gates)]) == sp.gate_names
        assert pallas_kernels.spec(name) is sp
    with pytest.raises(ValueError, match="unknown op 'nope'.*gla"):
        pallas_kernels.spec("nope")

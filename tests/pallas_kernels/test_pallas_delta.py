"""`impl="pallas"` for delta_rule and gated_delta_rule against the float64 recurrences, in both
interpret flavours (TPU with race detection, Triton), plus ahead-of-time lowering for TPU (and
Triton, through an abstract H100)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from oracle64 import compare, make_inputs

import pallas_kernels
from pallas_kernels.pallas import _backend

OPS = ("delta_rule", "gated_delta_rule")
KINDS = ("tpu", "triton")


def _check(errs, tol):
    bad = {k: v for k, v in errs.items() if not v < tol}
    assert not bad, f"relative RMS above {tol}: {bad} (all: {errs})"


@pytest.mark.parametrize("pallas_flavour", KINDS, indirect=True)
@pytest.mark.parametrize("op", OPS)
def test_matches_float64_with_segments_and_initial_state(op, pallas_flavour):
    inputs, h0, seg = make_inputs(op, B=2, T=63, H=2, K=16, V=32, decay=1.0, seed=3)
    _check(compare(op, inputs, h0, seg, impl="pallas", chunk_size=16), 2e-3)


@pytest.mark.parametrize("op,pallas_flavour", [
    ("delta_rule", "triton"), ("gated_delta_rule", "tpu"),
    pytest.param("delta_rule", "tpu", marks=pytest.mark.slow),
    pytest.param("gated_delta_rule", "triton", marks=pytest.mark.slow),
], indirect=["pallas_flavour"])
def test_unnormalised_keys_strong_decay_awkward_dims(op, pallas_flavour):
    """T=100 with chunk 32 (ragged), K=24 != V=40 (Triton pads head dims), moderate key norms,
    strong decay, no segments, no initial state."""
    inputs, h0, seg = make_inputs(op, B=1, T=100, H=2, K=24, V=40, decay=4.0, seed=5,
                                  segments=False, initial_state=False, key_norm="raw")
    _check(compare(op, inputs, h0, seg, impl="pallas", chunk_size=32), 2e-3)


@pytest.mark.parametrize("beta_range,pallas_flavour", [("near0", "tpu"), ("near1", "triton")],
                         indirect=["pallas_flavour"])
def test_extreme_beta(beta_range, pallas_flavour):
    op = "gated_delta_rule"
    inputs, h0, seg = make_inputs(op, B=1, T=48, H=2, K=16, V=16, seed=7, key_norm="raw")
    q, k, v, g, beta = inputs
    rng = np.random.default_rng(8)
    u = rng.uniform(0, 1e-3, beta.shape).astype(np.float32)
    beta = u if beta_range == "near0" else (1.0 - u)
    _check(compare(op, (q, k, v, g, beta), h0, seg, impl="pallas", chunk_size=16), 2e-3)


@pytest.mark.parametrize("pallas_flavour", ["tpu", pytest.param("triton", marks=pytest.mark.slow)],
                         indirect=True)
def test_bfloat16_inputs(pallas_flavour):
    op = "gated_delta_rule"
    inputs, h0, seg = make_inputs(op, B=1, T=64, H=2, K=32, V=32, seed=11)
    _check(compare(op, inputs, h0, seg, impl="pallas", chunk_size=32, dtype=jnp.bfloat16), 2e-2)


@pytest.mark.parametrize("pallas_flavour", ["tpu"], indirect=True)
def test_gradient_through_final_state_only(pallas_flavour):
    op = "delta_rule"
    inputs, h0, _seg = make_inputs(op, B=1, T=40, H=1, K=16, V=16, seed=13)
    args = [jnp.asarray(x) for x in inputs]

    def loss(impl, *xs):
        _, s = getattr(pallas_kernels, op)(*xs, initial_state=jnp.asarray(h0),
                                           output_final_state=True, chunk_size=16, impl=impl)
        return jnp.sum(s ** 2)

    want = jax.grad(lambda *x: loss("xla", *x), argnums=(0, 1, 2, 3))(*args)
    got = jax.grad(lambda *x: loss("pallas", *x), argnums=(0, 1, 2, 3))(*args)
    assert float(jnp.max(jnp.abs(got[0]))) == 0.0  # q does not reach the state
    for name, a, b in zip("qkvb", got[1:], want[1:]):
        assert np.linalg.norm(a - b) <= 1e-4 * np.linalg.norm(b), name


@pytest.mark.slow
@pytest.mark.parametrize("pallas_flavour", KINDS, indirect=True)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("chunk_size", [64, 128])
def test_larger_problems(op, pallas_flavour, chunk_size):
    inputs, h0, seg = make_inputs(op, B=1, T=300, H=2, K=64, V=128, decay=0.3, seed=17)
    _check(compare(op, inputs, h0, seg, impl="pallas", chunk_size=chunk_size), 2e-3)


# ----------------------------------------------------------------------------- AOT lowering

B, T, H, D = 2, 2048, 4, 128


def _fwd_bwd(op, dtype):
    fn = getattr(pallas_kernels, op)
    spec = pallas_kernels.spec(op)
    n_gates = len(spec.gates)

    def f(q, k, v, *gates_and_h0):
        gates, h0 = gates_and_h0[:n_gates], gates_and_h0[n_gates]
        o, s = fn(q, k, v, *gates, initial_state=h0, output_final_state=True, impl="pallas")
        return jnp.sum(o.astype(jnp.float32)) + jnp.sum(s)

    sd = jax.ShapeDtypeStruct
    args = [sd((B, T, H, D), dtype)] * 3 + [sd(gate.shape(B, T, H, D, None), dtype)
                                            for gate in spec.gates]
    args.append(sd((B, H, D, D), jnp.float32))
    fwd = jax.jit(lambda *a: fn(*a[:-1], initial_state=a[-1], output_final_state=True,
                                impl="pallas"))
    bwd = jax.jit(jax.grad(f, argnums=tuple(range(3 + n_gates + 1))))
    return fwd, bwd, args


@pytest.mark.parametrize("op", OPS)
def test_lowers_for_tpu_ahead_of_time(op):
    jax.clear_caches()
    with _backend.use_backend("tpu", interpret=False):
        fwd, bwd, args = _fwd_bwd(op, jnp.bfloat16)
        for f in (fwd, bwd):
            exported = jax.export.export(f, platforms=["tpu"])(*args)
            assert "tpu_custom_call" in exported.mlir_module()
    jax.clear_caches()


@pytest.mark.parametrize("op", OPS)
def test_lowers_for_triton_on_an_abstract_h100(op):
    from jax.sharding import AbstractDevice, AbstractMesh, AxisType, use_abstract_mesh

    jax.clear_caches()
    dev = AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", num_cores=132, platform="gpu")
    mesh = AbstractMesh((1,), ("x",), (AxisType.Explicit,), abstract_device=dev)
    with _backend.use_backend("triton", interpret=False), use_abstract_mesh(mesh):
        fwd, bwd, args = _fwd_bwd(op, jnp.bfloat16)
        for f in (fwd, bwd):
            text = f.trace(*args).lower(lowering_platforms=("cuda",)).as_text()
            assert "triton" in text
    jax.clear_caches()

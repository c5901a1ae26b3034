"""Ahead-of-time lowering of the gated-linear Pallas kernels, forward and backward, at the real
shapes (B=2, T=2048, H=4, K=V=128 and K=V=64): `jax.export(..., platforms=["tpu"])` runs the
Pallas -> Mosaic lowering, which rejects block shapes that break TPU tiling, with no TPU here; the
Triton flavour is lowered for an abstract H100 (`platforms=["cuda"]`)."""

import jax
import jax.numpy as jnp
import pytest
from jax import export

import pallas_kernels
from pallas_kernels import ops
from pallas_kernels.pallas import _backend

B, T, H, M = 2, 2048, 4, 64
# the ops on the gated-linear kernels (the delta-rule ops lower in test_pallas_delta.py)
GLA_FAMILY = tuple(op for op, sp in pallas_kernels.OP_SPECS.items()
                   if sp.kernel is not None and "gla_family" in sp.kernel.entry)


def _gates(op, K, dtype):
    """Abstract gates of `op` from the op table: log-decays in float32 (as the layers pass them),
    other gates in the data dtype."""
    return tuple(
        jax.ShapeDtypeStruct(g.shape(B, T, H, K, M), jnp.float32 if g.role == "log_decay" else dtype)
        for g in pallas_kernels.spec(op).gates)


def _state(op, K):
    shapes = pallas_kernels.spec(op).state_shapes(B, H, K, K, M)
    states = tuple(jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes)
    return states if len(states) > 1 else states[0]


def _export(op, K, dtype, chunk_size, grad):
    fn = getattr(ops, op).__wrapped__
    q = jax.ShapeDtypeStruct((B, T, H, K), dtype)
    gates = _gates(op, K, dtype)
    seg = jax.ShapeDtypeStruct((B, T), jnp.int32)
    state = _state(op, K)

    def forward(q, k, v, gates, h0, seg):
        return fn(q, k, v, *gates, initial_state=h0, segment_ids=seg, output_final_state=True,
                  chunk_size=chunk_size, impl="pallas")

    def loss(q, k, v, gates, h0, seg):
        o, s = forward(q, k, v, gates, h0, seg)
        return jnp.sum(o.astype(jnp.float32)) + sum(jnp.sum(x) for x in jax.tree.leaves(s))

    f = jax.grad(loss, argnums=(0, 1, 2, 3, 4)) if grad else forward
    with _backend.use_backend("tpu", interpret=False):
        exp = export.export(jax.jit(f), platforms=["tpu"])(q, q, q, gates, state, seg)
    text = exp.mlir_module()
    assert "tpu_custom_call" in text
    return text


@pytest.mark.parametrize("op", GLA_FAMILY)
@pytest.mark.parametrize("K", [128, 64])
@pytest.mark.parametrize("grad", [False, True], ids=["fwd", "bwd"])
def test_lowers_for_tpu(op, K, grad):
    _export(op, K, jnp.bfloat16, 64, grad)


@pytest.mark.parametrize("op", ["simple_gla", "gla", "gsa"])
def test_lowers_for_tpu_float32_chunk128(op):
    _export(op, 128, jnp.float32, 128, True)


@pytest.mark.slow
@pytest.mark.parametrize("op", ["simple_gla", "gla"])
def test_lowers_for_tpu_head_dim_256(op):
    _export(op, 256, jnp.bfloat16, 64, True)


def _export_triton(op, K, grad):
    """Lowers through the Triton path for an abstract H100: the Pallas -> Triton-MLIR lowering
    runs here (PTX compilation happens later, inside XLA on the GPU)."""
    from jax.sharding import AbstractDevice, AbstractMesh, AxisType

    fn = getattr(ops, op).__wrapped__
    dtype = jnp.bfloat16
    q = jax.ShapeDtypeStruct((B, T, H, K), dtype)
    gates = _gates(op, K, dtype)
    seg = jax.ShapeDtypeStruct((B, T), jnp.int32)

    def forward(q, k, v, gates, seg):
        return fn(q, k, v, *gates, segment_ids=seg, output_final_state=True, impl="pallas")

    def loss(q, k, v, gates, seg):
        o, s = forward(q, k, v, gates, seg)
        return jnp.sum(o.astype(jnp.float32)) + sum(jnp.sum(x) for x in jax.tree.leaves(s))

    f = jax.grad(loss, argnums=(0, 1, 2, 3)) if grad else forward
    dev = AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", num_cores=132, platform="gpu")
    mesh = AbstractMesh((1,), ("x",), (AxisType.Explicit,), abstract_device=dev)
    target = "__gpu$xla.gpu.triton"
    with _backend.use_backend("triton", interpret=False), jax.sharding.use_abstract_mesh(mesh):
        exp = export.export(jax.jit(f), platforms=["cuda"],
                            disabled_checks=[export.DisabledSafetyCheck.custom_call(target)])(
            q, q, q, gates, seg)
    assert target in exp.mlir_module()


@pytest.mark.filterwarnings("ignore:The Pallas Triton backend is deprecated:DeprecationWarning")
@pytest.mark.parametrize("op", GLA_FAMILY)
@pytest.mark.parametrize("grad", [False, True], ids=["fwd", "bwd"])
def test_lowers_for_gpu_triton(op, grad):
    _export_triton(op, 128, grad)

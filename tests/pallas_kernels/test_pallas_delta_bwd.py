"""Delta-rule backward stages (pallas_kernels/pallas/delta_bwd.py) against jax.vjp of the plain-JAX
forward of the stages after WY, in both interpret flavours."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.pallas import _backend, delta_bwd, wy

FLAVOURS = {
    "tpu": _backend.Backend("tpu", pltpu.InterpretParams(detect_races=True)),
    "triton": _backend.Backend("triton", True),
}


def _rel(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


@pytest.mark.parametrize("backend,C,T,K,V,decay", [
    ("tpu", 32, 96, 32, 16, 1.0),
    ("triton", 32, 96, 32, 16, 1.0),
    ("tpu", 16, 64, 16, 128, 4.0),
    ("triton", 16, 64, 16, 128, 4.0),
])
def test_backward_stages_match_vjp(backend, C, T, K, V, decay):
    rng = np.random.default_rng(0)
    B, H = 2, 2
    n = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)  # noqa: E731
    qs, k, w = n(B, H, T, K) * 0.3, n(B, H, T, K) * 0.3, n(B, H, T, K) * 0.3
    u, s0 = n(B, H, T, V), n(B, H, K, V)
    g = -decay * jnp.abs(n(B, H, T))
    gc = wy.chunk_cumsum(g, C)
    seg = np.sort(rng.integers(0, 4, (B, T)), axis=1).astype(np.int32)
    r = wy.segment_resets(jnp.asarray(seg), C)
    do, ds_n = n(B, H, T, V), n(B, H, K, V)

    (o, s_n, states, vn), vjp = jax.vjp(
        lambda *x: delta_bwd.forward_reference(*x[:5], r, x[5], chunk_size=C),
        qs, k, w, u, gc, s0)
    want = vjp((do, ds_n, jnp.zeros_like(states), jnp.zeros_like(vn)))

    be = FLAVOURS[backend]
    ds_chunks, dvn, ds0 = delta_bwd.reverse_state_pass(qs, k, w, do, gc, r, ds_n, chunk_size=C,
                                                       backend=be)
    dqs, dk, dw, dgc = delta_bwd.chunk_grads(qs, k, vn, do, dvn, states, ds_chunks, gc, r,
                                             chunk_size=C, backend=be)
    got = dict(dqs=dqs, dk=dk, dw=dw, du=dvn, dgc=dgc, ds0=ds0)
    for name, y in zip(("dqs", "dk", "dw", "du", "dgc", "ds0"), want):
        x = got[name]
        assert np.all(np.isfinite(np.asarray(x))), name
        assert _rel(x, y) < 1e-4, (name, _rel(x, y))

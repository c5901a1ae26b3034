"""The WY stage of the delta-rule kernels (pallas_kernels/pallas/wy.py) against its plain-JAX
reference, forward and backward, in both interpret flavours (the `pallas_flavour` fixture: TPU on
two cores with race detection, Triton)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import rel_rms

from pallas_kernels.chunking import Segments, log_decays
from pallas_kernels.pallas import wy


def _problem(seed, *, B=1, H=2, T=128, K=32, V=16, C=64, keys="l2", beta="mid", decay=1.0,
             segments=True):
    rng = np.random.default_rng(seed)
    n = lambda *s: rng.standard_normal(s).astype(np.float32)
    k = n(B, H, T, K)
    if keys == "l2":
        k = k / np.linalg.norm(k, axis=-1, keepdims=True)
    else:  # moderate norm, not normalised
        k = k * (1.5 / np.sqrt(K))
    v = n(B, H, T, V)
    b = {"mid": 1 / (1 + np.exp(-2 * n(B, H, T))), "one": 1 - 1e-3 * np.abs(n(B, H, T)),
         "zero": 1e-3 * np.abs(n(B, H, T))}[beta].astype(np.float32)
    g = -decay * np.abs(n(B, H, T))
    gc = log_decays(jnp.asarray(g).reshape(B, H, T // C, C), None).gc.reshape(B, H, T)
    if segments:
        seg = np.sort(rng.integers(0, max(2, T // 20), (B, T)), axis=1).astype(np.int32)
    else:
        seg = np.zeros((B, T), np.int32)
    r = Segments.build(jnp.asarray(seg)).chunked(C).local.reshape(B, T).astype(jnp.float32)
    return jnp.asarray(k), jnp.asarray(v), jnp.asarray(b), gc, r


CASES = [
    # (backend, dict of problem options)
    ("tpu", {"C": 64}),
    ("triton", {"C": 64}),
    ("tpu", {"C": 16, "T": 48, "K": 24, "V": 40, "keys": "raw", "beta": "one", "decay": 4.0}),
    ("triton", {"C": 16, "T": 48, "K": 24, "V": 40, "keys": "raw", "beta": "one", "decay": 4.0}),
    ("tpu", {"C": 32, "T": 64, "beta": "zero", "segments": False}),
    ("triton", {"C": 128, "T": 128, "K": 16, "V": 16, "keys": "raw"}),
    # head dims walked in several column tiles (64 on Triton, 128 on TPU)
    ("triton", {"C": 32, "T": 64, "K": 128, "V": 192, "H": 1}),
    ("tpu", {"C": 32, "T": 64, "K": 256, "V": 128, "H": 1}),
]


@pytest.mark.parametrize("pallas_flavour,opts", CASES, indirect=["pallas_flavour"])
def test_wy_forward_and_backward_match_reference(pallas_flavour, opts):
    C = opts["C"]
    k, v, beta, gc, r = _problem(0, **opts)
    w, u, a = jax.jit(lambda *x: wy.wy_fwd(*x, chunk_size=C))(k, v, beta, gc, r)
    ref = wy.wy_reference(k, v, beta, gc, r, chunk_size=C)
    for name, got, want in zip("wua", (w, u, a), ref):
        assert rel_rms(got, want) < 1e-5, name

    rng = np.random.default_rng(1)
    dw = jnp.asarray(rng.standard_normal(w.shape), jnp.float32)
    du = jnp.asarray(rng.standard_normal(u.shape), jnp.float32)
    _, vjp = jax.vjp(lambda *x: wy.wy_reference(*x, r, chunk_size=C)[:2], k, v, beta, gc)
    want = vjp((dw, du))
    got = jax.jit(lambda *x: wy.wy_bwd(*x, chunk_size=C))(k, v, beta, gc, r, a, dw, du)
    for name, x, y in zip(("dk", "dv", "dbeta", "dgc"), got, want):
        assert np.all(np.isfinite(np.asarray(x))), name
        assert rel_rms(x, y) < 1e-4, name
    # the custom_vjp that the ops use: the same factors and the same backward
    f = jax.jit(lambda *x: wy.wy_factors(*x, r, chunk_size=C))
    (w2, u2), vjp2 = jax.vjp(f, k, v, beta, gc)
    assert rel_rms(w2, w) < 1e-6 and rel_rms(u2, u) < 1e-6
    for name, x, y in zip(("dk", "dv", "dbeta", "dgc"), vjp2((dw, du)), want):
        assert rel_rms(x, y) < 1e-4, name


@pytest.mark.parametrize("pallas_flavour", ["triton"], indirect=True)
def test_unit_lower_inverse_is_a_stable_inverse(pallas_flavour):
    """Ill-conditioned but valid systems (large un-normalised keys, beta = 1): A (I + L) = I."""
    k, v, beta, gc, r = _problem(3, T=128, C=128, K=16, V=16, keys="raw", beta="one",
                                 segments=False)
    k = k * 2.0
    _w, _u, a = jax.jit(lambda *x: wy.wy_fwd(*x, chunk_size=128))(k, v, beta, gc, r)
    ref = wy.wy_reference(k, v, beta, gc, r, chunk_size=128)
    assert np.all(np.isfinite(np.asarray(a)))
    assert rel_rms(a, ref[2]) < 1e-4


def test_bad_shapes_are_value_errors():
    k, v, beta, gc, r = _problem(0, T=64, C=64)
    with pytest.raises(ValueError, match="beta"):
        wy.wy_fwd(k, v, beta[:, :1], gc, r, chunk_size=64)
    with pytest.raises(ValueError, match="multiple of chunk_size"):
        wy.wy_fwd(k, v, beta, gc, r, chunk_size=128)

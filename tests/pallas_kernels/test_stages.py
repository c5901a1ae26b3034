"""The shared stages on their own: stage 1 (`pallas_kernels.chunking`: segments, chunk layout,
log-decays, head-dim padding, the `supports` rule), the Pallas state pass (stage 3) and output
stage (stages 2 + 4) against plain-JAX references in both interpret flavours, and the flavour
selection of `_backend`."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import rel_rms

import pallas_kernels
from pallas_kernels import chunking
from pallas_kernels.chunking import Segments
from pallas_kernels.pallas import _backend, chunk_output, chunk_state
from pallas_kernels.pallas.gla_family import output_segments

BOTH = pytest.mark.parametrize("pallas_flavour", ["tpu", "triton"], indirect=True)
TRITON = _backend.Backend("triton", True)
TPU = _backend.Backend("tpu", True)


# ---------------------------------------------------------------------------------------------
# Stage 1.

def test_segments_renumber_and_chunk():
    """Ids 5 5 7 7 5 | 5 9 9: every change is a reset (also back to an id seen before); the
    chunk masks follow from the renumbered ids."""
    seg = Segments.build(jnp.asarray([[5, 5, 7, 7, 5, 5, 9, 9]]))
    np.testing.assert_array_equal(seg.ids, [[0, 0, 1, 1, 2, 2, 3, 3]])
    np.testing.assert_array_equal(seg.resets(), [[0, 0, 1, 0, 1, 0, 1, 0]])
    np.testing.assert_array_equal(seg.pad(2).ids, [[0, 0, 1, 1, 2, 2, 3, 3, 3, 3]])
    c = seg.chunked(4)  # chunks [0 0 1 1] [2 2 3 3]
    assert c.rid.shape == (1, 1, 2, 4)
    np.testing.assert_array_equal(c.local[0, 0], [[0, 0, 1, 1], [1, 1, 2, 2]])
    np.testing.assert_array_equal(c.first[0, 0], [[1, 1, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(c.last[0, 0], [[0, 0, 1, 1], [0, 0, 1, 1]])
    np.testing.assert_array_equal(c.carry[0, 0], [0, 0])
    np.testing.assert_array_equal(c.same()[0, 0, 0], np.kron(np.eye(2), np.ones((2, 2))))
    assert Segments.build(None) is None


def test_chunk_layout_round_trip():
    x = jnp.arange(2 * 12 * 3 * 5).reshape(2, 12, 3, 5)
    c = chunking.to_chunks(x, 4)
    assert c.shape == (2, 3, 3, 4, 5)  # [B, H, N, C, D]
    np.testing.assert_array_equal(c[1, 2, 1, 3], x[1, 7, 2])
    np.testing.assert_array_equal(chunking.from_chunks(c), x)


def test_log_decays_against_direct_sums():
    """into / to_end / total are the sums of g over (chunk start, i], (i, chunk end] and the whole
    chunk, -inf where a reset cuts the path."""
    B, H, T, C, D = 1, 2, 8, 4, 3
    g = -jnp.abs(jax.random.normal(jax.random.PRNGKey(0), (B, T, H, D)))
    seg = Segments.build(jnp.asarray([[0, 0, 0, 0, 0, 1, 1, 1]])).chunked(C)
    ld = chunking.log_decays(chunking.to_chunks(g, C), seg)
    gn = np.asarray(chunking.to_chunks(g, C))  # [B, H, N, C, D]
    np.testing.assert_allclose(ld.gc, np.cumsum(gn, axis=3), rtol=1e-6)
    np.testing.assert_allclose(ld.total[:, :, 0], gn[:, :, 0].sum(2), rtol=1e-6)
    assert np.all(np.isneginf(ld.total[:, :, 1]))  # the reset at t = 5 lies inside chunk 1
    to_end = gn[:, :, 1].sum(2, keepdims=True) - np.cumsum(gn[:, :, 1], 2)
    np.testing.assert_allclose(ld.to_end[:, :, 1, 1:], to_end[:, :, 1:], rtol=1e-5, atol=1e-6)
    assert np.all(np.isneginf(ld.to_end[:, :, 1, 0]))  # t = 4 does not reach the chunk's end
    assert np.all(np.isneginf(ld.into[:, :, 1, 1:]))  # t = 5.. come after the reset
    np.testing.assert_allclose(ld.into[:, :, 1, 0], gn[:, :, 1, 0], rtol=1e-6)


def test_padded_dim():
    assert [chunking.padded_dim("triton", d) for d in (1, 16, 24, 48, 64, 96, 128)] == [
        16, 16, 32, 64, 64, 128, 128]
    assert chunking.padded_dim("tpu", 24) == 24
    x = jnp.ones((2, 3))
    assert chunking.pad_dim(x, 5).shape == (2, 5) and float(chunking.pad_dim(x, 5)[:, 3:].sum()) == 0
    assert chunking.pad_dim(x, 4, axis=0).shape == (4, 3)


def _zeros(*shape, dtype=jnp.float32):
    return jnp.zeros(shape, dtype)


@pytest.mark.parametrize("backend", [TPU, TRITON], ids=["tpu", "triton"])
def test_supports_is_one_rule(backend):
    """One rule for every op, per flavour: dtypes from the table, head dims after padding, the
    chunk-size range of the shared stages narrowed by the op's own stages."""
    q, v = _zeros(1, 8, 1, 16), _zeros(1, 8, 1, 16)
    g, g48, beta = _zeros(1, 8, 1), _zeros(1, 8, 1, 48), _zeros(1, 8, 1)

    def sup(op, q, k, v, *gates, chunk_size=16):
        return chunking.supports(pallas_kernels.spec(op), q, k, v, *gates, chunk_size=chunk_size,
                                 backend=backend)

    assert sup("simple_gla", q, q, v, g) is None
    assert "float32, bfloat16" in sup("simple_gla", q.astype(jnp.float16), q, v, g)
    assert sup("delta_rule", q.astype(jnp.float16), q.astype(jnp.float16), v, beta) is None
    odd = _zeros(1, 8, 1, 48)
    for op, gates in (("gla", (g48,)), ("delta_rule", (beta,)), ("gsa", (g48, g48))):
        assert sup(op, odd, odd, odd, *gates) is None, op  # 48 pads to 64 on Triton
    big = _zeros(1, 8, 1, 512)
    reason = sup("gla", big, big, v, _zeros(1, 8, 1, 512))
    assert f"<= {chunking.MAX_HEAD_DIM[backend.kind]}" in reason and "K=512" in reason
    wide = _zeros(1, 8, 1, 160)  # pads to 256 on Triton
    reason = sup("delta_rule", wide, wide, v, beta)
    if backend.kind == "triton":
        assert "<= 128" in reason and "padded to 256" in reason
        assert "16 <= chunk_size <= 128" in sup("simple_gla", q, q, v, g, chunk_size=8)
    else:
        assert reason is None
        assert sup("simple_gla", q, q, v, g, chunk_size=8) is None
        assert sup("simple_gla", q, q, v, g, chunk_size=256) is None
    # the WY stage narrows the range to 16..128 on both flavours
    assert "16 <= chunk_size <= 128" in sup("delta_rule", q, q, v, beta, chunk_size=256)
    no_kernel = dataclasses.replace(pallas_kernels.spec("gla"), name="gla_without_kernel",
                                    kernel=None)
    assert chunking.supports(no_kernel, q, q, v, g, chunk_size=16) == "no Pallas kernel for gla_without_kernel"


def test_impl_pallas_refuses_with_the_reason():
    big = _zeros(1, 8, 1, 512)
    with pytest.raises(ValueError, match="impl='pallas' cannot run simple_gla here: .*512"):
        pallas_kernels.simple_gla(big, big, _zeros(1, 8, 1, 16), _zeros(1, 8, 1), impl="pallas")
    small, beta = _zeros(1, 64, 1, 64), _zeros(1, 64, 1)
    with pytest.raises(ValueError, match="chunk_size"):
        pallas_kernels.delta_rule(small, small, small, beta, chunk_size=8, impl="pallas")


def test_auto_is_xla_on_cpu():
    q, g = _zeros(1, 8, 1, 16), _zeros(1, 8, 1)
    assert pallas_kernels.resolve_impl("simple_gla", "auto", q, q, q, (g,), 16) == "xla"
    assert pallas_kernels.resolve_impl("simple_gla", "pallas", q, q, q, (g,), 16) == "pallas"


# ---------------------------------------------------------------------------------------------
# The Pallas stages (the state pass is also used by the delta-rule kernels).

def _state_pass_ref(kd, vd, dk, dv, h0, w):
    S = h0
    states, us = [], []
    for n in range(kd.shape[1]):
        states.append(S)
        u = vd[:, n] - (jnp.einsum("gck,gkv->gcv", w[:, n], S) if w is not None else 0.0)
        us.append(u)
        S = dk[:, n, :, None] * dv[:, n, None, :] * S + jnp.einsum("gck,gcv->gkv", kd[:, n], u)
    return jnp.stack(states, 1), S, (None if w is None else jnp.stack(us, 1))


@pytest.mark.parametrize("pallas_flavour,dims", [("tpu", (16, 32)), ("triton", (16, 32)),
                                                 ("triton", (128, 128))],
                         indirect=["pallas_flavour"])
@pytest.mark.parametrize("use_w", [False, True])
def test_state_pass_stage(pallas_flavour, use_w, dims):
    """(128, 128): several 64 x 64 state tiles in the Triton flavour's programs."""
    G, N, C = (2, 3, 16) if dims[0] < 128 else (1, 2, 16)
    K, V = dims
    ks = jax.random.split(jax.random.PRNGKey(3), 6)
    kd = 0.3 * jax.random.normal(ks[0], (G, N, C, K))
    vd = jax.random.normal(ks[1], (G, N, C, V))
    dk = jax.random.uniform(ks[2], (G, N, K))
    dv = jax.random.uniform(ks[3], (G, N, V))
    h0 = jax.random.normal(ks[4], (G, K, V))
    w = 0.05 * jax.random.normal(ks[5], (G, N, C, K)) if use_w else None
    args = (kd, vd, dk, dv, h0, w)

    def loss(f, *a):
        st, hT, vn = f(*a)
        out = jnp.sum(st * jnp.cos(st)) + jnp.sum(hT**2)
        return out if vn is None else out + jnp.sum(vn * jnp.sin(vn))

    pallas = lambda kd, vd, dk, dv, h0, w: chunk_state.state_pass(  # noqa: E731
        kd, vd, decay_k=dk, decay_v=dv, h0=h0, w=w)
    argn = tuple(range(6 if use_w else 5))
    got = jax.jit(pallas)(*args)
    gg = jax.jit(jax.grad(lambda *a: loss(pallas, *a), argnums=argn))(*args)
    want = _state_pass_ref(*args)
    gw = jax.grad(lambda *a: loss(_state_pass_ref, *a), argnums=argn)(*args)
    for a, b in zip(got, want):
        if b is not None:
            assert rel_rms(a, b) < 1e-5
    for a, b in zip(gg, gw):
        assert rel_rms(a, b) < 1e-5


def _output_ref(q, k, v, h, b, rid, carry, mode, heads):
    C = q.shape[2]
    t = jnp.arange(C)
    rid = jnp.repeat(rid, heads, 0)
    carry = jnp.repeat(carry, heads, 0)[..., None]
    keep = (t[:, None] >= t[None, :]) & (rid[..., :, None] == rid[..., None, :])
    if mode == "key":
        E = jnp.exp(jnp.minimum(b[..., :, None, :] - b[..., None, :, :], 0))
        A = jnp.einsum("gnik,gnjk,gnijk->gnij", q, k, E) * keep
        return jnp.einsum("gnij,gnjv->gniv", A, v) + carry * jnp.einsum(
            "gnik,gnkv->gniv", q * jnp.exp(b), h)
    E = jnp.exp(jnp.minimum(b[..., :, None, :] - b[..., None, :, :], 0))
    A = jnp.einsum("gnik,gnjk->gnij", q, k) * keep
    return jnp.einsum("gnij,gnjv,gnijv->gniv", A, v, E) + carry * jnp.exp(b) * jnp.einsum(
        "gnik,gnkv->gniv", q, h)


@BOTH
@pytest.mark.parametrize("mode", ["key", "value"])
def test_output_stage(pallas_flavour, mode):
    B, H, N, C, K, V = 2, 1, 2, 32, 16, 16
    G = B * H
    ks = jax.random.split(jax.random.PRNGKey(4), 7)
    q, k = (jax.random.normal(ks[i], (G, N, C, K)) for i in (0, 1))
    v = jax.random.normal(ks[2], (G, N, C, V))
    h = jax.random.normal(ks[3], (G, N, K, V))
    b = jnp.cumsum(-2.0 * jnp.abs(jax.random.normal(ks[4], (G, N, C, K if mode == "key" else V))), 2)
    seg = np.sort(np.random.default_rng(0).integers(0, 5, (B, N * C)), axis=1)
    rid, carry = output_segments(Segments.build(jnp.asarray(seg)).chunked(C))
    wo = jax.random.normal(ks[5], (G, N, C, V))
    f = lambda *a: chunk_output.output_stage(*a, (rid, carry), mode=mode, heads=H)  # noqa: E731
    r = lambda *a: _output_ref(*a, rid, carry, mode, H)  # noqa: E731
    args = (q, k, v, h, b)
    assert rel_rms(jax.jit(f)(*args), r(*args)) < 1e-5
    gg = jax.jit(jax.grad(lambda *a: jnp.sum(f(*a) * wo), argnums=range(5)))(*args)
    gw = jax.grad(lambda *a: jnp.sum(r(*a) * wo), argnums=range(5))(*args)
    for a, w in zip(gg, gw):
        assert rel_rms(a, w) < 1e-5



def test_backend_selection(monkeypatch):
    monkeypatch.delenv("CHUNKWISE_PALLAS_BACKEND", raising=False)
    assert _backend.current() == _backend.Backend("triton", True)  # CPU default: interpreter
    monkeypatch.setenv("CHUNKWISE_PALLAS_BACKEND", "tpu")
    cur = _backend.current()
    assert cur.kind == "tpu" and not cur.interpret.detect_races
    with _backend.use_backend("triton") as b:
        assert _backend.current() is b and b.interpret is True
    assert _backend.current().kind == "tpu"
    monkeypatch.setenv("CHUNKWISE_PALLAS_BACKEND", "cuda")
    with pytest.raises(ValueError, match="CHUNKWISE_PALLAS_BACKEND"):
        _backend.current()
    with pytest.raises(ValueError, match="backend kind"):
        with _backend.use_backend("gpu"):
            pass

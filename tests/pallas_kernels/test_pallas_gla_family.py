"""impl="pallas" for linear_attention, simple_gla, gla and gsa against the float64 recurrence, in
both interpret flavours on CPU (the TPU kernels under `pltpu.InterpretParams(detect_races=True)`,
the Triton kernels under `interpret=True`): outputs, final states and the gradients of q, k, v,
every gate and the initial state (the loss reaches through the final state), at ragged T, with
segment ids, initial states and strong decay; plus the shared stages on their own."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from oracle64 import compare, make_inputs, rel_rms

import pallas_kernels
from pallas_kernels import ops
from pallas_kernels.pallas import _backend, chunk_output, chunk_state

FAMILY = ("linear_attention", "simple_gla", "gla", "gsa")


@pytest.fixture
def flavour(request, monkeypatch):
    """Runs the test with the kernels built for one flavour; fresh jit wrappers so nothing traced
    for the other flavour is reused."""
    kind = request.param
    for op in FAMILY:
        fresh = jax.jit(getattr(ops, op).__wrapped__, static_argnames=ops._STATIC)
        monkeypatch.setattr(pallas_kernels, op, fresh)
    # The TPU interpreter makes a fresh race detector per kernel run; keep all of them.
    from jax._src.pallas.mosaic.interpret import interpret_pallas_call as ipc

    detectors = []

    class Recorded(ipc.RaceDetectionState):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            detectors.append(self)

    monkeypatch.setattr(ipc, "RaceDetectionState", Recorded)
    with _backend.use_backend(kind, detect_races=True) as backend:
        yield backend
    if kind == "tpu":
        assert not any(d.races_found for d in detectors), "TPU interpreter found a data race"


BOTH = pytest.mark.parametrize("flavour", ["tpu", "triton"], indirect=True)


@BOTH
@pytest.mark.parametrize("op", FAMILY)
def test_float32_segments_initial_state_ragged(op, flavour):
    inputs, h, seg = make_inputs(op, B=2, T=45, H=2, K=16, V=32, M=16, decay=1.0, seed=11)
    errs = compare(op, inputs, h, seg, impl="pallas", chunk_size=16)
    assert max(errs.values()) < 2e-3, errs


@BOTH
@pytest.mark.parametrize("op", ["simple_gla", "gla", "gsa"])
def test_strong_decay_no_segments(op, flavour):
    """log-decays around -8 per step: exp(b) spans far beyond float32 within one chunk."""
    inputs, h, seg = make_inputs(op, B=1, T=40, H=1, K=16, V=16, M=16, decay=8.0, seed=12,
                                 segments=False)
    errs = compare(op, inputs, h, seg, impl="pallas", chunk_size=32)
    assert max(errs.values()) < 2e-3, errs


@BOTH
@pytest.mark.parametrize("op", FAMILY)
def test_bfloat16(op, flavour):
    inputs, h, seg = make_inputs(op, B=1, T=40, H=1, K=16, V=16, M=16, decay=2.0, seed=13)
    errs = compare(op, inputs, h, seg, impl="pallas", dtype=jnp.bfloat16, chunk_size=16)
    assert max(errs.values()) < 2e-2, errs


@pytest.mark.parametrize("flavour", ["triton"], indirect=True)
@pytest.mark.parametrize("op", FAMILY)
def test_no_initial_state_and_final_state_only_loss(op, flavour):
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
def test_larger_chunks_and_head_dims(op, flavour):
    inputs, h, seg = make_inputs(op, B=1, T=150, H=2, K=64, V=32, M=32, decay=1.0, seed=15)
    errs = compare(op, inputs, h, seg, impl="pallas", chunk_size=64)
    assert max(errs.values()) < 2e-3, errs


# ---------------------------------------------------------------------------------------------
# The shared stages on their own (the state pass is also used by the delta-rule kernels).

def _state_pass_ref(kd, vd, dk, dv, h0, w):
    S = h0
    states, us = [], []
    for n in range(kd.shape[1]):
        states.append(S)
        u = vd[:, n] - (jnp.einsum("gck,gkv->gcv", w[:, n], S) if w is not None else 0.0)
        us.append(u)
        S = dk[:, n, :, None] * dv[:, n, None, :] * S + jnp.einsum("gck,gcv->gkv", kd[:, n], u)
    return jnp.stack(states, 1), S, (None if w is None else jnp.stack(us, 1))


@pytest.mark.parametrize("flavour,dims", [("tpu", (16, 32)), ("triton", (16, 32)),
                                          ("triton", (128, 128))], indirect=["flavour"])
@pytest.mark.parametrize("use_w", [False, True])
def test_state_pass_stage(flavour, use_w, dims):
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
def test_output_stage(flavour, mode):
    B, H, N, C, K, V = 2, 1, 2, 32, 16, 16
    G = B * H
    ks = jax.random.split(jax.random.PRNGKey(4), 7)
    q, k = (jax.random.normal(ks[i], (G, N, C, K)) for i in (0, 1))
    v = jax.random.normal(ks[2], (G, N, C, V))
    h = jax.random.normal(ks[3], (G, N, K, V))
    b = jnp.cumsum(-2.0 * jnp.abs(jax.random.normal(ks[4], (G, N, C, K if mode == "key" else V))), 2)
    seg = np.sort(np.random.default_rng(0).integers(0, 5, (B, N * C)), axis=1)
    rid = np.concatenate([np.zeros((B, 1), int), np.cumsum(seg[:, 1:] != seg[:, :-1], 1)], 1)
    rid = jnp.asarray(rid.reshape(B, N, C), jnp.int32)
    prev = jnp.concatenate([jnp.zeros((B, 1), jnp.int32), rid[:, :-1, -1]], 1)
    carry = (rid == prev[..., None]).astype(jnp.float32)
    wo = jax.random.normal(ks[5], (G, N, C, V))
    f = lambda *a: chunk_output.output_stage(*a, (rid, carry), mode=mode, heads=H)  # noqa: E731
    r = lambda *a: _output_ref(*a, rid, carry, mode, H)  # noqa: E731
    args = (q, k, v, h, b)
    assert rel_rms(jax.jit(f)(*args), r(*args)) < 1e-5
    gg = jax.jit(jax.grad(lambda *a: jnp.sum(f(*a) * wo), argnums=range(5)))(*args)
    gw = jax.grad(lambda *a: jnp.sum(r(*a) * wo), argnums=range(5))(*args)
    for a, w in zip(gg, gw):
        assert rel_rms(a, w) < 1e-5


@pytest.mark.parametrize("flavour", ["tpu", "triton"], indirect=True)
def test_supports_reports_reasons(flavour):
    q = jnp.zeros((1, 8, 1, 16))
    v = jnp.zeros((1, 8, 1, 16))
    g = jnp.zeros((1, 8, 1))
    sup = pallas_kernels.pallas.get("simple_gla").supports
    assert sup(q, q, v, g, chunk_size=16) is None
    assert "float32 or bfloat16" in sup(q.astype(jnp.float16), q, v, g, chunk_size=16)
    big = jnp.zeros((1, 8, 1, 512))
    assert "512" in sup(big, big, v, g, chunk_size=16)
    if flavour.kind == "triton":
        odd = jnp.zeros((1, 8, 1, 48))
        assert "power-of-two" in sup(odd, odd, v, g, chunk_size=16)
        assert "chunk_size" in sup(q, q, v, g, chunk_size=8)
        wide = jnp.zeros((1, 8, 1, 256))
        assert "<= 128" in sup(wide, wide, v, g, chunk_size=16)
    else:
        wide = jnp.zeros((1, 8, 1, 256))
        assert sup(wide, wide, v, g, chunk_size=16) is None
    with pytest.raises(ValueError, match="cannot run simple_gla"):
        pallas_kernels.simple_gla(big, big, v, g, impl="pallas")


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

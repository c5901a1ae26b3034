"""The state-space and test-time-training mixers (S4D, Mamba, TTT-Linear), each against a per-token
float64 numpy re-implementation written here that reads the layer's own parameters, with and
without packed segments; their other paths against each other (S4D: FFT convolution, chunked
masked form, decode recurrence). Decode parity through the whole model (prefill + decode split
mid-chunk) is also in test_model.py's parametrisation over MIXERS."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import rel_rms
from flax import nnx
from mixer_reference import (
    B,
    Conv,
    D,
    T,
    arr,
    check_decode,
    check_layer,
    l2n,
    lin,
    rms,
    sigmoid,
    silu,
    softplus,
    tiny_cfg,
)

from research.layers import MIXER_CLASSES
from research.layers.s4d import chunked_ssm, fft_conv, s4d_imag_init, ssm_kernel

_erf = np.vectorize(math.erf)


def gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def crel(a, b):
    """Relative error of complex arrays."""
    a, b = np.asarray(a, np.complex128), np.asarray(b, np.complex128)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ----------------------------------------------------------------------------- S4D
def step_s4d(L, xt, st, t):
    E, N2 = L.d_inner, L.d_state // 2
    if "h" not in st:
        st["h"], st["conv"] = np.zeros((E, N2), np.complex128), Conv(L.conv, E)
    (u,) = st["conv"](lin(L.in_proj, xt))
    dt = np.exp(arr(L.log_dt))
    A = -np.exp(arr(L.A_log_re)) + 1j * arr(L.A_im)
    dA = np.exp(dt[:, None] * A)
    dB = (dA - 1.0) / A  # ZOH with B = 1
    st["h"] = dA * st["h"] + dB * u[:, None]
    Cc = arr(L.C_re) + 1j * arr(L.C_im)
    y = gelu(2.0 * np.real(np.sum(Cc * st["h"], -1)) + arr(L.D) * u)
    out = lin(L.o_proj, y)
    if L.use_output_gate:
        a, b = np.split(out, 2)
        out = a * sigmoid(b)
    return out


S4D_VARIANTS = [dict(), dict(s4d_init="inv", conv_size=0, use_output_gate=False),
                pytest.param(dict(d_state=16, expand_v=2.0, chunk_size=4), marks=pytest.mark.slow)]


@pytest.mark.parametrize("kw", S4D_VARIANTS, ids=["lin-conv", "inv", "wide"])
def test_s4d_matches_per_token_recurrence(kw):
    L = MIXER_CLASSES["s4d"](tiny_cfg("s4d", **kw), rngs=nnx.Rngs(4))
    check_layer(L, step_s4d, jax.random.normal(jax.random.key(2), (B, T, D)), decode=True)


def test_s4d_fft_convolution_equals_the_recurrence():
    """The closed-form kernel by FFT == the chunked recurrence (any chunk, with and without
    segments) on long inputs and slowly decaying modes; the final state too."""
    L = MIXER_CLASSES["s4d"](tiny_cfg("s4d", d_state=16, dt_min=1e-4, dt_max=1e-3),
                             rngs=nnx.Rngs(0))
    dtA, Ct = L.modes()
    u = jax.random.normal(jax.random.key(0), (2, 300, L.d_inner))
    y_fft = fft_conv(u, ssm_kernel(dtA, Ct, 300))
    for C in (1, 16, 64):
        y, h = chunked_ssm(u, dtA, Ct, chunk_size=C)
        assert rel_rms(y, y_fft) < 1e-5, C
        _, h2 = chunked_ssm(u, dtA, Ct, chunk_size=C, segment_ids=jnp.zeros((2, 300), jnp.int32))
        assert crel(h2, h) < 1e-5
    # the final state is the recurrence's: h_T = sum_j dA^(T-1-j) u_j
    dA = np.exp(np.asarray(dtA, np.complex128))
    want = np.einsum("enj,bje->ben", dA[..., None] ** np.arange(299, -1, -1),
                     np.asarray(u, np.float64))
    assert crel(h, want) < 1e-4


def test_s4d_inits_and_state_size():
    np.testing.assert_allclose(s4d_imag_init("lin", 8), np.pi * np.arange(4), rtol=1e-6)
    n = np.arange(4)
    np.testing.assert_allclose(s4d_imag_init("inv", 8), 8 / np.pi * (8 / (2 * n + 1) - 1), rtol=1e-6)
    L = MIXER_CLASSES["s4d"](tiny_cfg("s4d"), rngs=nnx.Rngs(0))
    assert L.state_size() == 32 * 8
    assert L.init_cache(3, 10)["state"].shape == (3, 32, 4, 2)
    with pytest.raises(ValueError, match="d_state"):
        tiny_cfg("s4d", d_state=7)
    with pytest.raises(ValueError, match="s4d_init"):
        tiny_cfg("s4d", s4d_init="legs")


# ----------------------------------------------------------------------------- Mamba
def step_mamba(L, xt, st, t):
    E, N, R = L.d_inner, L.d_state, L.dt_rank
    if "h" not in st:
        st["h"], st["conv"] = np.zeros((N, E)), Conv(L.conv, E)
    xz = lin(L.in_proj, xt)
    x, z = (xz[:E], xz[E:]) if L.use_output_gate else (xz, None)
    (x,) = st["conv"](x) if L.conv is not None else (silu(x),)
    dbc = lin(L.x_proj, x)
    dt = softplus(lin(L.dt_proj, dbc[:R]))  # [E]
    bm, cm = dbc[R:R + N], dbc[R + N:]
    A = -np.exp(arr(L.A_log))  # [E, N]
    st["h"] = np.exp(dt[None, :] * A.T) * st["h"] + bm[:, None] * (dt * x)[None, :]
    y = cm @ st["h"] + arr(L.D) * x
    if L.use_output_gate:
        y = y * silu(z)
    return lin(L.out_proj, y)


MAMBA_VARIANTS = [dict(), pytest.param(dict(conv_size=0, use_output_gate=False, n_heads=4),
                                        marks=pytest.mark.slow),
                  dict(d_state=4, expand_v=1.0, chunk_size=4, dt_min=0.1, dt_max=1.0)]


@pytest.mark.parametrize("kw", MAMBA_VARIANTS, ids=["default", "no-conv-4-heads", "strong-decay"])
def test_mamba_matches_per_token_recurrence(kw):
    L = MIXER_CLASSES["mamba"](tiny_cfg("mamba", **kw), rngs=nnx.Rngs(5))
    check_layer(L, step_mamba, jax.random.normal(jax.random.key(3), (B, T, D)), decode=True)


def test_mamba_reference_path_and_state_size():
    x = jax.random.normal(jax.random.key(4), (B, T, D))
    ys = [MIXER_CLASSES["mamba"](tiny_cfg("mamba", impl=impl), rngs=nnx.Rngs(0))(x)[0]
          for impl in ("reference", "xla")]
    assert rel_rms(ys[1], ys[0]) < 1e-5
    L = MIXER_CLASSES["mamba"](tiny_cfg("mamba"), rngs=nnx.Rngs(0))
    assert L.state_size() == 64 * 8  # E = 2 * d_model channels, d_state each
    np.testing.assert_allclose(-np.exp(arr(L.A_log))[3], -np.arange(1, 9), rtol=1e-6)
    dt = softplus(arr(L.dt_proj.bias))
    assert dt.min() >= 0.001 * 0.999 and dt.max() <= 0.1 * 1.001


# ----------------------------------------------------------------------------- TTT-Linear
def step_ttt(L, xt, st, t):
    cfg, H, K, V, b = L.cfg, L.n_heads, L.head_k, L.head_v, L.mini_batch
    if "W" not in st:
        st["W"], st["W0"], st["r"] = np.zeros((H, K, V)), np.zeros((H, K, V)), 0
        st["conv"] = Conv(L.conv, H * (2 * K + V))
    q, k, v = st["conv"](lin(L.q_proj, xt), lin(L.k_proj, xt), lin(L.v_proj, xt))
    q, k, v = l2n(q.reshape(H, K)), l2n(k.reshape(H, K)), v.reshape(H, V)
    eta = sigmoid(lin(L.eta_proj, xt)) * cfg.ttt_base_lr / b  # [H]
    if st["r"] % b == 0:  # a mini-batch starts: its gradients are taken at this W
        st["W0"] = st["W"].copy()
    st["r"] += 1
    err = v - np.einsum("hk,hkv->hv", k, st["W0"])
    st["W"] = st["W"] + eta[:, None, None] * k[:, :, None] * err[:, None, :]
    o = np.einsum("hkv,hk->hv", st["W"], q)
    o = rms(o, L.o_norm, cfg.norm_eps).reshape(-1)
    if L.use_output_gate:
        o = o * silu(lin(L.g_proj, xt))
    return lin(L.o_proj, o)


TTT_VARIANTS = [dict(ttt_mini_batch=4), dict(ttt_mini_batch=16, ttt_base_lr=4.0),
                dict(ttt_mini_batch=3, conv_size=0, use_output_gate=False, chunk_size=4),
                dict(ttt_mini_batch=1, expand_v=2.0)]


@pytest.mark.parametrize("kw", TTT_VARIANTS, ids=["b4", "b16-lr4", "b3-C4", "b1"])
def test_ttt_linear_matches_per_token_recurrence(kw):
    L = MIXER_CLASSES["ttt_linear"](tiny_cfg("ttt_linear", **kw), rngs=nnx.Rngs(6))
    x = jax.random.normal(jax.random.key(5), (B, T, D))
    check_layer(L, step_ttt, x)


@pytest.mark.parametrize("b", [5, pytest.param(1, marks=pytest.mark.slow),
                               pytest.param(16, marks=pytest.mark.slow)])
def test_ttt_linear_decode_with_a_partial_mini_batch(b):
    """Prefill and decode split anywhere inside a mini-batch equal the full pass; the cache then
    holds the open mini-batch's starting W and its tokens so far (`fill` of them)."""
    L = MIXER_CLASSES["ttt_linear"](tiny_cfg("ttt_linear", ttt_mini_batch=b, ttt_base_lr=2.0),
                                    rngs=nnx.Rngs(7))
    x = jax.random.normal(jax.random.key(6), (B, T, D))
    cache = check_decode(L, x, splits=((0, 3), (3, 4), (4, 11), (11, T)))
    assert int(cache["fill"]) == T % b
    assert cache["k"].shape == (B, b - 1, 2, 16)
    # the cached W is the full pass's W at the last mini-batch start
    start = T - T % b
    q, k, v, eta, _ = L.inputs(x)
    import pallas_kernels
    _, W = pallas_kernels.ttt_linear(q[:, :start], k[:, :start], v[:, :start], eta[:, :start],
                                     mini_batch_size=b, output_final_state=True, scale=1.0)
    if start:
        assert rel_rms(cache["state"], W) < 1e-5


def test_ttt_linear_state_size():
    L = MIXER_CLASSES["ttt_linear"](tiny_cfg("ttt_linear", ttt_mini_batch=4), rngs=nnx.Rngs(0))
    assert L.state_size() == 2 * (16 * 16 + 3 * (16 + 16 + 1))

"""Each mixer against a plain per-token recurrent re-implementation written here in numpy (float64),
reading the layer's own parameters; with and without packed segments (state, conv and attention
history reset at every change of segment id). The numpy building blocks are in
mixer_reference.py."""

from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import rel_rms
from flax import nnx
from mixer_reference import (
    SEG,
    B,
    Conv,
    D,
    T,
    arr,
    fmap_after_conv,
    gated_output,
    l2n,
    lin,
    logsig,
    per_token,
    rms,
    silu,
    softmax,
    softplus,
    tiny_cfg,
)

from research import MIXERS
from research.layers import MIXER_CLASSES, common


def rope_np(x, t, theta):
    half = x.shape[-1] // 2
    freqs = theta ** (-np.arange(half) / half)
    c, s = np.cos(t * freqs), np.sin(t * freqs)
    x1, x2 = x[..., :half], x[..., half:2 * half]
    return np.concatenate([x1 * c - x2 * s, x1 * s + x2 * c, x[..., 2 * half:]], -1)


# ----------------------------------------------------------------------------- per-token mixers
def conv_qkv(L, xt, st, v_feature="identity"):
    """phi(conv(x W_q)), phi(conv(x W_k)) [H, K'] and v_feature(conv(x W_v)) [H, V] with the
    streaming conv st["conv"] (phi = L.feature; the conv's SiLU is not repeated)."""
    H, K, V = L.n_heads, L.head_k, L.head_v
    q, k, v = st["conv"](lin(L.q_proj, xt), lin(L.k_proj, xt), lin(L.v_proj, xt))
    has_conv = L.conv is not None
    return (fmap_after_conv(L.feature, q.reshape(H, K), has_conv),
            fmap_after_conv(L.feature, k.reshape(H, K), has_conv),
            fmap_after_conv(v_feature, v.reshape(H, V), has_conv))


def step_gla_family(L, xt, st, t):
    cfg, H = L.cfg, L.n_heads
    K, Kf, V = L.head_k, L.feat_k, L.head_v
    if "S" not in st:
        st["S"], st["conv"] = np.zeros((H, Kf, V)), Conv(L.conv, H * (2 * K + V))
    q, k, v = conv_qkv(L, xt, st)
    norm = L.normalizer
    if L.decay == "vector":
        dec = np.exp(logsig(lin(L.gk_up, lin(L.gk_down, xt))).reshape(H, K) / norm)[:, :, None]
    elif L.decay == "scalar":
        dec = np.exp(logsig(lin(L.gs_proj, xt)) / norm)[:, None, None]
    elif L.decay == "fixed":
        if cfg.init_half_life is None:
            gamma = 1.0 - 2.0 ** (-5.0 - np.arange(H))
        else:
            gamma = np.full(H, 0.5 ** (1.0 / cfg.init_half_life))
        dec = gamma[:, None, None]
    else:
        dec = 1.0
    st["S"] = dec * st["S"] + k[:, :, None] * v[:, None, :]
    scale = 1.0 if L.feature == "taylor" else K**-0.5
    return gated_output(L, np.einsum("hkv,hk->hv", st["S"], q * scale), xt)


def step_hgrn2(L, xt, st, t):
    H, K, V = L.n_heads, L.head_k, L.head_v
    if "S" not in st:
        st["S"], st["conv"] = np.zeros((H, K, V)), Conv(L.conv, H * (K + V))
    q, i = st["conv"](lin(L.q_proj, xt), lin(L.i_proj, xt))
    q = fmap_after_conv(L.feature, q.reshape(H, K), L.conv is not None)
    g = logsig(lin(L.f_proj, xt)).reshape(H, K)
    k = 1.0 - np.exp(g)
    st["S"] = np.exp(g)[:, :, None] * st["S"] + k[:, :, None] * i.reshape(H, V)[:, None, :]
    return gated_output(L, np.einsum("hkv,hk->hv", st["S"], q), xt)


def step_gsa(L, xt, st, t):
    H, K, V, M = L.n_heads, L.head_k, L.head_v, L.num_slots
    if "A" not in st:
        st["A"], st["B"] = np.zeros((H, L.feat_k, M)), np.zeros((H, M, V))
        st["conv"] = Conv(L.conv, H * (2 * K + V))
    q, k, v = conv_qkv(L, xt, st, "silu")
    g = (logsig(lin(L.f_proj, xt)) / L.normalizer).reshape(H, M)
    s = 1.0 - np.exp(g)
    st["A"] = st["A"] * np.exp(g)[:, None, :] + k[:, :, None] * s[:, None, :]
    st["B"] = np.exp(g)[:, :, None] * st["B"] + s[:, :, None] * v[:, None, :]
    p = softmax(np.einsum("hkm,hk->hm", st["A"], q * K**-0.5))
    return gated_output(L, np.einsum("hmv,hm->hv", st["B"], p), xt)


def step_delta(L, xt, st, t):
    cfg, H, K, V = L.cfg, L.n_heads, L.head_k, L.head_v
    if "S" not in st:
        st["S"], st["conv"] = np.zeros((H, K, V)), Conv(L.conv, H * (2 * K + V))
    q, k, v = conv_qkv(L, xt, st, "silu")
    if cfg.qk_norm == "l2":
        q, k = l2n(q), l2n(k)
    beta = 1.0 / (1.0 + np.exp(-lin(L.b_proj, xt))) if cfg.use_beta else np.ones(H)
    S = st["S"]
    if L.name == "gated_deltanet":
        g = -np.exp(arr(L.A_log)) * softplus(lin(L.a_proj, xt) + arr(L.dt_bias))
        S = np.exp(g)[:, None, None] * S
    pred = np.einsum("hkv,hk->hv", S, k)
    st["S"] = S + beta[:, None, None] * k[:, :, None] * (v - pred)[:, None, :]
    return gated_output(L, np.einsum("hkv,hk->hv", st["S"], q * K**-0.5), xt)


def step_mamba2(L, xt, st, t):
    cfg, H, N, P, E = L.cfg, L.n_heads, L.d_state, L.head_dim, L.d_inner
    if "S" not in st:
        st["S"], st["conv"] = np.zeros((H, N, P)), Conv(L.conv, E + 2 * N)
    u = lin(L.in_proj, xt)
    if L.use_output_gate:
        z, u = u[:E], u[E:]
    x, b, c, dt = u[:E], u[E:E + N], u[E + N:E + 2 * N], u[E + 2 * N:]
    x, b, c = st["conv"](x, b, c)
    dt = softplus(dt + arr(L.dt_bias))
    a = -np.exp(arr(L.A_log))
    x = x.reshape(H, P)
    st["S"] = np.exp(dt * a)[:, None, None] * st["S"] + b[None, :, None] * (dt[:, None] * x)[:, None, :]
    y = np.einsum("hnp,n->hp", st["S"], c) + arr(L.D)[:, None] * x
    y = y.reshape(-1)
    if L.use_output_gate:
        y = y * silu(z)
    return lin(L.out_proj, rms(y, L.norm, cfg.norm_eps))


def step_attention(L, xt, st, t):
    cfg, H, K, V = L.cfg, L.n_heads, L.head_k, L.head_v
    if "k" not in st:
        st["k"], st["v"], st["conv"] = [], [], Conv(L.conv, H * (2 * K + V))
    q, k, v = st["conv"](lin(L.q_proj, xt), lin(L.k_proj, xt), lin(L.v_proj, xt))
    st["k"].append(rope_np(k.reshape(H, K), t, cfg.rope_theta))
    st["v"].append(v.reshape(H, V))
    q = rope_np(q.reshape(H, K), t, cfg.rope_theta)
    ks, vs = np.stack(st["k"]), np.stack(st["v"])  # [j, H, K]
    if L.window is not None:
        ks, vs = ks[-L.window:], vs[-L.window:]
    p = softmax(np.einsum("hk,jhk->hj", q, ks) * K**-0.5)
    o = np.einsum("hj,jhv->hv", p, vs).reshape(-1)
    if L.use_output_gate:
        o = o * silu(lin(L.g_proj, xt))
    return lin(L.o_proj, o)


STEPS = {
    "linear_attention": step_gla_family, "retnet": step_gla_family, "gla": step_gla_family,
    "hgrn2": step_hgrn2, "gsa": step_gsa, "deltanet": step_delta, "gated_deltanet": step_delta,
    "mamba2": step_mamba2, "attention": step_attention, "sliding_window_attention": step_attention,
}


# ----------------------------------------------------------------------------- tests
# Mixers with their own per-token tests (test_new_mixers.py, test_ssm_mixers.py) are not in STEPS.
VARIANTS = [(m, {}) for m in MIXERS if m in STEPS] + [
    ("gla", dict(decay="scalar", init_half_life=8.0)),
    ("gla", dict(decay="fixed", init_half_life=4.0, feature_map="relu")),
    ("gla", dict(decay="none", conv_size=0, use_output_gate=False)),
    ("linear_attention", dict(feature_map="taylor", expand_k=0.25, conv_size=0)),
    ("hgrn2", dict(conv_size=0, init_half_life=4.0, use_output_gate=True)),
    ("gsa", dict(conv_size=0, use_output_gate=True, init_half_life=16.0)),
    ("deltanet", dict(use_beta=False, conv_size=0, use_output_gate=True, feature_map="elu")),
    ("gated_deltanet", dict(conv_size=0, init_half_life=8.0)),
    ("mamba2", dict(conv_size=0, use_output_gate=False, init_half_life=16.0)),
    ("sliding_window_attention", dict(conv_size=0, use_output_gate=True)),
]


@pytest.mark.parametrize("mixer,kw", VARIANTS, ids=[f"{m}-{i}" for i, (m, _) in enumerate(VARIANTS)])
def test_mixer_matches_per_token_recurrence(mixer, kw):
    cfg = tiny_cfg(mixer, **kw)
    layer = MIXER_CLASSES[mixer](cfg, rngs=nnx.Rngs(zlib.crc32(f"{mixer}{kw}".encode()) % 1000))
    x = jax.random.normal(jax.random.key(len(kw) + 7), (B, T, D), jnp.float32)
    step = STEPS[mixer]

    if not kw:  # the path without segment_ids, once per mixer (it is also covered in test_model)
        y, cache = layer(x)
        assert cache is None and y.shape == (B, T, D) and y.dtype == jnp.float32
        assert rel_rms(y, per_token(step, layer, x, np.zeros((B, T)))) < 1e-4

    y_seg, _ = layer(x, segment_ids=jnp.asarray(SEG))
    assert rel_rms(y_seg, per_token(step, layer, x, SEG)) < 1e-4


@pytest.mark.parametrize("mixer", ["gla", "gated_deltanet", "gsa"])
def test_reference_path_matches_xla_path(mixer):
    """The layer gives the same output whichever op path runs it."""
    x = jax.random.normal(jax.random.key(3), (B, T, D), jnp.float32)
    ys = []
    for impl in ("reference", "xla"):
        layer = MIXER_CLASSES[mixer](tiny_cfg(mixer, impl=impl), rngs=nnx.Rngs(0))
        ys.append(layer(x)[0])
    assert rel_rms(ys[1], ys[0]) < 1e-5


def test_short_conv_resets_at_segments_and_streams():
    conv = common.ShortConv(6, 4, rngs=nnx.Rngs(1))
    x = jax.random.normal(jax.random.key(0), (1, 10, 6))
    seg = jnp.array([[0] * 4 + [1] * 6])
    y, _ = conv(x, segment_ids=seg)
    y0, _ = conv(x[:, :4])
    y1, _ = conv(x[:, 4:])
    np.testing.assert_allclose(y, jnp.concatenate([y0, y1], 1), rtol=1e-6, atol=1e-6)
    cache = conv.init_cache(1)
    parts = []
    for a, b in ((0, 3), (3, 4), (4, 10)):
        out, cache = conv(x[:, a:b], cache=cache)
        parts.append(out)
    np.testing.assert_allclose(jnp.concatenate(parts, 1), conv(x)[0], rtol=1e-6, atol=1e-6)


def test_state_sizes():
    cfg = tiny_cfg("gla")
    K, V = cfg.head_dims("gla")
    assert (K, V) == (8, 16)
    assert MIXER_CLASSES["gla"](cfg, rngs=nnx.Rngs(0)).state_size() == 2 * 8 * 16
    gsa = MIXER_CLASSES["gsa"](tiny_cfg("gsa"), rngs=nnx.Rngs(0))
    assert gsa.state_size() == 2 * 8 * (16 + 16)
    m2 = MIXER_CLASSES["mamba2"](tiny_cfg("mamba2"), rngs=nnx.Rngs(0))
    assert m2.state_size() == 2 * 8 * 32  # H * d_state * head_dim, head_dim = 2 * 32 / 2
    att = MIXER_CLASSES["attention"](tiny_cfg("attention"), rngs=nnx.Rngs(0))
    assert att.state_size(100) == 2 * (16 + 16) * 100
    with pytest.raises(ValueError, match="seq_len"):
        att.state_size()
    swa = MIXER_CLASSES["sliding_window_attention"](tiny_cfg("sliding_window_attention"), rngs=nnx.Rngs(0))
    assert swa.state_size() == swa.state_size(1000) == 2 * 32 * 5


def test_init_half_life_sets_the_initial_decay():
    """With zero input the gates decay the state by exactly 1/2 over init_half_life tokens."""
    x = jnp.zeros((1, 1, D))
    for mixer, kw in (("gla", {}), ("gla", dict(decay="scalar")), ("gsa", {}), ("hgrn2", {})):
        layer = MIXER_CLASSES[mixer](tiny_cfg(mixer, init_half_life=10.0, **kw), rngs=nnx.Rngs(0))
        g = layer.log_decay(x)
        np.testing.assert_allclose(np.exp(10.0 * np.asarray(g)), 0.5, rtol=1e-4)
    for mixer in ("gated_deltanet", "mamba2"):  # zero input: softplus(dt_bias) = dt, as initialised
        layer = MIXER_CLASSES[mixer](tiny_cfg(mixer, init_half_life=10.0), rngs=nnx.Rngs(0))
        np.testing.assert_allclose(np.exp(10.0 * np.asarray(layer.log_decay(x))), 0.5, rtol=1e-4)
    assert MIXER_CLASSES["deltanet"](tiny_cfg("deltanet"), rngs=nnx.Rngs(0)).log_decay(x) is None
    assert MIXER_CLASSES["gla"](tiny_cfg("gla", decay="none"), rngs=nnx.Rngs(0)).log_decay(x) is None

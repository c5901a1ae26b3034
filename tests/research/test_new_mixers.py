"""The mixers of the seeds' remaining architectures (LightNet, Mixture-of-Memories, JRT prefix
linear attention) and the static n-gram layers, each against a per-token float64 numpy
re-implementation written here that reads the layer's own parameters; decode parity (prefill +
decode split mid-chunk) is in test_model.py's parametrisation over MIXERS and here for n-gram
layers and JRT prefixes."""

from __future__ import annotations

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
    check_layer,
    gated_output,
    l2n,
    lin,
    per_token,
    sigmoid,
    silu,
    softplus,
    tiny_cfg,
)

import research
from research.layers import MIXER_CLASSES
from research.layers.ngram import NGram


@nnx.jit
def jit_call(module, *args, **kw):
    """module(*args, **kw), compiled (the eager op-by-op path is slow on a busy CPU)."""
    return module(*args, **kw)


# ----------------------------------------------------------------------------- LightNet
def step_lightnet(L, xt, st, t):
    H, K, V = L.n_heads, L.head_k, L.head_v
    if "S" not in st:
        st["S"], st["z"], st["conv"] = np.zeros((H, K, V)), np.zeros((H, K)), Conv(L.conv, H * (K + V))
    q, v = st["conv"](lin(L.q_proj, xt), lin(L.v_proj, xt))
    q = q.reshape(H, K) if L.conv is not None else silu(q.reshape(H, K))
    k = np.exp(lin(L.k_proj, xt).reshape(H, K))
    z_prev, st["z"] = st["z"], st["z"] + k
    st["S"] = (z_prev / st["z"])[:, :, None] * st["S"] + (k / st["z"])[:, :, None] * v.reshape(H, V)[:, None, :]
    return gated_output(L, np.einsum("hkv,hk->hv", st["S"], q * K**-0.5), xt)


@pytest.mark.parametrize("kw", [{}, dict(conv_size=0, use_output_gate=False)])
def test_lightnet_matches_per_token_recurrence(kw):
    layer = MIXER_CLASSES["lightnet"](tiny_cfg("lightnet", **kw), rngs=nnx.Rngs(3))
    check_layer(layer, step_lightnet, jax.random.normal(jax.random.key(1), (B, T, D)))
    assert layer.state_size() == 2 * 16 * (16 + 1)


@pytest.mark.parametrize("n", [2048, pytest.param(16384, marks=pytest.mark.slow)])
def test_lightnet_stays_finite_at_long_lengths(n):
    """T = 16384 (2048 in the default suite) on the xla path, with key logits ~N(0, 22^2) (k from
    about e^-60 to e^60): outputs and gradients finite, the output equal to the float64
    recurrence."""
    cfg = tiny_cfg("lightnet", d_model=8, n_heads=1, conv_size=0, impl="xla", chunk_size=64)
    layer = MIXER_CLASSES["lightnet"](cfg, rngs=nnx.Rngs(0))
    layer.k_proj.kernel[...] = layer.k_proj.kernel[...] * 400.0  # init_std 0.02 -> ~8 per logit
    x = jax.random.normal(jax.random.key(0), (1, n, 8))
    y = jax.jit(lambda m, x: m(x)[0])(layer, x)
    assert np.all(np.isfinite(np.asarray(y)))
    assert rel_rms(y, per_token(step_lightnet, layer, x, np.zeros((1, n)))) < 1e-3
    grads = nnx.jit(nnx.grad(lambda m: jnp.mean(m(x)[0] ** 2)))(layer)
    for _, g in nnx.to_flat_state(nnx.state(grads, nnx.Param)):
        assert np.all(np.isfinite(np.asarray(g[...])))


# ----------------------------------------------------------------------------- Mixture-of-Memories
def np_softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def mom_route(L, xt):
    r = np_softmax(lin(L.router, xt))
    idx = np.argsort(-r)[: L.top_k]
    w = np.zeros(L.num_memories)
    w[idx] = r[idx] / r[idx].sum()
    return r, idx, w


def step_mom(L, xt, st, t):
    H, Mp, M, K, V = L.n_heads, L.n_mem, L.num_memories, L.head_k, L.head_v
    if "S" not in st:
        st["S"], st["conv"] = np.zeros((H, Mp, K, V)), Conv(L.conv, L.conv_channels)
    q, k, v = st["conv"](lin(L.q_proj, xt), lin(L.k_proj, xt), lin(L.v_proj, xt))
    act = (lambda u: u) if L.conv is not None else silu
    q, k, v = l2n(act(q.reshape(H, K))), l2n(act(k.reshape(H, Mp, K))), act(v.reshape(H, Mp, V))
    _, idx, w = mom_route(L, xt)
    routed = list(idx) + ([M] if Mp > M else [])
    w = np.concatenate([w, [1.0] * (Mp - M)])
    beta = sigmoid(lin(L.b_proj, xt)).reshape(H, Mp)
    g = (-np.exp(arr(L.A_log)) * softplus(lin(L.a_proj, xt) + arr(L.dt_bias))).reshape(H, Mp)
    o = np.zeros((H, V))
    for h in range(H):
        for m in range(Mp):
            if m in routed:
                S = np.exp(g[h, m]) * st["S"][h, m]
                st["S"][h, m] = S + beta[h, m] * np.outer(k[h, m], v[h, m] - S.T @ k[h, m])
            o[h] += w[m] * st["S"][h, m].T @ q[h] * K**-0.5
    return gated_output(L, o, xt)


@pytest.mark.parametrize("kw", [{}, dict(conv_size=0, shared_memory=False, num_memories=3,
                                         memory_top_k=1, use_output_gate=False)])
def test_mom_matches_per_token_recurrence(kw):
    layer = MIXER_CLASSES["mom"](tiny_cfg("mom", expand_v=0.5, **kw), rngs=nnx.Rngs(5))
    check_layer(layer, step_mom, jax.random.normal(jax.random.key(2), (B, T, D)))
    M = layer.n_mem
    assert layer.state_size() == 2 * M * 16 * 8


def test_mom_aux_loss_is_the_switch_load_balancing_loss_and_reaches_the_model():
    cfg = tiny_cfg("mom", n_layers=2, router_aux_weight=0.5)
    layer = MIXER_CLASSES["mom"](cfg, rngs=nnx.Rngs(0))
    layer.router.kernel[...] = layer.router.kernel[...] * 50.0  # a confident, unbalanced router
    x = jax.random.normal(jax.random.key(4), (B, T, D))
    f, p = np.zeros(4), np.zeros(4)
    for xt in np.asarray(x, np.float64).reshape(-1, D):
        r, idx, _ = mom_route(layer, xt)
        f[idx] += 1
        p += r
    n = B * T
    want = 4 * np.sum(f / (n * 2) * p / n)
    assert abs(float(layer.aux_loss(x)) - want) < 1e-5 and want > 1.0
    model = research.LanguageModel(cfg, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(0), (B, T), 0, 64)
    logits, aux = model(tokens, return_aux=True)
    np.testing.assert_allclose(logits, model(tokens), rtol=1e-6, atol=1e-6)
    blocks, h = model.blocks, model.embed(tokens)
    want = 0.0
    for blk in blocks:
        want += 0.5 * float(blk.mixer.aux_loss(blk.mixer_norm(h)))
        h = blk(h)[0]
    assert abs(float(aux["aux_loss"]) - want) < 1e-5
    other = research.LanguageModel(tiny_cfg("gla"), rngs=nnx.Rngs(0))
    assert float(other(tokens, return_aux=True)[1]["aux_loss"]) == 0.0


# ----------------------------------------------------------------------------- JRT prefix attention
def jrt_reference(L, x, seg, prefix):
    """Per-token float64 prefix linear attention: features token by token (conv restarting at
    segments), then S_P over the prefix, then the causal pass from it."""
    H, K, V = L.n_heads, L.head_k, L.head_v
    x = np.asarray(x, np.float64)
    out = np.zeros_like(x)
    for b in range(x.shape[0]):
        feats, conv = [], None
        for t in range(x.shape[1]):
            if t == 0 or seg[b, t] != seg[b, t - 1]:
                conv = Conv(L.conv, H * (2 * K + V))
            q, k, v = conv(lin(L.q_proj, x[b, t]), lin(L.k_proj, x[b, t]), lin(L.v_proj, x[b, t]))
            elu1 = lambda u: np.where(u > 0, u + 1.0, np.exp(u))  # noqa: E731
            feats.append((elu1(q.reshape(H, K)), elu1(k.reshape(H, K)), v.reshape(H, V)))
        in_prefix = [t < prefix[b] and seg[b, t] == seg[b, 0] for t in range(x.shape[1])]
        S = sum(np.einsum("hk,hv->hkv", k, v) for (_, k, v), p in zip(feats, in_prefix) if p)
        S = np.zeros((H, K, V)) + S
        for t, (q, k, v) in enumerate(feats):
            if t > 0 and seg[b, t] != seg[b, t - 1]:
                S = np.zeros((H, K, V))
            if not in_prefix[t]:
                S = S + np.einsum("hk,hv->hkv", k, v)
            out[b, t] = gated_output(L, np.einsum("hkv,hk->hv", S, q * K**-0.5), x[b, t])
    return out


def test_jrt_prefix_linear_attention_matches_the_reference():
    layer = MIXER_CLASSES["jrt"](tiny_cfg("jrt"), rngs=nnx.Rngs(1))
    x = jax.random.normal(jax.random.key(3), (B, T, D))
    prefix = np.array([9, 4], np.int32)
    y, _ = jit_call(layer, x, prefix_length=jnp.asarray(prefix))
    assert rel_rms(y, jrt_reference(layer, x, np.zeros((B, T)), prefix)) < 1e-4
    y0, _ = jit_call(layer, x)  # no prefix: causal linear attention
    assert rel_rms(y0, jrt_reference(layer, x, np.zeros((B, T)), [0, 0])) < 1e-4
    y_seg, _ = jit_call(layer, x, segment_ids=jnp.asarray(SEG), prefix_length=jnp.asarray([9, 30]))
    assert rel_rms(y_seg, jrt_reference(layer, x, SEG, [9, 30])) < 1e-4
    # a prefix position reads the whole prefix: changing a later prefix token changes it
    x2 = x.at[:, 3].add(1.0)
    y2, _ = jit_call(layer, x2, prefix_length=jnp.asarray(prefix))
    assert float(jnp.abs(y2[0, 1] - y[0, 1]).max()) > 1e-4  # t=1 < 3 < P=9
    assert float(jnp.abs(y2[1, 1] - y[1, 1]).max()) > 1e-4  # t=1 < 3 < P=4


def test_jrt_model_decode_with_a_prefix_equals_the_full_pass():
    cfg = tiny_cfg("jrt", n_layers=2)
    model = research.LanguageModel(cfg, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (B, T), 0, 64)
    prefix = jnp.array([7, 10], jnp.int32)
    full = jit_call(model, tokens, prefix_length=prefix)
    assert rel_rms(full, jit_call(model, tokens)) > 1e-3  # the prefix matters
    cache = model.init_cache(B, T)
    outs = []
    for a, b in ((0, 10), (10, 11), (11, T)):
        out, cache = jit_call(model, tokens[:, a:b], cache=cache, prefix_length=prefix)
        outs.append(out)
    assert rel_rms(jnp.concatenate(outs, 1), full) < 1e-4
    with pytest.raises(ValueError, match="prefix_length"):
        model(tokens, prefix_length=jnp.zeros((B + 1,), jnp.int32))


# ----------------------------------------------------------------------------- n-gram layers
def ngram_reference(L, tokens, seg):
    tokens = np.asarray(tokens)
    E, n = arr(L.value_embed), L.n
    out = np.zeros(tokens.shape + (E.shape[1],))
    for b in range(tokens.shape[0]):
        for t in range(tokens.shape[1]):
            start = t
            while start > 0 and seg[b, start - 1] == seg[b, t]:
                start -= 1
            if t - (n - 2) < start:
                continue
            ctx = list(tokens[b, t - n + 2: t + 1]) if n > 1 else []
            hits = [r for r in range(start + 1, t + 1) if r - 1 - (n - 2) >= start
                    and (n == 1 or list(tokens[b, r - n + 1: r]) == ctx)]
            if hits:
                out[b, t] = lin(L.o_proj, E[tokens[b, hits]].mean(0))
            else:
                out[b, t] = lin(L.o_proj, np.zeros(E.shape[1]))
    return out


@pytest.mark.parametrize("n", [1, 2, 3])
def test_ngram_layer_matches_brute_force(n):
    cfg = tiny_cfg("gla", vocab_size=5)  # few tokens: many matches
    layer = NGram(cfg, n, rngs=nnx.Rngs(n))
    tokens = jax.random.randint(jax.random.key(n), (B, T), 0, 5)
    y, _ = jit_call(layer, tokens)
    np.testing.assert_allclose(y, ngram_reference(layer, tokens, np.zeros((B, T))), atol=1e-6)
    y_seg, _ = jit_call(layer, tokens, segment_ids=jnp.asarray(SEG))
    np.testing.assert_allclose(y_seg, ngram_reference(layer, tokens, SEG), atol=1e-6)


def test_ngram_layers_in_the_model_decode_and_pack():
    cfg = tiny_cfg("gla", n_layers=1, ngram_layers=(1, 2, 3), vocab_size=8)
    model = research.LanguageModel(cfg, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(6), (B, T), 0, 8)
    full = jit_call(model, tokens)
    assert rel_rms(full, research.LanguageModel(cfg.replace(ngram_layers=()), rngs=nnx.Rngs(0))(tokens)) > 1e-3
    cache = model.init_cache(B, T)
    outs = []
    for a, b in ((0, 10), (10, 11), (11, T)):
        out, cache = jit_call(model, tokens[:, a:b], cache=cache)
        outs.append(out)
    assert rel_rms(jnp.concatenate(outs, 1), full) < 1e-5
    seg = jnp.array([[0] * 11 + [1] * (T - 11), [3] * T], jnp.int32)
    packed = jit_call(model, tokens, segment_ids=seg)
    assert rel_rms(packed[0, 11:], jit_call(model, tokens[:, 11:])[0]) < 1e-5
    with pytest.raises(ValueError, match="seq_len"):
        model.state_size()
    assert model.state_size(100) == 3 * 100 + 2 * 8 * 16
    with pytest.raises(ValueError, match="max_length=5"):
        model(tokens[:, :6], cache=model.init_cache(B, 5))
    with pytest.raises(ValueError, match="ModelConfig.ngram_layers"):
        cfg.replace(ngram_layers=(0,))

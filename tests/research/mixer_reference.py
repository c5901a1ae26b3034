"""Shared pieces of the mixer tests (test_layers.py, test_new_mixers.py, test_ssm_mixers.py): the
float64 numpy building blocks of the per-token re-implementations, which read a layer's own
parameters, the token-by-token driver `per_token`, and the checks of a layer against one."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from conftest import rel_rms
from flax import nnx

from research import ModelConfig

B, T, D = 2, 19, 32
SEG = np.array([[0] * 6 + [1] * 9 + [2] * 4, [5] * T], np.int32)  # packed segments of a batch


def tiny_cfg(mixer, **kw):
    """A one-layer config of width D for `mixer` (small heads, chunks and conv)."""
    base = dict(mixer=mixer, vocab_size=64, d_model=D, n_layers=1, n_heads=2, conv_size=3,
                num_slots=8, d_state=8, window_size=5, gate_low_rank_dim=4, chunk_size=8)
    base.update(kw)
    return ModelConfig(**base)


# ----------------------------------------------------------------------------- numpy helpers
def arr(p):
    return np.asarray(p[...], np.float64)


def lin(m, x):
    y = x @ arr(m.kernel)
    return y + arr(m.bias) if m.bias is not None else y


def silu(x):
    return x / (1.0 + np.exp(-x))


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def logsig(x):
    return -np.logaddexp(0.0, -x)


def softplus(x):
    return np.logaddexp(0.0, x)


def rms(x, norm, eps):
    return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * arr(norm.scale)


def l2n(x):
    return x / np.sqrt(np.sum(x * x, -1, keepdims=True) + 1e-6)


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def fmap(name, x):
    if name == "identity":
        return x
    if name == "elu":
        return np.where(x > 0, x + 1.0, np.exp(x))
    if name == "relu":
        return np.maximum(x, 0.0)
    if name in ("silu", "swish"):
        return silu(x)
    if name == "softmax":
        return softmax(x)
    if name == "taylor":
        d = x.shape[-1]
        outer = (x[..., :, None] * x[..., None, :]).reshape(*x.shape[:-1], d * d)
        return np.concatenate([np.ones(x.shape[:-1] + (1,)), x / d**0.25, outer / math.sqrt(2 * d)], -1)
    raise AssertionError(name)


def fmap_after_conv(name, x, has_conv):
    return x if has_conv and name in ("silu", "swish") else fmap(name, x)


class Conv:
    """Streaming causal depthwise conv + SiLU with a buffer of the last W-1 inputs."""

    def __init__(self, conv, channels):
        self.w = None if conv is None else arr(conv.weight)
        if self.w is not None:
            self.buf = np.zeros((self.w.shape[0] - 1, channels))

    def __call__(self, *parts):
        u = np.concatenate(parts)
        if self.w is None:
            return parts
        window = np.concatenate([self.buf, u[None]], 0)
        self.buf = window[1:]
        y = silu((window * self.w).sum(0))
        return np.split(y, np.cumsum([p.size for p in parts])[:-1])


def gated_output(L, o, xt):
    """W_o (RMSNorm_head(o) [* swish(x W_gate)]) of the linear-attention mixers, o [H, V]."""
    o = rms(o, L.o_norm, L.cfg.norm_eps).reshape(-1)
    if L.use_output_gate:
        o = o * silu(lin(L.g_proj, xt))
    return lin(L.o_proj, o)


# ----------------------------------------------------------------------------- the driver and checks
def per_token(step, L, x, seg, **kw):
    """`step(L, x_t, state, t, **kw)` over every row and token, the state (a dict the step fills)
    restarting at every change of segment id; `kw` values are per row ([B, ...])."""
    x = np.asarray(x, np.float64)
    out = np.zeros(x.shape[:2] + (L.cfg.d_model,))
    for b in range(x.shape[0]):
        st = {}
        for t in range(x.shape[1]):
            if t > 0 and seg[b, t] != seg[b, t - 1]:
                st = {}
            out[b, t] = step(L, x[b, t], st, t, **{k: v[b] for k, v in kw.items()})
    return out


def jitted(L):
    """(forward(x, segment_ids), step(x, cache)) of layer L, jitted (one compile per shape)."""
    graphdef, state = nnx.split(L)
    fwd = jax.jit(lambda st, x, seg: nnx.merge(graphdef, st)(x, segment_ids=seg))
    step = jax.jit(lambda st, x, cache: nnx.merge(graphdef, st)(x, cache=cache))
    return (lambda x, seg=None: fwd(state, x, seg)), (lambda x, cache: step(state, x, cache))


def check_layer(L, step, x, *, tol=1e-4, decode=False):
    """Full pass (no segments) and packed pass (SEG) against the per-token recurrence; with
    `decode`, also `check_decode`."""
    fwd, _ = jitted(L)
    y, cache = fwd(x)
    assert cache is None and y.shape == x.shape and y.dtype == jnp.float32
    assert rel_rms(y, per_token(step, L, x, np.zeros((B, T)))) < tol
    y_seg, _ = fwd(x, jnp.asarray(SEG))
    assert rel_rms(y_seg, per_token(step, L, x, SEG)) < tol
    if decode:
        check_decode(L, x)


def check_decode(L, x, splits=((0, 7), (7, 8), (8, 13), (13, T))):
    """Prefill / decode through the layer's cache equals the full pass."""
    fwd, step = jitted(L)
    cache = L.init_cache(B, T)
    outs = []
    for a, b in splits:
        y, cache = step(x[:, a:b], cache)
        outs.append(y)
    assert rel_rms(jnp.concatenate(outs, 1), fwd(x)[0]) < 1e-4
    return cache

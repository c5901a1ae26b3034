"""Token-by-token references (the oracles): a `lax.scan` over time of each recurrence, in float32.

Each function takes the validated, unpadded problem: q, k [B, T, H, K], v [B, T, H, V], gates as in
the op table, `scale` a float, `initial_state` float32 or None, `segments` a `chunking.Segments` or None,
and returns (o float32 [B, T, H, V], final_state float32).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

f32 = jnp.float32


def _resets(segments, B, T):
    """bool [T, B]: the state is reset before position t."""
    if segments is None:
        return jnp.zeros((T, B), bool)
    return segments.resets().T


def _time_major(*xs):
    return [jnp.moveaxis(x.astype(f32), 1, 0) for x in xs]


def _scan(step, state, xs, resets):
    def body(s, inp):
        x, r = inp
        keep = (~r).astype(f32)[:, None, None, None]
        s = jax.tree.map(lambda a: a * keep, s)
        return step(s, x)

    state, o = jax.lax.scan(body, state, (xs, resets))
    return jnp.moveaxis(o, 0, 1), state


def _zeros_state(q, v, initial_state):
    B, _, H, K = q.shape
    if initial_state is not None:
        return initial_state.astype(f32)
    return jnp.zeros((B, H, K, v.shape[-1]), f32)


def _gated(q, k, v, g, *, scale, initial_state, segments, vector):
    B, T = q.shape[:2]
    q, k, v, g = _time_major(q, k, v, g)

    def step(S, x):
        qt, kt, vt, gt = x  # [B, H, K], [B, H, K], [B, H, V], [B, H] or [B, H, K]
        decay = jnp.exp(gt)[..., None] if vector else jnp.exp(gt)[..., None, None]
        S = decay * S + kt[..., :, None] * vt[..., None, :]
        return S, jnp.einsum("bhk,bhkv->bhv", qt * scale, S)

    return _scan(step, _zeros_state(q.swapaxes(0, 1), v.swapaxes(0, 1), initial_state),
                 (q, k, v, g), _resets(segments, B, T))


def linear_attention(q, k, v, *, scale, initial_state=None, segments=None):
    g = jnp.zeros(q.shape[:3], f32)
    return _gated(q, k, v, g, scale=scale, initial_state=initial_state, segments=segments,
                  vector=False)


def simple_gla(q, k, v, g, *, scale, initial_state=None, segments=None):
    return _gated(q, k, v, g, scale=scale, initial_state=initial_state, segments=segments,
                  vector=False)


def gla(q, k, v, g, *, scale, initial_state=None, segments=None):
    return _gated(q, k, v, g, scale=scale, initial_state=initial_state, segments=segments,
                  vector=True)


def gated_delta_rule(q, k, v, g, beta, *, scale, initial_state=None, segments=None):
    B, T = q.shape[:2]
    state = _zeros_state(q, v, initial_state)
    q, k, v, g, beta = _time_major(q, k, v, g, beta)

    def step(S, x):
        qt, kt, vt, gt, bt = x
        S = jnp.exp(gt)[..., None, None] * S
        err = vt - jnp.einsum("bhk,bhkv->bhv", kt, S)  # v_t - S^T k_t
        S = S + (bt[..., None] * kt)[..., :, None] * err[..., None, :]
        return S, jnp.einsum("bhk,bhkv->bhv", qt * scale, S)

    return _scan(step, state, (q, k, v, g, beta), _resets(segments, B, T))


def delta_rule(q, k, v, beta, *, scale, initial_state=None, segments=None):
    g = jnp.zeros(q.shape[:3], f32)
    return gated_delta_rule(q, k, v, g, beta, scale=scale, initial_state=initial_state,
                            segments=segments)


def gsa(q, k, v, s, g, *, scale, initial_state=None, segments=None):
    B, T, H, K = q.shape
    M, V = s.shape[-1], v.shape[-1]
    if initial_state is None:
        initial_state = (jnp.zeros((B, H, K, M), f32), jnp.zeros((B, H, M, V), f32))
    state = tuple(x.astype(f32) for x in initial_state)
    q, k, v, s, g = _time_major(q, k, v, s, g)

    def step(AB, x):
        A, Bm = AB
        qt, kt, vt, st, gt = x
        decay = jnp.exp(gt)  # [B, H, M]
        A = A * decay[..., None, :] + kt[..., :, None] * st[..., None, :]
        Bm = Bm * decay[..., :, None] + st[..., :, None] * vt[..., None, :]
        p = jax.nn.softmax(jnp.einsum("bhk,bhkm->bhm", qt * scale, A), axis=-1)
        return (A, Bm), jnp.einsum("bhm,bhmv->bhv", p, Bm)

    return _scan(step, state, (q, k, v, s, g), _resets(segments, B, T))

"""`selective_scan` (Mamba's selective SSM, Gu & Dao 2023): the reference and the chunked XLA form.

Layout (the op contract's [B, T, H, D], heads grouping channels): q = C_t [B, T, H, K],
k = B_t [B, T, H, K], v = x_t [B, T, H, V], dt [B, T, H, V] (> 0, per channel), A [H, V, K]
(< 0, per channel and state index; not per token). K is Mamba's state size N, V the channels per
head (P). State S [B, H, K, V], S[n, p] = Mamba's h[n, d]:

    S_t[n, p] = exp(dt_t[p] A[p, n]) S_{t-1}[n, p] + k_t[n] dt_t[p] v_t[p]
    o_t[p]    = sum_n scale q_t[n] S_t[n, p]

(Mamba's D x_t skip term and its gate belong to the layer.) The decay depends on both n and p and
is not the outer product of a key-side and a value-side factor, so neither `gla` (key gates) nor
the shared Pallas stages (`chunk_state.state_pass` decays rows and columns by separate vectors;
`chunk_output` factors pair decays through matmuls) can express it.

Chunked form (`xla`), exact for any decay strength: per position the transition is the pair
(a_t = exp(dt_t A) [K, V] zeroed at a reset, u_t = k_t (dt_t v_t)^T); within each chunk of C
positions `lax.associative_scan` of (a, u) with (a1, u1) o (a2, u2) = (a1 a2, a2 u1 + u2) gives
the chunk-local states and the decay from the chunk start (every factor <= 1: no exp(+x)); a
`lax.scan` over chunks carries S; S_t = P_t S_{n-1} + L_t and o_t = S_t^T q_t. Work and memory are
O(T K V) per head (Mamba's own kernel avoids the memory by keeping S_t in SRAM), depth
O(log C + T / C).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels import reference as _ref

F32 = jnp.float32
PREC = jax.lax.Precision.HIGHEST


def _decay(dt, A):
    """exp(dt A): dt [..., H, V] and A [H, V, K] -> [..., H, K, V] float32."""
    return jnp.exp(dt.astype(F32)[..., None, :] * jnp.swapaxes(A.astype(F32), -1, -2))


def reference(q, k, v, dt, A, *, scale, initial_state=None, segments=None):
    """Token-by-token `lax.scan` (the oracle path). Shapes as in the module docstring; returns
    (o float32 [B, T, H, V], final state float32 [B, H, K, V])."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    state = jnp.zeros((B, H, K, V), F32) if initial_state is None else initial_state.astype(F32)
    qt, kt, vt, dtt = _ref._time_major(q, k, v, dt)

    def step(S, x):
        qs, ks, vs, ds = x  # [B, H, K], [B, H, K], [B, H, V], [B, H, V]
        S = _decay(ds, A) * S + ks[..., :, None] * (ds * vs)[..., None, :]
        return S, jnp.einsum("bhk,bhkv->bhv", qs * scale, S, precision=PREC)

    return _ref._scan(step, state, (qt, kt, vt, dtt), _ref._resets(segments, B, T))


def _combine(x, y):
    (a1, u1), (a2, u2) = x, y
    return a1 * a2, a2 * u1 + u2


def xla(q, k, v, dt, A, *, scale, initial_state=None, segments=None, chunk_size=64):
    """The chunked form (module docstring); T a multiple of `chunk_size` (zero k, v and dt after
    the true end leave the state unchanged). Returns (o float32 [B, T, H, V], S_T [B, H, K, V])."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    C = chunk_size
    N = T // C
    a = _decay(dt, A)  # [B, T, H, K, V]
    if segments is not None:
        a = a * (~segments.resets()).astype(F32)[:, :, None, None, None]
    dtv = dt.astype(F32) * v.astype(F32)
    u = k.astype(F32)[..., :, None] * dtv[..., None, :]  # [B, T, H, K, V]
    a, u = (x.reshape(B, N, C, H, K, V) for x in (a, u))
    P, L = jax.lax.associative_scan(_combine, (a, u), axis=2)  # from the chunk start
    S0 = jnp.zeros((B, H, K, V), F32) if initial_state is None else initial_state.astype(F32)

    def step(S, x):
        p_end, l_end = x
        return p_end * S + l_end, S

    S_N, S_prev = jax.lax.scan(step, S0, (jnp.moveaxis(P[:, :, -1], 1, 0),
                                          jnp.moveaxis(L[:, :, -1], 1, 0)))
    S_prev = jnp.moveaxis(S_prev, 0, 1)  # [B, N, H, K, V]: the state entering each chunk
    S_t = P * S_prev[:, :, None] + L
    qs = q.astype(F32).reshape(B, N, C, H, K) * scale
    o = jnp.einsum("bnchk,bnchkv->bnchv", qs, S_t, precision=PREC)
    return o.reshape(B, T, H, V), S_N

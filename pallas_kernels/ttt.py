"""`ttt_linear` (TTT-Linear, Sun et al. 2024, "Learning to (Learn at Test Time)"): the reference
and the chunked XLA form.

The state W [B, H, K, V] is a linear model trained online on the reconstruction loss
||W^T k_t - v_t||^2 by one gradient step per mini-batch of b = `mini_batch_size` tokens, with a
per-token step size eta_t [B, T, H] (>= 0; the loss's factor 2 and the mini-batch mean are in
eta). Every gradient of a mini-batch is taken at the mini-batch's starting W^(m); the output reads
the running W (the dual form):

    W_t = W_{t-1} + eta_t k_t (v_t - W^(m)^T k_t)^T       t in mini-batch m
    o_t = W_t^T (scale q_t)
    over a whole mini-batch:  W^(m+1) = (I - K^T diag(eta) K) W^(m) + K^T diag(eta) V

Mini-batches are counted from each segment's start (the row's start is one): tokens r = 0..b-1 of
a segment form its first mini-batch, r = b..2b-1 the second, ... (r = position within the
segment); a reset sets W to zero. `initial_state` is W before t = 0, where a mini-batch starts;
the final state is W after the last token, a trailing partial mini-batch applied as a complete
(shorter) one. Splitting a sequence into two calls therefore only gives the same outputs at a
multiple of b; `research.layers.ttt_linear` re-feeds a partial mini-batch to decode mid-batch.
With b = 1 this is the delta rule with beta = eta.

Chunked form (any chunk size C, independent of b; exact). A mini-batch may straddle chunk
boundaries (b > C, or a segment starting inside a chunk), so the scan over chunks carries two
states: S, the running W, and Wm, the starting W of the mini-batch open at the chunk boundary.
Per chunk, with Msk_ij = [j < i, same segment, j in an earlier mini-batch than i] (strictly
lower), first_i = [S_{n-1} reaches i], cont_i = [first_i, i's mini-batch opened before the chunk]:

    A  = (I + tril(diag(eta) (K K^T) * Msk))^{-1}              (`xla.unit_lower_inverse`)
    U  = A diag(eta) V,  W1 = A diag(eta (first - cont)) K,  W2 = A diag(eta cont) K
    u  = U - W1 S_{n-1} - W2 Wm_{n-1}                        (u_i = eta_i (v_i - W^(m_i)^T k_i))
    S_n  = carry S_{n-1} + (K * last)^T u
    Wm_n = rf S_{n-1} + (K * pre)^T u   if a mini-batch starts in the chunk (at s*, the last
           start; pre_j = [j < s*, same segment as s*], rf = [S_{n-1} reaches s*]), else Wm_{n-1}
    o  = scale (q * first) S_{n-1} + (scale q K^T * causal * same) u

i.e. the delta rule's WY form with the pairs inside one mini-batch masked out (b = 1 is the delta
rule). When every chunk is whole mini-batches (C a multiple of b, no segment starts off the grid)
W2 = 0 and Wm drops out: the shared state pass with the correction w = W1; with C = b also
A = I.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels import reference as _ref
from pallas_kernels import xla as _xla
from pallas_kernels.chunking import from_chunks

F32 = jnp.float32
PREC = jax.lax.Precision.HIGHEST


def check_mini_batch_size(mini_batch_size) -> None:
    if not isinstance(mini_batch_size, int) or isinstance(mini_batch_size, bool) or mini_batch_size < 1:
        raise ValueError(f"mini_batch_size must be a positive int, got {mini_batch_size!r}")


def batch_starts(segments, B: int, T: int, mini_batch_size: int):
    """bool [B, T]: position t starts a mini-batch (its position within its segment is a multiple
    of b). `segments` a `chunking.Segments` or None (one segment per row)."""
    t = jnp.arange(T, dtype=jnp.int32)
    if segments is None:
        r = jnp.broadcast_to(t, (B, T))
    else:
        start = jnp.where(segments.resets().at[:, 0].set(True), t, 0)
        r = t - jax.lax.cummax(start, axis=1)
    return r % mini_batch_size == 0


def reference(q, k, v, eta, *, scale, initial_state=None, segments=None, mini_batch_size=16):
    """Token-by-token `lax.scan` of (W^(m), W_t) (the oracle path). q, k [B, T, H, K], v [B, T, H, V],
    eta [B, T, H]; returns (o float32 [B, T, H, V], W_T float32 [B, H, K, V])."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    W0 = jnp.zeros((B, H, K, V), F32) if initial_state is None else initial_state.astype(F32)
    qt, kt, vt, et = _ref._time_major(q, k, v, eta)
    starts = batch_starts(segments, B, T, mini_batch_size).T  # [T, B]

    def step(carry, x):
        W_start, W = carry
        qs, ks, vs, es, st = x
        W_start = jnp.where(st[:, None, None, None], W, W_start)
        err = vs - jnp.einsum("bhk,bhkv->bhv", ks, W_start, precision=PREC)
        W = W + (es[..., None] * ks)[..., :, None] * err[..., None, :]
        return (W_start, W), jnp.einsum("bhk,bhkv->bhv", qs * scale, W, precision=PREC)

    o, (_, W) = _ref._scan(step, (W0, W0), (qt, kt, vt, et, starts), _ref._resets(segments, B, T))
    return o, W


def xla(q, k, v, eta, *, scale, initial_state=None, segments=None, chunk_size=64,
        mini_batch_size=16):
    """The chunked form (module docstring); T a multiple of `chunk_size` (zero k, v and eta after
    the true end change nothing). Returns (o float32 [B, T, H, V], W_T float32 [B, H, K, V])."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    C = chunk_size
    N = T // C
    segs = None if segments is None else segments.chunked(C)
    qc, kc, vc, ec = (_xla.chunk(x, C) for x in (q, k, v, eta))
    qc = qc * scale
    starts = batch_starts(segments, B, T, mini_batch_size)
    bid = jnp.cumsum(starts.astype(jnp.int32), axis=1).reshape(B, 1, N, C)  # mini-batch number
    st = starts.reshape(B, 1, N, C)
    bid_prev = jnp.concatenate([jnp.zeros_like(bid[:, :, :1, -1]), bid[:, :, :-1, -1]], axis=2)
    if segs is None:
        first = jnp.ones((B, 1, N, C), bool)
        rid = jnp.zeros((B, 1, N, C), jnp.int32)
        last = first
        carry = jnp.ones((B, 1, N), bool)
    else:
        first, rid, last, carry = segs.first, segs.rid, segs.last, segs.carry
    causal = jnp.tril(jnp.ones((C, C), bool))
    same = causal & (rid[..., :, None] == rid[..., None, :])
    earlier = bid[..., None, :] < bid[..., :, None]  # j in an earlier mini-batch than i
    cont = first & (bid == bid_prev[..., None])  # i's mini-batch opened before the chunk
    f32 = lambda m: m.astype(F32)  # noqa: E731
    lower = jnp.einsum("...ik,...jk->...ij", kc, kc, precision=PREC) * ec[..., :, None]
    a = _xla.unit_lower_inverse(jnp.where(same & earlier, lower, 0.0))
    prod = lambda w: jnp.einsum("...ij,...jd->...id", a, w, precision=PREC)  # noqa: E731
    U = prod(ec[..., None] * vc)
    W1 = prod((ec * f32(first & ~cont))[..., None] * kc)  # reads S_{n-1}
    W2 = prod((ec * f32(cont))[..., None] * kc)  # reads the open mini-batch's start W
    # The mini-batch open at the chunk's end starts at its last start s* (if any): its W is
    # rf S_{n-1} + (K * pre)^T u, pre_j = [j < s*, same segment as s*], rf = S_{n-1} reaches s*.
    pos = jnp.arange(C)
    s_star = jnp.max(jnp.where(st, pos, -1), axis=-1)  # [B, 1, N]
    has = s_star >= 0
    at = jnp.clip(s_star, 0, C - 1)[..., None]
    rid_s = jnp.take_along_axis(rid, at, axis=-1)
    rf = f32(has & jnp.take_along_axis(first, at, axis=-1)[..., 0])
    pre = f32((pos < s_star[..., None]) & (rid == rid_s))
    S0 = jnp.zeros((B, H, K, V), F32) if initial_state is None else initial_state.astype(F32)
    xs = (U, W1, W2, kc * f32(last)[..., None], kc * pre[..., None],
          jnp.broadcast_to(f32(carry), (B, H, N)), jnp.broadcast_to(rf, (B, H, N)),
          jnp.broadcast_to(f32(has), (B, H, N)))

    def step(SW, x):
        S, Wm = SW
        Un, W1n, W2n, klast, kpre, cn, rfn, hn = x
        mm = lambda w, s: jnp.einsum("bhck,bhkv->bhcv", w, s, precision=PREC)  # noqa: E731
        u = Un - mm(W1n, S) - mm(W2n, Wm)
        tn = lambda kk: jnp.einsum("bhck,bhcv->bhkv", kk, u, precision=PREC)  # noqa: E731
        S_new = cn[..., None, None] * S + tn(klast)
        Wm_new = hn[..., None, None] * (rfn[..., None, None] * S + tn(kpre)) + (
            1.0 - hn[..., None, None]) * Wm
        return (S_new, Wm_new), (S, u)

    (S_N, _), (states, v_new) = jax.lax.scan(step, (S0, S0), [jnp.moveaxis(x, 2, 0) for x in xs])
    states, v_new = jnp.moveaxis(states, 0, 2), jnp.moveaxis(v_new, 0, 2)
    o = jnp.einsum("...ck,...kv->...cv", qc * f32(first)[..., None], states, precision=PREC)
    scores = jnp.where(same, jnp.einsum("...ik,...jk->...ij", qc, kc, precision=PREC), 0.0)
    o = o + jnp.einsum("...ij,...jv->...iv", scores, v_new, precision=PREC)
    return from_chunks(o), S_N

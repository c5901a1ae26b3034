"""Chunked forms in plain JAX: the fast path on CPU and the fallback everywhere.

The stages (docs/design.md), shared by every family:
  1. `chunking` (shared with the Pallas kernels): the chunk layout, the segment masks and the
     chunk-local log-decays (`chunking.log_decays`);
  2. intra-chunk scores: `_intra_scalar`, `_intra_key` (per-key-channel gates) and `_intra_value`
     (per-value-channel gates), the latter two built over a hierarchy of sub-blocks so that no
     exp(+x) occurs;
     for the delta rule, the WY factors (`_wy`, through `unit_lower_inverse`);
  3. `state_pass`: S_n = decay_n S_{n-1} + kd_n^T (vd_n - w_n S_{n-1}), sequential over chunks;
  4. output: o = (q * decay_in) S_{n-1} + intra (for the delta rule inside the state pass's scan,
     `_delta_pass`, so that the per-chunk states are not stacked in the forward).
Gradients come from JAX autodiff of these stages.

Inputs are padded by the caller (T = N * C). Shapes inside: [B, H, N, C, D].
Segment resets are masks: a pair (i, j) interacts only within one segment; the previous chunk's state
reaches position i only if no reset happened in the chunk up to i. Masked log-decays are -inf, and
exp(-inf) = 0 keeps both values and gradients finite.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels.chunking import ChunkSegments, LogDecays, from_chunks, log_decays, to_chunks

f32 = jnp.float32
PREC = jax.lax.Precision.HIGHEST
NEG_INF = -jnp.inf


def _einsum(spec, *xs):
    return jnp.einsum(spec, *xs, precision=PREC)


def chunk(x, C: int):
    """[B, T, H, ...] -> [B, H, N, C, ...] float32."""
    return to_chunks(x, C).astype(f32)


def _causal(C: int, strict: bool = False):
    return jnp.tril(jnp.ones((C, C), bool), -1 if strict else 0)


def _pair_log_decay(gc, segs: ChunkSegments | None, C: int):
    """Scalar gates: log decay from j to i, [B, H, N, C, C]; -inf above the diagonal and across
    segments."""
    keep = _causal(C)
    if segs is not None:
        keep = keep & segs.same()
    return jnp.where(keep, gc[..., :, None] - gc[..., None, :], NEG_INF)


def _diag_blocks(x, nb: int):
    """[.., C, C] -> its nb diagonal blocks [.., nb, C/nb, C/nb]."""
    *lead, C, _ = x.shape
    s = C // nb
    x = x.reshape(*lead, nb, s, nb, s)
    return jnp.moveaxis(jnp.diagonal(x, axis1=-4, axis2=-2), -1, -3)


def _halves(x, nb: int, s: int):
    """[.., C, D] -> (first, second) halves of each block of 2s rows, each [.., nb, s, D]."""
    x = x.reshape(*x.shape[:-2], nb, 2, s, x.shape[-1])
    return x[..., 0, :, :], x[..., 1, :, :]


def _intra_key(q, k, gc, segs: ChunkSegments | None):
    """Per-key-channel gates: A_ij = sum_d q_id k_jd exp(gc_id - gc_jd) for j <= i in one segment.

    q, k, gc: [B, H, N, C, D] -> A [B, H, N, C, C]. Built bottom-up over blocks of 1, 2, 4, ..., C
    rows: at each level the pairs (i in a block's second half, j in its first half) factor through
    r, the log-decay at the end of the first half, so exp(gc_i - r) <= 1 and exp(r - gc_j) <= 1:
    exact for any decay strength, and matmul-shaped (no [C, C, D] tensor).
    """
    *lead, C, D = q.shape
    blocks = jnp.sum(q * k, axis=-1)[..., :, None, None]  # [.., C, 1, 1]: the diagonal
    s = 1
    while s < C:
        nb = C // (2 * s)
        (q0, q1), (k0, k1), (g0, g1) = (_halves(x, nb, s) for x in (q, k, gc))
        r = g0[..., -1:, :]
        low = _einsum("...id,...jd->...ij", q1 * jnp.exp(g1 - r), k0 * jnp.exp(r - g0))
        prev = blocks.reshape(*lead, nb, 2, s, s)
        zero = jnp.zeros_like(low)
        top = jnp.concatenate([prev[..., 0, :, :], zero], axis=-1)
        bottom = jnp.concatenate([low, prev[..., 1, :, :]], axis=-1)
        blocks = jnp.concatenate([top, bottom], axis=-2)  # [.., nb, 2s, 2s]
        s *= 2
    a = blocks.reshape(*lead, C, C)
    return a if segs is None else jnp.where(segs.same(), a, 0.0)


def _intra_value(scores, v, gc):
    """Per-value-channel gates: o_im = sum_{j <= i} scores_ij v_jm exp(gc_im - gc_jm).

    scores: [B, H, N, C, C] (causal and segment-masked); v, gc: [B, H, N, C, M]. Same block
    hierarchy as `_intra_key`, with the reference r on the value side.
    """
    *lead, C, M = v.shape
    o = jnp.diagonal(scores, axis1=-2, axis2=-1)[..., None] * v
    s = 1
    while s < C:
        nb = C // (2 * s)
        (v0, _), (g0, g1) = _halves(v, nb, s), _halves(gc, nb, s)
        r = g0[..., -1:, :]
        low = _diag_blocks(scores, nb)[..., s:, :s]  # [.., nb, s, s]
        part = _einsum("...ij,...jm->...im", low, v0 * jnp.exp(r - g0)) * jnp.exp(g1 - r)
        o = o + jnp.stack([jnp.zeros_like(part), part], axis=-3).reshape(*lead, C, M)
        s *= 2
    return o


def state_pass(S0, decay, kd, vd, w=None):
    """The chunked scan: S_n = decay_n * S_{n-1} + kd_n^T (vd_n - w_n S_{n-1}).

    S0: [B, H, K, V] float32; decay: [B, H, N, K|1, V|1] multiplicative; kd, w: [B, H, N, C, K];
    vd: [B, H, N, C, V]. Returns (states [B, H, N, K, V] = S_{n-1} per chunk, S_N, v_new
    [B, H, N, C, V] = vd - w S_{n-1}, or vd when w is None).
    """
    if w is None:  # no feedback from the state: all chunk updates in one batched matmul
        upd = jnp.moveaxis(_einsum("bhnck,bhncv->bhnkv", kd, vd), 2, 0)

        def step(S, x):
            return x[0] * S + x[1], S

        S_N, states = jax.lax.scan(step, S0, (jnp.moveaxis(decay, 2, 0), upd))
        return jnp.moveaxis(states, 0, 2), S_N, vd

    def step(S, x):
        dec, kn, vn, wn = x
        vn = vn - _einsum("bhck,bhkv->bhcv", wn, S)
        return dec * S + _einsum("bhck,bhcv->bhkv", kn, vn), (S, vn)

    xs = [jnp.moveaxis(x, 2, 0) for x in (decay, kd, vd, w)]
    S_N, (states, v_new) = jax.lax.scan(step, S0, xs)
    return jnp.moveaxis(states, 0, 2), S_N, jnp.moveaxis(v_new, 0, 2)


def _init_state(initial_state, B, H, K, V):
    return jnp.zeros((B, H, K, V), f32) if initial_state is None else initial_state.astype(f32)


def _gated(q, k, v, g, kind, *, scale, initial_state, segments, chunk_size):
    """Gated linear attention, chunked. kind: "none" | "scalar" ([B,T,H]) | "key" ([B,T,H,K])
    | "value" ([B,T,H,V]). Returns (o [B, T, H, V] float32, final state [B, H, K, V])."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    C = chunk_size
    segs = None if segments is None else segments.chunked(C)
    qc, kc, vc = chunk(q, C) * scale, chunk(k, C), chunk(v, C)
    S0 = _init_state(initial_state, B, H, K, V)
    if kind in ("none", "scalar"):
        gcn = chunk(g, C) if kind == "scalar" else jnp.zeros(qc.shape[:4], f32)
        ld = log_decays(gcn, segs)
        scores = _einsum("...ik,...jk->...ij", qc, kc) * jnp.exp(_pair_log_decay(ld.gc, segs, C))
        states, S_N, _ = state_pass(
            S0, jnp.exp(ld.total)[..., None, None], kc * jnp.exp(ld.to_end)[..., None], vc
        )
        o = _einsum("...ck,...kv->...cv", qc * jnp.exp(ld.into)[..., None], states)
    elif kind == "key":
        ld = log_decays(chunk(g, C), segs)
        scores = _intra_key(qc, kc, ld.gc, segs)
        states, S_N, _ = state_pass(
            S0, jnp.exp(ld.total)[..., :, None], kc * jnp.exp(ld.to_end), vc
        )
        o = _einsum("...ck,...kv->...cv", qc * jnp.exp(ld.into), states)
    elif kind == "value":
        ld = log_decays(chunk(g, C), segs)
        keep = _causal(C) if segs is None else _causal(C) & segs.same()
        raw = jnp.where(keep, _einsum("...ik,...jk->...ij", qc, kc), 0.0)
        states, S_N, _ = state_pass(
            S0, jnp.exp(ld.total)[..., None, :], kc, vc * jnp.exp(ld.to_end)
        )
        o = _einsum("...ck,...kv->...cv", qc, states) * jnp.exp(ld.into)
        return from_chunks(o + _intra_value(raw, vc, ld.gc)), S_N
    else:
        raise ValueError(f"unknown gate kind {kind!r}")
    o = o + _einsum("...ij,...jv->...iv", scores, vc)
    return from_chunks(o), S_N


def linear_attention(q, k, v, *, scale, initial_state=None, segments=None, chunk_size=64):
    return _gated(q, k, v, None, "none", scale=scale, initial_state=initial_state,
                  segments=segments, chunk_size=chunk_size)


def simple_gla(q, k, v, g, *, scale, initial_state=None, segments=None, chunk_size=64):
    return _gated(q, k, v, g, "scalar", scale=scale, initial_state=initial_state,
                  segments=segments, chunk_size=chunk_size)


def gla(q, k, v, g, *, scale, initial_state=None, segments=None, chunk_size=64):
    return _gated(q, k, v, g, "key", scale=scale, initial_state=initial_state,
                  segments=segments, chunk_size=chunk_size)


def gsa(q, k, v, s, g, *, scale, initial_state=None, segments=None, chunk_size=64):
    """Two GLA passes: slot logits with the gate on the value (slot) side, softmax over slots,
    then a key-side-gated pass that reads the slot values."""
    A0, B0 = (None, None) if initial_state is None else initial_state
    common = dict(segments=segments, chunk_size=chunk_size)
    logits, A_N = _gated(q, k, s, g, "value", scale=scale, initial_state=A0, **common)
    p = jax.nn.softmax(logits, axis=-1)
    o, B_N = _gated(p, s, v, g, "key", scale=1.0, initial_state=B0, **common)
    return o, (A_N, B_N)


INVERSE_METHODS = ("auto", "doubling", "solve")


def unit_lower_inverse(lower, method: str = "auto"):
    """(I + L)^{-1} for strictly lower-triangular L [.., C, C] (float32, C a power of two).

    `method`: "doubling" (`_inverse_by_doubling`: 2 log2(C) batched matmuls), "solve" (XLA's
    triangular solve against I), or "auto": chosen per platform when the program is lowered
    (`lax.platform_dependent`): doubling on CPU, where XLA's triangular solve goes through LAPACK
    one small system at a time (0.5 s per call at T=2048), the solve elsewhere (compiled for one
    v5e chip at B=8 T=2048 H=16 C=64 the doubling moved 10.3 GB forward and 31.7 GB forward+
    backward, the solve 1.6 and 3.6 GB; BENCHMARKS.md has the current figures). Entries on and
    above the diagonal of `lower` are not read. The backward is one formula for every method
    (`_inverse_bwd`); it saves only the inverse.
    """
    if method not in INVERSE_METHODS:
        raise ValueError(f"method must be one of {INVERSE_METHODS}, got {method!r}")
    return _unit_lower_inverse(lower, method)


def _inverse_by_doubling(lower):
    """Recursive doubling over diagonal blocks, [[A, 0], [B, D]]^{-1} = [[A^-1, 0],
    [-D^-1 B A^-1, D^-1]], from 1 x 1 blocks up to C x C."""
    *lead, C, _ = lower.shape
    inv = jnp.ones((*lead, C, 1, 1), lower.dtype)  # the 1 x 1 diagonal blocks of I + L
    s = 1
    while s < C:
        nb = C // (2 * s)
        pair = inv.reshape(*lead, nb, 2, s, s)
        a_inv, d_inv = pair[..., 0, :, :], pair[..., 1, :, :]
        b = _diag_blocks(lower, nb)[..., s:, :s]
        low = -_einsum("...ij,...jk,...kl->...il", d_inv, b, a_inv)
        top = jnp.concatenate([a_inv, jnp.zeros_like(low)], axis=-1)
        bottom = jnp.concatenate([low, d_inv], axis=-1)
        inv = jnp.concatenate([top, bottom], axis=-2)  # [.., nb, 2s, 2s]
        s *= 2
    return inv.reshape(*lead, C, C)


def _inverse_by_solve(lower):
    """XLA's triangular solve of (I + L) X = I (the unit diagonal is implied, not read)."""
    eye = jnp.broadcast_to(jnp.eye(lower.shape[-1], dtype=lower.dtype), lower.shape)
    return jax.lax.linalg.triangular_solve(lower, eye, left_side=True, lower=True,
                                           unit_diagonal=True)


def _inverse_primal(lower, method):
    if method == "doubling":
        return _inverse_by_doubling(lower)
    if method == "solve":
        return _inverse_by_solve(lower)
    return jax.lax.platform_dependent(lower, cpu=_inverse_by_doubling, default=_inverse_by_solve)


def _inverse_fwd(lower, method):
    a = _inverse_primal(lower, method)
    return a, a


def _inverse_bwd(method, a, da):
    """A = (I + L)^{-1}: dA = -A dL A, so the cotangent of L is -A^T dA A^T, strictly lower."""
    del method
    dl = -_einsum("...ji,...jk,...lk->...il", a, da, a)
    return (jnp.where(_causal(a.shape[-1], strict=True), dl, 0.0),)


_unit_lower_inverse = jax.custom_vjp(_inverse_primal, nondiff_argnums=(1,))
_unit_lower_inverse.defvjp(_inverse_fwd, _inverse_bwd)


def _wy(kc, vc, bc, ld: LogDecays, segs, C):
    """WY factors of one chunk: with T = I + tril(diag(beta) (Gamma * K K^T), -1),
    U = T^{-1} diag(beta) V and W = T^{-1} diag(beta * gamma) K."""
    gam = jnp.exp(_pair_log_decay(ld.gc, segs, C))  # [.., C, C]
    lower = _einsum("...ik,...jk->...ij", kc, kc) * gam * bc[..., :, None]
    a = unit_lower_inverse(lower)  # reads only the strictly lower part; its backward masks dL
    u = _einsum("...ij,...jv->...iv", a, bc[..., None] * vc)
    w = _einsum("...ij,...jk->...ik", a, (bc * jnp.exp(ld.into))[..., None] * kc)
    return u, w, gam


def gated_delta_rule(q, k, v, g, beta, *, scale, initial_state=None, segments=None, chunk_size=64):
    """Chunked gated delta rule (DeltaNet / Gated DeltaNet papers): WY factors per chunk, then the
    shared state pass with v_new = U - W S_{n-1}, then o = (q gamma) S_{n-1} + (q k^T * Gamma) v_new."""
    B, T, H, K = q.shape
    C = chunk_size
    segs = None if segments is None else segments.chunked(C)
    qc, kc, vc = chunk(q, C), chunk(k, C), chunk(v, C)
    bc = chunk(beta, C)
    ld = log_decays(chunk(g, C), segs)
    u, w, gam = _wy(kc, vc, bc, ld, segs, C)
    S0 = _init_state(initial_state, B, H, K, v.shape[-1])
    scores = _einsum("...ik,...jk->...ij", qc, kc) * (scale * gam)
    o, S_N = _delta_pass(S0, jnp.exp(ld.total), kc, jnp.exp(ld.to_end), u, w, qc,
                         scale * jnp.exp(ld.into), scores)
    return from_chunks(o), S_N


def _delta_pass(S0, decay, k, k_gain, u, w, q, q_gain, scores):
    """The delta family's state pass with the output in the same scan, so that the per-chunk
    states are never stacked in the forward: per chunk n, with kd = k_gain k and qd = q_gain q,
    v_new = u - w S, o = qd S + scores v_new, S <- decay S + kd^T v_new. The gains are applied
    inside the scan (no scaled copies of q and k). decay [B, H, N]; k_gain, q_gain [B, H, N, C];
    k, q, w [B, H, N, C, K]; u [B, H, N, C, V]; scores [B, H, N, C, C]. Returns
    (o [B, H, N, C, V], S_N)."""

    def step(S, x):
        dec, kn, ke, un, wn, qn, qe, pn = x
        vn = un - _einsum("bhck,bhkv->bhcv", wn, S)
        o = _einsum("bhck,bhkv->bhcv", qn * qe[..., None], S) + _einsum("bhij,bhjv->bhiv", pn, vn)
        return dec[..., None, None] * S + _einsum("bhck,bhcv->bhkv", kn * ke[..., None], vn), o

    xs = [jnp.moveaxis(x, 2, 0) for x in (decay, k, k_gain, u, w, q, q_gain, scores)]
    # Under differentiation each step keeps only its inputs (the incoming state and its slices):
    # the backward recomputes v_new = u - w S and the gained q and k instead of stacking them.
    S_N, o = jax.lax.scan(jax.checkpoint(step, prevent_cse=False), S0, xs)
    return jnp.moveaxis(o, 0, 2), S_N


def delta_rule(q, k, v, beta, *, scale, initial_state=None, segments=None, chunk_size=64):
    g = jnp.zeros(q.shape[:3], f32)
    return gated_delta_rule(q, k, v, g, beta, scale=scale, initial_state=initial_state,
                            segments=segments, chunk_size=chunk_size)

"""Pallas `delta_rule` and `gated_delta_rule`: the WY stage, then the shared state pass and output.

Notation: B batch, T time (a multiple of C, padded by the caller), H heads, K key dim, V value
dim, C chunk size, N = T / C, G = B * H. Public layout [B, T, H, D]; the stages run on [G, N, C, D].

Per chunk n, with gc the chunk-local cumulative log-gate (zero for `delta_rule`):

    1. WY (`wy.py`, this op's own stage):  W = A diag(beta gamma) K,  U = A diag(beta) V,
       A = (I + tril(diag(beta) (Gamma * K K^T), -1))^{-1}
    2. state pass (`chunk_state.state_pass`, shared with the gated-linear ops, with its delta-rule
       operand w = W):  v_new = U - W S_{n-1};  S_n = dec_n S_{n-1} + (K to_end)^T v_new
    3. output (`chunk_output.output_stage`, "scalar" mode, shared):
       o = (qs gamma) S_{n-1} + ((qs K^T) * Gamma) v_new

Each stage is a `jax.custom_vjp` around Pallas kernels, so `jax.grad` of the op runs Pallas
kernels only (plus elementwise glue: cumulative sums and the masked decays of the chunk ends).
The flavour (TPU Mosaic or Triton; interpret mode on CPU) comes from `_backend.current()` when
the op is traced.

Performance notes (not yet measured on a GPU). At B=8, T=2048, H=16, D=128 in bf16 the forward
moves about 2.2 GB through HBM (about 0.7 ms at 3 TB/s, against jla's 0.35 ms). Most of that comes
from: the float32 per-chunk states [G, N, K, V] (268 MB, written by the state pass and read by the
output stage), float32 v_new, and the [B, T, H, D] <-> [B, H, T, D] transposes around the stages.
To close the gap: keep states and v_new in the input dtype as FLA does; read [B, T, H, D] directly
in the BlockSpecs; fuse the WY products W, U into the state pass (recompute them from A there); and
on Hopper move the state pass and output onto Mosaic GPU (`plgpu`: wgmma with TMA pipelining), as
jla does.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from pallas_kernels.pallas import _backend, register, wy
from pallas_kernels.pallas.chunk_output import output_stage
from pallas_kernels.pallas.chunk_state import state_pass

F32 = jnp.float32
MAX_HEAD_DIM = 256
CHUNK_SIZES = (16, 32, 64, 128)
DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)


# ----------------------------------------------------------------------------- the WY stage as a vjp


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def wy_factors(backend, chunk_size, k, v, beta, gc, r):
    """(W [B, H, T, K], U [B, H, T, V]) float32 of `wy.wy_fwd`, differentiable in k, v, beta, gc."""
    w, u, _ = wy.wy_fwd(k, v, beta, gc, r, chunk_size=chunk_size, backend=backend)
    return w, u


def _wy_fwd(backend, chunk_size, k, v, beta, gc, r):
    w, u, a = wy.wy_fwd(k, v, beta, gc, r, chunk_size=chunk_size, backend=backend)
    return (w, u), (k, v, beta, gc, r, a)


def _wy_bwd(backend, chunk_size, res, cts):
    k, v, beta, gc, r, a = res
    dw, du = cts
    dk, dv, dbeta, dgc = wy.wy_bwd(k, v, beta, gc, r, a, dw, du, chunk_size=chunk_size,
                                   backend=backend)
    return (dk.astype(k.dtype), dv.astype(v.dtype), dbeta.astype(beta.dtype),
            dgc.astype(gc.dtype), jnp.zeros_like(r))


wy_factors.defvjp(_wy_fwd, _wy_bwd)


# ----------------------------------------------------------------------------- the op


def _pow2_at_least(n: int, lo: int) -> int:
    p = lo
    while p < n:
        p *= 2
    return p


def supports(q, k, v, *gates, chunk_size) -> str | None:
    """None when the kernels handle the call, else the reason (impl="auto" then uses xla)."""
    K, V = q.shape[-1], v.shape[-1]
    if K > MAX_HEAD_DIM or V > MAX_HEAD_DIM:
        return f"head dims up to {MAX_HEAD_DIM} are supported, got K={K}, V={V}"
    if chunk_size not in CHUNK_SIZES:
        return f"chunk_size must be one of {CHUNK_SIZES}, got {chunk_size}"
    for name, x in (("q", q), ("k", k), ("v", v)) + tuple(("gate", g) for g in gates):
        if x.dtype not in DTYPES:
            return f"{name} dtype {x.dtype} is not one of float32, bfloat16, float16"
    return None


def _chunk_end(gc, r):
    """XLA glue: (to_end [G, N, C] decay from i to the chunk end, dec [G, N] over the chunk),
    both zero across a segment reset. gc [G, N, C]; r [B, 1, N, C] broadcast over heads."""
    r_last = r[..., -1:]
    same_end = r == r_last
    to_end = jnp.where(same_end, jnp.exp(jnp.where(same_end, gc[..., -1:] - gc, 0.0)), 0.0)
    dec = jnp.where(r_last[..., 0] == 0, jnp.exp(gc[..., -1]), 0.0)
    return to_end, dec


def gated_delta_rule_pallas(q, k, v, g, beta, *, scale, initial_state=None, segment_ids=None,
                            chunk_size=64, output_final_state=True, backend=None):
    """Chunked gated delta rule on Pallas kernels (padded problem; see the module docstring).

    Args:
      q, k: [B, T, H, K]; v: [B, T, H, V]; g: [B, T, H] log-decay (<= 0) or None (delta_rule);
      beta: [B, T, H]; scale: float multiplying q; initial_state: [B, H, K, V] float32 or None;
      segment_ids: int32 [B, T] or None; chunk_size: C (T % C == 0); backend: a
      `_backend.Backend` (None: `_backend.current()`).
    Returns:
      (o [B, T, H, V] float32, final state [B, H, K, V] float32).
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    C = chunk_size
    reason = supports(q, k, v, beta, *(() if g is None else (g,)), chunk_size=C)
    if reason is not None:
        raise ValueError(f"delta_rule Pallas kernels: {reason}")
    if T % C:
        raise ValueError(f"T = {T} must be a multiple of chunk_size = {C} (the op pads)")
    backend = wy.resolve(backend)
    N, G = T // C, B * H
    # Triton blocks need power-of-two dims (>= 16 for tl.dot); zero head-dim padding is exact.
    Kp, Vp = (K, V) if backend.kind == "tpu" else (_pow2_at_least(K, 16), _pow2_at_least(V, 16))
    pad = lambda x, d, to: x if d == to else jnp.pad(
        x, [(0, 0)] * (x.ndim - 1) + [(0, to - d)])
    head_major = lambda x: jnp.swapaxes(x, 1, 2)  # [B, T, H, ...] -> [B, H, T, ...]
    qh = head_major(pad(q, K, Kp))
    kh = head_major(pad(k, K, Kp))
    vh = head_major(pad(v, V, Vp))
    bh = head_major(beta).astype(F32)
    if g is None:
        gc = jnp.zeros((B, H, T), F32)
    else:
        gc = wy.chunk_cumsum(head_major(g), C)
    if segment_ids is None:
        r = jnp.zeros((B, T), F32)
    else:
        r = wy.segment_resets(segment_ids, C)

    w, u = wy_factors(backend, C, kh, vh, bh, gc, r)

    gcn = gc.reshape(G, N, C)
    rn = r.reshape(B, 1, N, C)
    to_end, dec = _chunk_end(gc.reshape(B, H, N, C), rn)
    kc = kh.reshape(G, N, C, Kp)
    decayed = g is not None or segment_ids is not None
    kd, decay_k = kc, None  # ungated, unsegmented: to_end = dec = 1
    if decayed:
        # Key side of the state update, in k's dtype (bf16 halves the traffic of this operand).
        kd = (kc.astype(F32) * to_end.reshape(G, N, C, 1)).astype(
            wy.compute_dtype(k.dtype, v.dtype))
        decay_k = jnp.broadcast_to(dec.reshape(G, N, 1), (G, N, Kp))
    h0 = None
    if initial_state is not None:
        h0 = pad(jnp.pad(initial_state.astype(F32), [(0, 0), (0, 0), (0, Kp - K), (0, 0)]), V, Vp)
        h0 = h0.reshape(G, Kp, Vp)
    with _backend.use_backend(backend.kind, interpret=backend.interpret):
        states, h_final, v_new = state_pass(
            kd, u.reshape(G, N, C, Vp), decay_k=decay_k, h0=h0, w=w.reshape(G, N, C, Kp))
        segments = None
        if segment_ids is not None:
            rid = r.reshape(B, N, C)
            segments = (rid.astype(jnp.int32), (rid == 0).astype(F32))
        o = output_stage(
            (qh.astype(F32) * scale).astype(q.dtype).reshape(G, N, C, Kp), kc, v_new, states,
            None if g is None else gcn, segments, mode="scalar", heads=H)
    o = jnp.swapaxes(o.reshape(B, H, T, Vp)[..., :V], 1, 2)
    final = h_final.reshape(B, H, Kp, Vp)[:, :, :K, :V]
    return o, final


def _delta_rule(q, k, v, beta, *, scale, initial_state, segment_ids, chunk_size,
                output_final_state):
    return gated_delta_rule_pallas(q, k, v, None, beta, scale=scale, initial_state=initial_state,
                                   segment_ids=segment_ids, chunk_size=chunk_size,
                                   output_final_state=output_final_state)


def _gated_delta_rule(q, k, v, g, beta, *, scale, initial_state, segment_ids, chunk_size,
                      output_final_state):
    return gated_delta_rule_pallas(q, k, v, g, beta, scale=scale, initial_state=initial_state,
                                   segment_ids=segment_ids, chunk_size=chunk_size,
                                   output_final_state=output_final_state)


register("delta_rule", _delta_rule, supports)
register("gated_delta_rule", _gated_delta_rule, supports)

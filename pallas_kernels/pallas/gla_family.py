"""Pallas paths of the gated-linear family: linear_attention, simple_gla, gla and gsa.

Each op is plain-JAX glue (the shared stage 1 of `pallas_kernels.chunking`: chunk layout, segment
masks, chunk-local log-decays; and the gsa softmax) around two Pallas stages shared by the whole
family:

    chunk_state.state_pass     stage 3: S_n = decay_n * S_{n-1} + kd_n^T vd_n, states per chunk
    chunk_output.output_stage  stages 2 + 4: o = carry * (q decayed) S_{n-1} + intra-chunk scores @ v

Both stages are `jax.custom_vjp`s with Pallas backward kernels, and the glue is differentiated by
JAX, so every op is differentiable in q, k, v, every gate and the initial state, including through
the final state. `gsa` is two GLA passes with a softmax over the M slots between: the first with
the gate on the value (slot) axis of a K x M state, the second with it on the key (slot) axis of an
M x V state.

Notation: B batch, T time (a multiple of C in the stages; `pallas.Kernel.fn` pads it, except on
TPU for linear_attention, simple_gla and gla, whose fused kernels mask it), H heads, K key dim,
V value dim (both padded for the flavour by `pallas.Kernel.fn`), M gsa slots, C chunk size,
N = T / C, G = B * H.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels.chunking import (
    ChunkSegments,
    from_chunks,
    log_decays,
    pad_dim,
    padded_dim,
    to_chunks,
)
from pallas_kernels.pallas import _backend, chunk_fused, gsa_fused
from pallas_kernels.pallas.chunk_output import output_stage
from pallas_kernels.pallas.chunk_state import state_pass

F32 = jnp.float32


def output_segments(segs: ChunkSegments | None):
    """The (rid int32 [B, N, C], carry float32 [B, N, C]) operand of `output_stage`."""
    if segs is None:
        return None
    return segs.rid[:, 0], segs.first[:, 0].astype(F32)


def gated_scan(q, k, v, g, kind: str, *, h0, segs: ChunkSegments | None, barrier: bool = True):
    """One chunked gated-linear-attention pass on chunked inputs (stages 1 to 4).

    Args:
      q, k: [B, H, N, C, K] (q already scaled); v: [B, H, N, C, V]; g: chunked log gates per
        `kind`: "none" (None), "scalar" [B, H, N, C], "key" [B, H, N, C, K], "value"
        [B, H, N, C, V]; h0: float32 [B, H, K, V] or None; segs: `ChunkSegments` or None;
      barrier: put the chunked k, v behind an optimization barrier (see below).

    Returns:
      (o float32 [B, H, N, C, V], final state float32 [B, H, K, V]).
    """
    B, H, N, C, K = k.shape
    V = v.shape[-1]
    G = B * H
    if barrier:
        # Chunk layout once: without the barrier XLA on TPU fuses the [B, T, H] -> [B, H, N, C]
        # transpose of k into the decayed-k product as well as copying it for the output stage,
        # reading k from HBM twice (+10% bytes for simple_gla and gsa; gla does better without).
        k, v = jax.lax.optimization_barrier((k, v))
    flat = lambda x: None if x is None else x.reshape(G, *x.shape[2:])  # noqa: E731
    kd, vd, decay_k, decay_v, b = k, v, None, None, None
    if kind not in ("none", "scalar", "key", "value"):
        raise ValueError(f"kind must be none|scalar|key|value, got {kind!r}")
    if kind != "none" or segs is not None:
        # stage 1: chunk-local log-decays (a zero gate when there is none: the segment masks)
        ld = log_decays(jnp.zeros((B, H, N, C), F32) if g is None else g, segs)
        to_end, total = jnp.exp(ld.to_end), jnp.exp(ld.total)
        b = None if kind == "none" else ld.gc
        if kind in ("none", "scalar"):
            kd = (k * to_end[..., None]).astype(k.dtype)
            decay_k = jnp.broadcast_to(total[..., None], (B, H, N, K))
        elif kind == "key":
            kd = (k * to_end).astype(k.dtype)
            decay_k = total
        else:
            vd = (v * to_end).astype(v.dtype)
            decay_v = total
    states, h_final, _ = state_pass(flat(kd), flat(vd), decay_k=flat(decay_k),
                                    decay_v=flat(decay_v), h0=flat(h0))
    mode = "scalar" if kind == "none" else kind
    o = output_stage(flat(q), flat(k), flat(v), states, flat(b), output_segments(segs), mode=mode,
                     heads=H)
    return o.reshape(B, H, N, C, V), h_final.reshape(B, H, K, -1)


def _scaled(q, scale, C):
    return to_chunks((q.astype(F32) * scale).astype(q.dtype), C)


def _gla_like(kind, q, k, v, g, *, scale, initial_state, segments, chunk_size):
    if chunk_fused.applies(kind):  # TPU: one kernel forward, one backward, the state in VMEM
        return chunk_fused.fused_scan(kind, q, k, v, g, scale=scale,
                                      initial_state=initial_state, segments=segments,
                                      chunk_size=chunk_size)
    return _staged(kind, q, k, v, g, scale=scale, initial_state=initial_state,
                   segments=segments, chunk_size=chunk_size)


def _staged(kind, q, k, v, g, *, scale, initial_state, segments, chunk_size):
    """linear_attention / simple_gla / gla as the separate stages (gated_scan), o float32."""
    C = chunk_size
    segs = None if segments is None else segments.chunked(C)
    o, hT = gated_scan(_scaled(q, scale, C), to_chunks(k, C), to_chunks(v, C),
                       None if g is None else to_chunks(g, C), kind, h0=initial_state, segs=segs,
                       barrier=kind != "key")
    return from_chunks(o), hT


def linear_attention(q, k, v, *, scale, initial_state, segments, chunk_size):
    """Padded problem: q, k [B, T, H, K], v [B, T, H, V] -> (o f32 [B, T, H, V], state [B, H, K, V])."""
    return _gla_like("none", q, k, v, None, scale=scale, initial_state=initial_state,
                     segments=segments, chunk_size=chunk_size)


def simple_gla(q, k, v, g, *, scale, initial_state, segments, chunk_size):
    """Padded problem; g [B, T, H] -> (o f32 [B, T, H, V], state [B, H, K, V])."""
    return _gla_like("scalar", q, k, v, g, scale=scale, initial_state=initial_state,
                     segments=segments, chunk_size=chunk_size)


def gla(q, k, v, g, *, scale, initial_state, segments, chunk_size):
    """Padded problem; g [B, T, H, K] -> (o f32 [B, T, H, V], state [B, H, K, V])."""
    return _gla_like("key", q, k, v, g, scale=scale, initial_state=initial_state,
                     segments=segments, chunk_size=chunk_size)


def gsa(q, k, v, s, g, *, scale, initial_state, segments, chunk_size):
    """Padded problem; s, g [B, T, H, M] -> (o f32 [B, T, H, V], ([B, H, K, M], [B, H, M, V])).

    The slot dim M is padded here (the caller pads K and V): padded slots have s = 0 and g = 0,
    so their state columns / rows stay zero, and their logits are masked out of the softmax."""
    C = chunk_size
    M = s.shape[-1]
    Mp = padded_dim(_backend.current().kind, M)
    s, g = pad_dim(s, Mp), pad_dim(g, Mp)
    A0 = B0 = None
    if initial_state is not None:
        A0, B0 = pad_dim(initial_state[0], Mp, axis=3), pad_dim(initial_state[1], Mp, axis=2)
    if gsa_fused.applies() and Mp == M:  # TPU: both passes and the softmax in one kernel
        return gsa_fused.gsa(q, k, v, s, g, scale=scale, initial_state=initial_state,
                             segments=segments, chunk_size=C)
    segs = None if segments is None else segments.chunked(C)
    sc, gc = to_chunks(s, C), to_chunks(g, C)
    # Pass 1: A_t = A_{t-1} diag(exp g_t) + k_t s_t^T (gate on the value axis), scores A_t^T q_t.
    scores, AT = gated_scan(_scaled(q, scale, C), to_chunks(k, C), sc, gc, "value", h0=A0,
                            segs=segs)
    if Mp != M:
        scores = jnp.where(jnp.arange(Mp) < M, scores, -jnp.inf)
    p = jax.nn.softmax(scores, axis=-1).astype(sc.dtype)
    # Pass 2: B_t = diag(exp g_t) B_{t-1} + s_t v_t^T (gate on the key axis), o_t = B_t^T p_t.
    o, BT = gated_scan(p, sc, to_chunks(v, C), gc, "key", h0=B0, segs=segs)
    return from_chunks(o), (AT[..., :M], BT[:, :, :M])

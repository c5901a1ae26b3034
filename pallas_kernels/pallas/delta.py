"""Pallas `delta_rule` and `gated_delta_rule`: the WY stage, then the shared state pass and output.

Notation: B batch, T time (a multiple of C, padded by `pallas.Kernel.fn` except on TPU, whose
fused kernels mask it), H heads, K key dim, V value dim, C chunk size, N = T / C, G = B * H.
Public layout [B, T, H, D]; the stages run on [G, N, C, D].

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

import jax.numpy as jnp

from pallas_kernels.chunking import from_chunks, log_decays, to_chunks
from pallas_kernels.pallas import chunk_fused, wy
from pallas_kernels.pallas._common import compute_dtype
from pallas_kernels.pallas.chunk_output import output_stage
from pallas_kernels.pallas.chunk_state import state_pass
from pallas_kernels.pallas.gla_family import output_segments

F32 = jnp.float32


def gated_delta_rule(q, k, v, g, beta, *, scale, initial_state, segments, chunk_size):
    """Chunked gated delta rule on Pallas kernels (the padded problem of `pallas.Kernel.fn`); on
    the TPU flavour one fused kernel forward and one backward (`chunk_fused.fused_delta`); on the
    Triton flavour the stages below."""
    if chunk_fused.applies("scalar"):  # any T: the kernels mask a ragged last chunk
        return chunk_fused.fused_delta(q, k, v, g, beta, scale=scale,
                                       initial_state=initial_state, segments=segments,
                                       chunk_size=chunk_size)
    return staged_gated_delta_rule(q, k, v, g, beta, scale=scale, initial_state=initial_state,
                                   segments=segments, chunk_size=chunk_size)


def staged_gated_delta_rule(q, k, v, g, beta, *, scale, initial_state, segments, chunk_size):
    """The gated delta rule as its three stages (WY, state pass, output).

    Args:
      q, k: [B, T, H, K]; v: [B, T, H, V]; g: [B, T, H] log-decay (<= 0) or None (delta_rule);
      beta: [B, T, H]; scale: float multiplying q; initial_state: [B, H, K, V] float32 or None;
      segments: `chunking.Segments` or None; chunk_size: C (T % C == 0).
    Returns:
      (o [B, T, H, V] float32, final state [B, H, K, V] float32).
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    C = chunk_size
    N, G = T // C, B * H
    flat = lambda x: None if x is None else x.reshape(G, *x.shape[2:])  # noqa: E731
    segs = None if segments is None else segments.chunked(C)
    qc = to_chunks((q.astype(F32) * scale).astype(q.dtype), C)  # [B, H, N, C, K]
    kc, vc = to_chunks(k, C), to_chunks(v, C)
    bc = to_chunks(beta, C).astype(F32)  # [B, H, N, C]
    ld = log_decays(jnp.zeros((B, H, N, C), F32) if g is None else to_chunks(g, C), segs)
    # chunk-local reset counts of the WY kernel, [B, T] float32
    r = jnp.zeros((B, T), F32) if segs is None else segs.local.reshape(B, T).astype(F32)
    head_major = lambda x: x.reshape(B, H, T, *x.shape[4:])  # noqa: E731  [B, H, N, C] -> [B, H, T]
    w, u = wy.wy_factors(head_major(kc), head_major(vc), head_major(bc), head_major(ld.gc), r,
                         chunk_size=C)
    kd, decay_k = kc, None  # ungated, unsegmented: every decay is 1
    if g is not None or segs is not None:
        # Key side of the state update, in k's dtype (bf16 halves the traffic of this operand).
        kd = (kc.astype(F32) * jnp.exp(ld.to_end)[..., None]).astype(compute_dtype(k, v))
        decay_k = jnp.broadcast_to(jnp.exp(ld.total)[..., None], (B, H, N, K))
    states, h_final, v_new = state_pass(
        flat(kd), u.reshape(G, N, C, V), decay_k=flat(decay_k), h0=flat(initial_state),
        w=w.reshape(G, N, C, K))
    o = output_stage(flat(qc), flat(kc), v_new, states, None if g is None else flat(ld.gc),
                     output_segments(segs), mode="scalar", heads=H)
    return from_chunks(o.reshape(B, H, N, C, V)), h_final.reshape(B, H, K, V)


def delta_rule(q, k, v, beta, *, scale, initial_state, segments, chunk_size):
    """`gated_delta_rule` without the gate."""
    return gated_delta_rule(q, k, v, None, beta, scale=scale, initial_state=initial_state,
                            segments=segments, chunk_size=chunk_size)

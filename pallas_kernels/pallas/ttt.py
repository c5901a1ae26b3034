"""Pallas `ttt_linear` for calls whose mini-batches line up with the chunks: no segment_ids and
chunk_size a multiple of mini_batch_size (`takes`). Then every chunk starts a mini-batch, the
open-mini-batch state of the general chunked form (`pallas_kernels.ttt`) drops out, and the op
is the shared stages with the delta-rule correction:

    1. factors (XLA glue, one small inverse per chunk; none when chunk = mini-batch):
       A = (I + tril(diag(eta) (K K^T) * Blk))^{-1},  Blk_ij = [j's mini-batch precedes i's]
       U = A diag(eta) V,  W = A diag(eta) K                 (A = I when C = b)
    2. state pass (`chunk_state.state_pass`, w = W):  v_new = U - W S_{n-1};  S_n = S_{n-1} + K^T v_new
    3. output (`chunk_output.output_stage`, "scalar" mode, no decay):
       o = qs S_{n-1} + ((qs K^T) * causal) v_new

On the TPU flavour the three steps are one forward kernel and one backward kernel
(`chunk_fused.fused_delta` with the mini-batch mask): the factors are recomputed per chunk in
VMEM. The staged form below serves the Triton flavour.

Other calls (packed segments, whose mini-batches restart at each segment start and straddle the
chunk grid; or b not dividing C) need a second carried state (the open mini-batch's starting W),
which the shared single-state pass does not have: `impl="auto"` runs them on the xla path and
`impl="pallas"` refuses them with the reason.

Notation: B batch, T time (a multiple of C), H heads, K key dim, V value dim, C chunk size,
N = T / C, G = B * H.
"""

from __future__ import annotations

import jax.numpy as jnp

from pallas_kernels import xla as _xla
from pallas_kernels.chunking import from_chunks, to_chunks
from pallas_kernels.pallas import chunk_fused
from pallas_kernels.pallas.chunk_output import output_stage
from pallas_kernels.pallas.chunk_state import state_pass

F32 = jnp.float32


def takes(segments, chunk_size: int, *, mini_batch_size: int = 16) -> str | None:
    """None when these kernels take the call, else the reason."""
    if segments is not None:
        return ("packed segment_ids restart the mini-batches off the chunk grid (a second carried "
                "state the shared state pass lacks)")
    if chunk_size % mini_batch_size:
        return f"chunk_size={chunk_size} must be a multiple of mini_batch_size={mini_batch_size}"
    return None


def ttt_linear(q, k, v, eta, *, scale, initial_state, segments, chunk_size, mini_batch_size=16):
    """Chunked TTT-Linear on Pallas kernels (the padded problem of `pallas.Kernel.fn`).

    Args:
      q, k: [B, T, H, K]; v: [B, T, H, V]; eta: [B, T, H]; scale: float multiplying q;
      initial_state: [B, H, K, V] float32 or None; segments: must be None; chunk_size: C
      (C % mini_batch_size == 0; T a multiple of C, except on TPU, whose kernels mask it).
    Returns:
      (o [B, T, H, V] (float32; v's dtype on the TPU flavour), final state [B, H, K, V] float32).
    """
    reason = takes(segments, chunk_size, mini_batch_size=mini_batch_size)
    if reason is not None:
        raise ValueError(f"ttt_linear Pallas kernels: {reason}")
    if chunk_fused.applies("none"):  # TPU: the delta rule's fused kernels with the mini-batch mask
        return chunk_fused.fused_delta(q, k, v, None, eta, scale=scale, initial_state=initial_state,
                                       segments=None, chunk_size=chunk_size,
                                       mini_batch=mini_batch_size)
    B, T, H, K = q.shape
    V = v.shape[-1]
    C, b = chunk_size, mini_batch_size
    N, G = T // C, B * H
    flat = lambda x: None if x is None else x.reshape(G, *x.shape[2:])  # noqa: E731
    qc = to_chunks((q.astype(F32) * scale).astype(q.dtype), C)  # [B, H, N, C, K]
    kc, vc = to_chunks(k, C), to_chunks(v, C)
    ec = to_chunks(eta, C).astype(F32)[..., None]  # [B, H, N, C, 1]
    u, w = ec * vc.astype(F32), ec * kc.astype(F32)
    if b < C:  # several mini-batches per chunk: later ones read the earlier ones' updates
        pos = jnp.arange(C) // b
        blk = pos[None, :] < pos[:, None]
        lower = jnp.einsum("...ik,...jk->...ij", kc.astype(F32), kc.astype(F32),
                           precision=_xla.PREC) * ec
        a = _xla.unit_lower_inverse(jnp.where(blk, lower, 0.0))
        u = jnp.einsum("...ij,...jv->...iv", a, u, precision=_xla.PREC)
        w = jnp.einsum("...ij,...jk->...ik", a, w, precision=_xla.PREC)
    states, h_final, v_new = state_pass(flat(kc), flat(u), h0=flat(initial_state), w=flat(w))
    o = output_stage(flat(qc), flat(kc), v_new, states, None, None, mode="scalar", heads=H)
    return from_chunks(o.reshape(B, H, N, C, V)), h_final.reshape(B, H, K, V)

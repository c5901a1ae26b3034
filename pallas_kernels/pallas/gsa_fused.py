"""gsa's two gated passes and the softmax between them in one forward kernel (TPU flavour).

gsa (gated slot attention) is two gated-linear passes over M slots with a softmax between:

    pass 1 ("value" gate):  A_t = A_{t-1} diag(exp g_t) + k_t s_t^T    A [K, M]; scores_t = A_t^T q_t
    p_t = softmax over the M slots of scores_t
    pass 2 ("key" gate):    B_t = diag(exp g_t) B_{t-1} + s_t v_t^T    B [M, V]; o_t = B_t^T p_t

Shapes (the padded problem of `gla_family.gsa`): q, k [B, T, H, K], v [B, T, H, V], s [B, T, H, M]
(any float dtype), g f32 [B, T, H, M] log-gates, T a multiple of the chunk C; initial states
A0 f32 [B, H, K, M] and B0 f32 [B, H, M, V] (or None); o [B, T, H, V] in v's dtype.

The staged TPU path (two `chunk_fused.fused_scan` passes) writes the scores f32 [B, T, H, M] to
HBM, reads them back for the softmax in XLA, writes p and reads it again in pass 2, and reads
s and g twice. Here, one kernel over the grid (B, H / HB, N) (chunk axis "arbitrary"), blocks
[C, HB, D] of the [B, T, H, D] arrays read in place (chunk_fused's layout and helpers): per chunk
and head,

    scores = chunk_output's "value" output body on A_{n-1} (q scaled, "v" = s)   [C, M] f32, VMEM
    p      = softmax(scores) in s's dtype                                         [C, M], VMEM
    o      = chunk_output's "key" output body on B_{n-1} ("q" = p, "k" = s)       [C, V]
    A_n, B_n = both state steps (chunk_fused._state_step), A and B in VMEM        f32

so q, k, v, s and g are read once and o written once. s and g are read slot-major, as
sT, gT [B, H, M, T] in blocks [HB, M, CB] (CB = lcm(C, 128) positions, T padded up to a multiple
of CB; a block serves CB / C chunks): time on the lanes, so the 64-wide slot axis is not padded to
128 lanes, and XLA's TPU layout of a [B, T, H, 64] argument (time minor) makes the transpose a
bitcast. Per head, s [C, M] = sel @ sT^T and b = cum @ gT^T (the chunk-local cumsum of g) are
one matmul each, sel / cum [C, CB] picking (and summing) the chunk's columns. Under differentiation it also writes
p [B, T, H, M] (s's dtype) and the state entering every chunk, A [B, H, N, K, M] and
B [B, H, N, M, V] in the matmul dtype (bf16 for bf16 inputs). The backward is chunk_fused's
fused backward kernel twice, from those residuals: pass 2 ("key": dp, ds, dv, dg, dB0), the
softmax backward in XLA (dscores = p * (dp - sum(p * dp))), pass 1 ("value": dq, dk, ds, dg, dA0).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels.pallas import _backend
from pallas_kernels.pallas import chunk_fused as cf
from pallas_kernels.pallas._common import F32, call, compute_dtype, mm_nt, mm_tn
from pallas_kernels.pallas.chunk_output import SUB_CHUNK, _fwd_kernel


def applies(backend=None) -> bool:
    """True when `gsa` runs the fused kernel on the current flavour (TPU only)."""
    return cf.applies("value", backend) and cf.applies("key", backend)


def _softmax(x):
    """Softmax over the last axis of x [C, M] f32, as jax.nn.softmax computes it."""
    e = jnp.exp(x - jnp.max(x, axis=-1, keepdims=True))
    return e / jnp.sum(e, axis=-1, keepdims=True)


def _fwd_kernel_gsa(r, *, seg, C, HB, n_chunks, scale):
    """One chunk of HB heads: blocks q, k [C, HB, K], v [C, HB, V], s, g [C, HB, M]; per head
    pass 1's output body and softmax, pass 2's output body, then both state steps."""
    n = pl.program_id(2)
    A_ref, B_ref = r["A"], r["B"]

    @pl.when(n == 0)
    def _init():
        A_ref[...] = r["A0"][...] if r["A0"] is not None else jnp.zeros(A_ref.shape, F32)
        B_ref[...] = r["B0"][...] if r["B0"] is not None else jnp.zeros(B_ref.shape, F32)

    cdt1 = compute_dtype(r["q"], r["k"], r["sT"])
    cdt2 = compute_dtype(r["sT"], r["sT"], r["v"])
    # q (scaled), k, v per head; s [C, M] and b = the chunk-local cumsum of g [C, M] from the
    # slot-major blocks [M, CB] (this chunk: columns off .. off + C - 1) as one matmul each
    cf._load_heads(r, "none", HB, scale, ("q", "k", "v"))
    CB = r["sT"].shape[-1]
    off = lax.rem(n, CB // C) * C
    rows = lax.broadcasted_iota(jnp.int32, (C, CB), 0)
    cols = lax.broadcasted_iota(jnp.int32, (C, CB), 1) - off
    sel = jnp.where(cols == rows, 1.0, 0.0).astype(r["sT"].dtype)              # [C, CB]
    cum = jnp.where(jnp.logical_and(cols >= 0, cols <= rows), 1.0, 0.0).astype(F32)
    for j in range(HB):
        r["s_h"][j] = mm_nt(sel, r["sT"][j]).astype(r["s_h"].dtype)            # exact: one term
        r["b_h"][j] = mm_nt(cum, r["gT"][j])                                   # float32 precision
    c = min(SUB_CHUNK, C)

    def head(j, carry):
        if r["statesA"] is not None:
            r["statesA"].at[j][...] = A_ref[j].astype(r["statesA"].dtype)
            r["statesB"].at[j][...] = B_ref[j].astype(r["statesB"].dtype)
        # pass 1: scores = the "value"-gated output of (q, k, s) on A
        v1 = cf._view(r, j, v=r["s_h"].at[j], h=A_ref.at[j], o=r["sc"])
        _fwd_kernel(v1, mode="value", decayed=False, seg=seg, C=C, c=c, tpu=True)
        p = _softmax(r["sc"][...]).astype(r["p_h"].dtype)
        r["p_h"][j] = p
        # pass 2: o = the "key"-gated output of (p, s, v) on B
        v2 = cf._view(r, j, q=r["p_h"].at[j], k=r["s_h"].at[j], h=B_ref.at[j],
                      o=r["o_acc"].at[j])
        _fwd_kernel(v2, mode="key", decayed=False, seg=seg, C=C, c=c, tpu=True)
        # state steps: A_n = A_{n-1} * dec_cols + k^T (s decayed), B_n = dec_rows * B_{n-1} + (s decayed)^T v
        kd, vd, dec, _ = cf._state_step(v1, "value", seg)
        A_ref[j] = A_ref[j] * dec + mm_tn(kd.astype(cdt1), vd.astype(cdt1))
        kd, vd, dec, _ = cf._state_step(v2, "key", seg)
        B_ref[j] = B_ref[j] * dec + mm_tn(kd.astype(cdt2), vd.astype(cdt2))
        return carry

    lax.fori_loop(0, HB, head, 0)
    for j in range(HB):
        r["o"][:, j, :] = r["o_acc"][j].astype(r["o"].dtype)
        if r["p"] is not None:
            r["p"][:, j, :] = r["p_h"][j]

    @pl.when(n == n_chunks - 1)
    def _fin():
        r["AT"][...] = A_ref[...]
        r["BT"][...] = B_ref[...]


def _forward(backend, scale, C, q, k, v, s, g, A0, B0, ids, save):
    """(o [B, T, H, V] in v's dtype, AT f32 [B, H, K, M], BT f32 [B, H, M, V], residuals): the
    residuals (p [B, T, H, M] in s's dtype, A states [B, H, N, K, M], B states [B, H, N, M, V]
    in the matmul dtype) when `save`, else Nones."""
    from jax.experimental.pallas import tpu as pltpu

    B, T, H, K = q.shape
    V, M = v.shape[-1], s.shape[-1]
    N = T // C
    inputs, specs, HB = cf._operands("none", C, q, k, v, None, None, ids, reverse=False)
    tok = lambda d: pl.BlockSpec((None, C, HB, d), lambda b, h, n: (b, n, h, 0))  # noqa: E731
    # s and g slot-major, [B, H, M, T] (time on the lanes: no padding of M to 128, and for the
    # layout XLA gives [B, T, H, 64] arguments on TPU the transpose is free), in blocks of
    # CB = lcm(C, 128) positions (T padded up to a multiple of it)
    CB = math.lcm(C, 128)
    Tp = -(-T // CB) * CB
    sT, gT = (jnp.pad(jnp.transpose(x, (0, 2, 3, 1)), ((0, 0),) * 3 + ((0, Tp - T),))
              for x in (s, g))
    R = CB // C
    slot = pl.BlockSpec((None, HB, M, CB), lambda b, h, n: (b, h, 0, lax.div(n, R)))
    full = lambda a, b_: pl.BlockSpec((None, HB, a, b_), lambda b, h, n: (b, h, 0, 0))  # noqa: E731
    per_chunk = lambda a, b_: pl.BlockSpec((None, HB, None, a, b_),  # noqa: E731
                                           lambda b, h, n: (b, h, n, 0, 0))
    specs.update(sT=slot, gT=slot, p=tok(M), A0=full(K, M), AT=full(K, M), B0=full(M, V),
                 BT=full(M, V), statesA=per_chunk(K, M), statesB=per_chunk(M, V))
    inputs.update(sT=sT, gT=gT, A0=A0, B0=B0)
    sds = jax.ShapeDtypeStruct
    cdt1, cdt2 = compute_dtype(q, k, s), compute_dtype(s, s, v)
    outputs = {"o": sds((B, T, H, V), v.dtype), "AT": sds((B, H, K, M), F32),
               "BT": sds((B, H, M, V), F32),
               "p": sds((B, T, H, M), s.dtype) if save else None,
               "statesA": sds((B, H, N, K, M), cdt1) if save else None,
               "statesB": sds((B, H, N, M, V), cdt2) if save else None}
    scratch = {"A": pltpu.VMEM((HB, K, M), F32), "B": pltpu.VMEM((HB, M, V), F32),
               "sc": pltpu.VMEM((C, M), F32), "o_acc": pltpu.VMEM((HB, C, V), F32),
               "p_h": pltpu.VMEM((HB, C, M), s.dtype),
               "q_h": pltpu.VMEM((HB, C, K), q.dtype), "k_h": pltpu.VMEM((HB, C, K), k.dtype),
               "v_h": pltpu.VMEM((HB, C, V), v.dtype), "s_h": pltpu.VMEM((HB, C, M), s.dtype),
               "b_h": pltpu.VMEM((HB, C, M), F32)}
    out = call(functools.partial(_fwd_kernel_gsa, seg=ids is not None, C=C, HB=HB, n_chunks=N,
                                 scale=scale),
               backend=backend, grid=(B, H // HB, N), inputs=inputs, outputs=outputs,
               in_specs=specs, out_specs=specs, scratch=scratch,
               semantics=("parallel", "parallel", "arbitrary"), name="gsa_fused_fwd")
    return out["o"], out["AT"], out["BT"], (out["p"], out["statesA"], out["statesB"])


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _gsa(backend, scale, C, q, k, v, s, g, A0, B0, ids):
    o, AT, BT, _ = _forward(backend, scale, C, q, k, v, s, g, A0, B0, ids, save=False)
    return o, AT, BT


def _gsa_fwd(backend, scale, C, q, k, v, s, g, A0, B0, ids):
    o, AT, BT, saved = _forward(backend, scale, C, q, k, v, s, g, A0, B0, ids, save=True)
    return (o, AT, BT), (q, k, v, s, g, A0, B0, ids, saved)


def _gsa_bwd(backend, scale, C, res, cts):
    q, k, v, s, g, A0, B0, ids, (p, statesA, statesB) = res
    do, dAT, dBT = cts
    # pass 2 ("key": q = p, k = s), then the softmax, then pass 1 ("value": v = s)
    dp, ds2, dv, dg2, dB0 = cf._backward(backend, "key", 1.0, C, p, s, v, g, B0, ids, statesB,
                                         do, dBT)
    y = p.astype(F32)
    dy = dp.astype(F32)
    dsc = y * (dy - jnp.sum(y * dy, axis=-1, keepdims=True))
    dq, dk, ds1, dg1, dA0 = cf._backward(backend, "value", scale, C, q, k, s, g, A0, ids,
                                         statesA, dsc, dAT)
    dids = None if ids is None else jnp.zeros(ids.shape, jax.dtypes.float0)
    return dq, dk, dv, ds1 + ds2, dg1 + dg2, dA0, dB0, dids


_gsa.defvjp(_gsa_fwd, _gsa_bwd)


def gsa(q, k, v, s, g, *, scale, initial_state, segments, chunk_size):
    """gsa through the fused forward kernel (see the module docstring).

    Args:
      q, k: [B, T, H, K]; v: [B, T, H, V]; s: [B, T, H, M]; g: [B, T, H, M] log-gates (T a
        multiple of chunk_size); initial_state: (A0 [B, H, K, M], B0 [B, H, M, V]) or None;
        segments: `Segments` or None.

    Returns:
      (o [B, T, H, V] in v's dtype, (AT f32 [B, H, K, M], BT f32 [B, H, M, V])).
    """
    ids = None if segments is None else segments.ids
    A0 = B0 = None
    if initial_state is not None:
        A0, B0 = (x.astype(F32) for x in initial_state)
    o, AT, BT = _gsa(_backend.current(), float(scale), chunk_size, q, k, v, s, g.astype(F32),
                     A0, B0, ids)
    return o, (AT, BT)


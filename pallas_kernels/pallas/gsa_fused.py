"""gsa's two gated passes and the softmax between them in one forward and one backward kernel
(TPU flavour).

gsa (gated slot attention) is two gated-linear passes over M slots with a softmax between:

    pass 1 ("value" gate):  A_t = A_{t-1} diag(exp g_t) + k_t s_t^T,  scores_t = A_t^T q_t
    p_t = softmax over the M slots of scores_t
    pass 2 ("key" gate):    B_t = diag(exp g_t) B_{t-1} + s_t v_t^T,  o_t = B_t^T p_t

with A [K, M] and B [M, V] per head.

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

so q, k, v, s and g are read once and o written once. Under differentiation it also writes the
state entering every chunk, A^T [B, H, N, M, K] (transposed: lane-dense for M < 128) and
B [B, H, N, M, V], in the matmul dtype (bf16 for bf16 inputs), the only residuals besides the
inputs; transposes in the kernels are matmuls with the identity (exact).

The backward is one kernel on the same grid, chunks in reverse, dA and dB (the gradients of the
states leaving the chunk) in VMEM. Per chunk and head: scores and p recomputed from the saved
entering A (the forward's pass-1 body and softmax), pass 2's backward (chunk_output's "key"
backward body: dp, ds, dv, the output's share of dB_{n-1}, db; then the state step's gradients),
the softmax backward dscores = p * (dp - sum(p * dp)), pass 1's backward ("value" body on
dscores: dq, dk, ds, dA_{n-1}, db), and dg through the chunk-local cumsum. It writes dq, dk, dv,
ds, dg, dA0 and dB0 once; ds and dg slot-major like s and g. Its scoped VMEM limit is raised to
64 MiB (two passes per head need about 25 MiB; v5e and later have 128 MiB).

s and g are read slot-major, as sT, gT [B, H, M, T] in blocks [HB, M, CB] (CB = lcm(C, 128)
positions, T padded up to a multiple of CB; a block serves CB / C consecutive chunks): time on
the lanes, so the 64-wide slot axis is not padded to 128 lanes, and XLA's TPU layout of a
[B, T, H, 64] argument (time minor) makes the transpose a bitcast. Per head, s [C, M] =
sel @ sT^T and b = cum @ gT^T (the chunk-local cumsum of g) are one matmul each, sel / cum
[C, CB] picking (and summing) the chunk's columns; the backward writes ds^T, dg^T into the
block's columns the same way (dg^T = db^T @ cum).
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
from pallas_kernels.pallas.chunk_output import SUB_CHUNK, _bwd_kernel, _fwd_kernel

VMEM_LIMIT = 64 * 2**20  # the backward's two passes per head need more than the 16 MiB default


def applies(backend=None) -> bool:
    """True when `gsa` runs the fused kernel on the current flavour (TPU only)."""
    return cf.applies("value", backend) and cf.applies("key", backend)


def _softmax(x):
    """Softmax over the last axis of x [C, M] f32, as jax.nn.softmax computes it."""
    e = jnp.exp(x - jnp.max(x, axis=-1, keepdims=True))
    return e / jnp.sum(e, axis=-1, keepdims=True)


def _transpose(x):
    """x [R, D] -> x^T [D, R] as a matmul with the identity (exact: one term per entry)."""
    R = x.shape[0]
    eye = jnp.where(lax.broadcasted_iota(jnp.int32, (R, R), 0)
                    == lax.broadcasted_iota(jnp.int32, (R, R), 1), 1.0, 0.0).astype(x.dtype)
    return mm_tn(x, eye)


def _selectors(C, CB, chunk):
    """sel, cum [C, CB] f32 for chunk `chunk` of the grid, columns off .. off + C - 1 of its
    slot-major block (off = (chunk mod CB / C) * C): sel[i, off + i] = 1 (s = sel @ sT^T) and
    cum[i, off + j] = [j <= i] (b = cum @ gT^T, the chunk-local cumulative sum of g)."""
    off = lax.rem(chunk, CB // C) * C
    rows = lax.broadcasted_iota(jnp.int32, (C, CB), 0)
    cols = lax.broadcasted_iota(jnp.int32, (C, CB), 1) - off
    sel = jnp.where(cols == rows, 1.0, 0.0).astype(F32)
    cum = jnp.where(jnp.logical_and(cols >= 0, cols <= rows), 1.0, 0.0).astype(F32)
    return sel, cum


def _load_slots(r, HB, C, chunk):
    """Each head's s [C, M] (s_h) and b [C, M] (b_h) from the slot-major blocks sT, gT
    [HB, M, CB]: one matmul each (s exact: one term per entry; b at float32 precision)."""
    sel, cum = _selectors(C, r["sT"].shape[-1], chunk)
    sel = sel.astype(r["sT"].dtype)
    for j in range(HB):
        r["s_h"][j] = mm_nt(sel, r["sT"][j]).astype(r["s_h"].dtype)
        r["b_h"][j] = mm_nt(cum, r["gT"][j])
    return sel, cum


def _fwd_kernel_gsa(r, *, seg, C, HB, n_chunks, scale):
    """One chunk of HB heads: blocks q, k [C, HB, K], v [C, HB, V] and the slot-major sT, gT
    [HB, M, CB]; per head pass 1's output body and softmax, pass 2's output body, then both
    state steps (writing the entering states first under differentiation)."""
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
    _load_slots(r, HB, C, n)
    c = min(SUB_CHUNK, C)

    def head(j, carry):
        if r["statesA"] is not None:
            r["statesA"].at[j][...] = _transpose(A_ref[j]).astype(r["statesA"].dtype)
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
        # state steps: A_n = A_{n-1} * dec (columns) + k^T sd, B_n = dec (rows) * B_{n-1} + sd^T v
        kd, vd, dec, _ = cf._state_step(v1, "value", seg)
        A_ref[j] = A_ref[j] * dec + mm_tn(kd.astype(cdt1), vd.astype(cdt1))
        kd, vd, dec, _ = cf._state_step(v2, "key", seg)
        B_ref[j] = B_ref[j] * dec + mm_tn(kd.astype(cdt2), vd.astype(cdt2))
        return carry

    lax.fori_loop(0, HB, head, 0)
    for j in range(HB):
        r["o"][:, j, :] = r["o_acc"][j].astype(r["o"].dtype)

    @pl.when(n == n_chunks - 1)
    def _fin():
        r["AT"][...] = A_ref[...]
        r["BT"][...] = B_ref[...]


def _forward(backend, scale, C, q, k, v, s, g, A0, B0, ids, save):
    """(o [B, T, H, V] in v's dtype, AT f32 [B, H, K, M], BT f32 [B, H, M, V], residuals): the
    residuals are (sT, gT [B, H, M, Tp] slot-major, and when `save` the entering states
    A^T [B, H, N, M, K], B [B, H, N, M, V] in the matmul dtype, else Nones)."""
    from jax.experimental.pallas import tpu as pltpu

    B, T, H, K = q.shape
    V, M = v.shape[-1], s.shape[-1]
    N = T // C
    inputs, specs, HB = cf._operands("none", C, q, k, v, None, None, ids, reverse=False)
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
    specs.update(sT=slot, gT=slot, A0=full(K, M), AT=full(K, M), B0=full(M, V),
                 BT=full(M, V), statesA=per_chunk(M, K), statesB=per_chunk(M, V))
    inputs.update(sT=sT, gT=gT, A0=A0, B0=B0)
    sds = jax.ShapeDtypeStruct
    cdt1, cdt2 = compute_dtype(q, k, s), compute_dtype(s, s, v)
    outputs = {"o": sds((B, T, H, V), v.dtype), "AT": sds((B, H, K, M), F32),
               "BT": sds((B, H, M, V), F32),
               "statesA": sds((B, H, N, M, K), cdt1) if save else None,  # A^T: lane-dense
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
               in_specs=specs, out_specs=specs, scratch=scratch, semantics=cf.SEMANTICS,
               name="gsa_fused_fwd")
    return out["o"], out["AT"], out["BT"], (sT, gT, out["statesA"], out["statesB"])


def _pass_bwd(view, kind, seg, dS_ref, *, C, cdt, last):
    """One pass's backward for one head and chunk ("value": pass 1, "key": pass 2): chunk_output's
    backward body (view's dq, dk, dv, dh, db), then the state step's gradients
    (`chunk_fused._state_step_bwd`), and dS_{n-1} = dec * dS_n + dh into dS_ref. Returns the
    gradient of b (the chunk-local cumsum of g) [C, M]."""
    _bwd_kernel(view, mode=kind, decayed=False, seg=seg, C=C, c=min(SUB_CHUNK, C), tpu=True)
    return cf._state_step_bwd(view, kind, seg, dS_ref, cdt=cdt, last=last)


def _bwd_kernel_gsa(r, *, seg, C, HB, n_chunks, scale):
    """The reverse pass: chunk N - 1 - i of HB heads, dA and dB (the gradients of the states
    leaving the chunk) in VMEM. Per head: p recomputed from the saved entering A (pass 1's output
    body and the softmax), pass 2's backward (dp, ds, dv, dg, dB_{n-1}), the softmax backward,
    pass 1's backward (dq, dk, ds, dg, dA_{n-1}); ds and dg are written slot-major."""
    i = pl.program_id(2)
    ci = n_chunks - 1 - i
    dA_ref, dB_ref = r["dA"], r["dB"]

    @pl.when(i == 0)
    def _init():
        dA_ref[...] = r["dAT"][...]
        dB_ref[...] = r["dBT"][...]

    cdt1 = compute_dtype(r["q"], r["k"], r["sT"])
    cdt2 = compute_dtype(r["sT"], r["sT"], r["v"])
    cf._load_heads(r, "none", HB, scale, ("q", "k", "v", "do"))
    CB = r["sT"].shape[-1]
    sel, cum = _load_slots(r, HB, C, ci)
    # the first visit (in reverse) of this slot-major output block: its other columns are unset
    first = jnp.logical_or(i == 0, lax.rem(ci + 1, CB // C) == 0)
    last = lax.broadcasted_iota(jnp.int32, (C, 1), 0) == C - 1
    c = min(SUB_CHUNK, C)

    def head(j, carry):
        r["hA"][...] = _transpose(r["statesA"][j]).astype(r["hA"].dtype)
        v1 = cf._view(r, j, v=r["s_h"].at[j], h=r["hA"], o=r["sc"])
        _fwd_kernel(v1, mode="value", decayed=False, seg=seg, C=C, c=c, tpu=True)
        r["p1"][...] = _softmax(r["sc"][...]).astype(r["p1"].dtype)
        # pass 2: q = p, k = s, v = v, on the entering B
        v2 = cf._view(r, j, q=r["p1"], k=r["s_h"].at[j], h=r["statesB"].at[j],
                      do=r["do_h"].at[j], dq=r["dp"], dk=r["ds2"], dv=r["dv_h"].at[j],
                      dh=r["dhB"], db=r["db"])
        db2 = _pass_bwd(v2, "key", seg, dB_ref.at[j], C=C, cdt=cdt2, last=last)
        y, dy = r["p1"][...].astype(F32), r["dp"][...]
        r["dsc"][...] = y * (dy - jnp.sum(y * dy, axis=-1, keepdims=True))
        # pass 1: q (scaled), k, v = s, on the entering A, do = dscores
        v1 = cf._view(r, j, v=r["s_h"].at[j], h=r["hA"], do=r["dsc"],
                      dq=r["dq_h"].at[j], dk=r["dk_h"].at[j], dv=r["ds1"], dh=r["dhA"],
                      db=r["db"])
        db1 = _pass_bwd(v1, "value", seg, dA_ref.at[j], C=C, cdt=cdt1, last=last)
        # ds, dg into this chunk's columns of the slot-major blocks [M, CB]
        ds = mm_tn(r["ds1"][...] + r["ds2"][...], sel)
        dg = mm_tn(db1 + db2, cum)                               # dg_j = sum_{i >= j} db_i
        prev_s = jnp.where(first, 0.0, r["dsT"][j].astype(F32))
        prev_g = jnp.where(first, 0.0, r["dgT"][j])
        r["dsT"][j] = (prev_s + ds).astype(r["dsT"].dtype)
        r["dgT"][j] = prev_g + dg
        return carry

    lax.fori_loop(0, HB, head, 0)
    cf._store_grads(r, HB, scale)

    @pl.when(i == n_chunks - 1)
    def _fin():
        if r["dA0"] is not None:
            r["dA0"][...] = dA_ref[...]
        if r["dB0"] is not None:
            r["dB0"][...] = dB_ref[...]


def _backward(backend, scale, C, q, k, v, sT, gT, A0, B0, ids, statesA, statesB, do, dAT, dBT):
    """The fused backward: (dq, dk, dv, ds [B, T, H, M] in s's dtype, dg f32, dA0, dB0)."""
    from jax.experimental.pallas import tpu as pltpu

    B, T, H, K = q.shape
    V, M = v.shape[-1], sT.shape[2]
    CB = sT.shape[-1]
    N, R = T // C, CB // C
    inputs, specs, HB = cf._operands("none", C, q, k, v, None, None, ids, reverse=True)
    rev = lambda n: N - 1 - n  # noqa: E731
    slot = pl.BlockSpec((None, HB, M, CB), lambda b, h, n: (b, h, 0, lax.div(rev(n), R)))
    full = lambda a, b_: pl.BlockSpec((None, HB, a, b_), lambda b, h, n: (b, h, 0, 0))  # noqa: E731
    per_chunk = lambda a, b_: pl.BlockSpec((None, HB, None, a, b_),  # noqa: E731
                                           lambda b, h, n: (b, h, rev(n), 0, 0))
    specs.update(sT=slot, gT=slot, dsT=slot, dgT=slot, dAT=full(K, M), dA0=full(K, M),
                 dBT=full(M, V), dB0=full(M, V), statesA=per_chunk(M, K),
                 statesB=per_chunk(M, V))
    inputs.update(sT=sT, gT=gT, statesA=statesA, statesB=statesB, do=do,
                  dAT=dAT.astype(F32), dBT=dBT.astype(F32))
    sds = jax.ShapeDtypeStruct
    outputs = {"dq": sds(q.shape, q.dtype), "dk": sds(k.shape, k.dtype),
               "dv": sds(v.shape, v.dtype), "dsT": sds(sT.shape, sT.dtype),
               "dgT": sds(gT.shape, F32),
               "dA0": None if A0 is None else sds(A0.shape, F32),
               "dB0": None if B0 is None else sds(B0.shape, F32)}
    vm = pltpu.VMEM
    scratch = {"dA": vm((HB, K, M), F32), "dB": vm((HB, M, V), F32),
               "dhA": vm((K, M), F32), "dhB": vm((M, V), F32), "hA": vm((K, M), statesA.dtype),
               "q_h": vm((HB, C, K), q.dtype), "k_h": vm((HB, C, K), k.dtype),
               "v_h": vm((HB, C, V), v.dtype), "do_h": vm((HB, C, V), F32),
               "s_h": vm((HB, C, M), sT.dtype), "b_h": vm((HB, C, M), F32),
               "dq_h": vm((HB, C, K), F32), "dk_h": vm((HB, C, K), F32),
               "dv_h": vm((HB, C, V), F32),
               "sc": vm((C, M), F32), "p1": vm((C, M), sT.dtype), "dp": vm((C, M), F32),
               "dsc": vm((C, M), F32), "ds1": vm((C, M), F32), "ds2": vm((C, M), F32),
               "db": vm((C, M), F32)}
    out = call(functools.partial(_bwd_kernel_gsa, seg=ids is not None, C=C, HB=HB, n_chunks=N,
                                 scale=scale),
               backend=backend, grid=(B, H // HB, N), inputs=inputs, outputs=outputs,
               in_specs=specs, out_specs=specs, scratch=scratch, semantics=cf.SEMANTICS,
               name="gsa_fused_bwd", vmem_limit=VMEM_LIMIT)
    back = lambda x: jnp.transpose(x[..., :T], (0, 3, 1, 2))  # noqa: E731 [B, H, M, T] -> [B, T, H, M]
    return (out["dq"], out["dk"], out["dv"], back(out["dsT"]), back(out["dgT"]), out["dA0"],
            out["dB0"])


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _gsa(backend, scale, C, q, k, v, s, g, A0, B0, ids):
    o, AT, BT, _ = _forward(backend, scale, C, q, k, v, s, g, A0, B0, ids, save=False)
    return o, AT, BT


def _gsa_fwd(backend, scale, C, q, k, v, s, g, A0, B0, ids):
    o, AT, BT, saved = _forward(backend, scale, C, q, k, v, s, g, A0, B0, ids, save=True)
    return (o, AT, BT), (q, k, v, A0, B0, ids, saved)


def _gsa_bwd(backend, scale, C, res, cts):
    q, k, v, A0, B0, ids, (sT, gT, statesA, statesB) = res
    do, dAT, dBT = cts
    dq, dk, dv, ds, dg, dA0, dB0 = _backward(backend, scale, C, q, k, v, sT, gT, A0, B0, ids,
                                             statesA, statesB, do, dAT, dBT)
    dids = None if ids is None else jnp.zeros(ids.shape, jax.dtypes.float0)
    return dq, dk, dv, ds, dg, dA0, dB0, dids


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


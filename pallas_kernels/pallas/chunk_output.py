"""Stages 2 + 4 of docs/design.md: the intra-chunk decayed scores and the output, forward and backward.

Notation: G = B * H, N chunks of C positions, K key dim, V value dim; arrays are chunk-major
[G, N, C, D] ([B, H, T, D] reshaped). Per chunk n and position i (all positions local to the chunk):

    o_i = carry_i * inter_i + sum_{j <= i, rid_j == rid_i} intra_ij

with h = S_{n-1} the state entering the chunk (from `chunk_state.state_pass`) and b the chunk-local
inclusive cumulative sum of the log gates, per `mode`:

    "scalar" (b [G, N, C] or None):  inter_i = exp(b_i) q_i h;           intra_ij = exp(b_i - b_j) (q_i . k_j) v_j
    "key"    (b [G, N, C, K]):       inter_i = (q_i * exp(b_i)) h;       intra_ij = (sum_d q_id k_jd exp(b_id - b_jd)) v_j
    "value"  (b [G, N, C, V]):       inter_i = exp(b_i) * (q_i h);       intra_ij = (q_i . k_j) v_j * exp(b_i - b_j)

b = None in "scalar" mode means no decay (linear attention). No exponential of a positive number is
ever taken: the pairwise decays are exp(min(b_i - b_j, 0)) and masked pairs are zeroed.

Contract of `output_stage`::

    o = output_stage(q, k, v, h, b, segments=None, *, mode, heads)

    q        [G, N, C, K]  any float dtype   queries, already scaled
    k        [G, N, C, K]  any float dtype
    v        [G, N, C, V]  any float dtype
    h        [G, N, K, V]  float32           state entering each chunk
    b        see above     float32
    segments None or (rid, carry): rid int32 [B, N, C], the number of resets up to each position;
             carry float32 [B, N, C], 1 where the state entering the chunk reaches the position
             (G = B * heads; segment arrays are shared by the heads of a row)
    o        [G, N, C, V]  float32

It is a `jax.custom_vjp`, differentiable in q, k, v, h and b (the backward is one Pallas kernel
per chunk: dq, dk, dv, dh, db, with db = q * dq - k * dk for key gates, db = do * o - v * dv for
value gates and the row sums of the former for the scalar gate). Both flavours use the same grid
(G, N), parallel. Per-channel gates use secondary sub-chunks of 16 positions: pairs of different
sub-chunks are matmuls through the cumulative gate at the key sub-chunk's end (both factors
<= 1); only the diagonal sub-chunks loop over their 16 key positions, exactly.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels.pallas import _backend
from pallas_kernels.pallas._common import F32, call, compute_dtype, mm, mm_nt, mm_tn

MODES = ("scalar", "key", "value")
SUB_CHUNK = 16  # secondary chunk of the per-channel gates


def _f32(mask):
    """bool -> float32 0/1 (a select, which every backend lowers)."""
    return jnp.where(mask, 1.0, 0.0).astype(F32)


def _row(ref, s):
    return ref[pl.ds(s, 1), :]


def _pair_mask(r, C, seg):
    t = lax.broadcasted_iota(jnp.int32, (C, C), 0)
    s = lax.broadcasted_iota(jnp.int32, (C, C), 1)
    keep = t >= s
    if seg:
        keep = jnp.logical_and(keep, r["rcol"][...] == r["rrow"][...])
    return keep


def _scalar_fwd(r, C, decayed, seg):
    q, k, v = r["q"][...], r["k"][...], r["v"][...]
    cdt = compute_dtype(q, k, v)
    h = r["h"][...].astype(cdt)
    keep = _pair_mask(r, C, seg)
    if decayed:
        bcol = r["bcol"][...]
        D = jnp.where(keep, jnp.exp(jnp.minimum(bcol - r["brow"][...], 0.0)), 0.0)
        A = mm_nt(q, k) * D
        inter = mm((q.astype(F32) * jnp.exp(bcol)).astype(cdt), h)
    else:
        A = jnp.where(keep, mm_nt(q, k), 0.0)
        inter = mm(q, h)
    if seg:
        inter = r["carry"][...] * inter
    r["o"][...] = mm(A.astype(cdt), v) + inter


def _scalar_bwd(r, C, decayed, seg):
    q, k, v = r["q"][...], r["k"][...], r["v"][...]
    cdt = compute_dtype(q, k, v)
    h = r["h"][...].astype(cdt)
    dol = r["do"][...].astype(cdt)
    keep = _pair_mask(r, C, seg)
    if decayed:
        bcol = r["bcol"][...]
        D = jnp.where(keep, jnp.exp(jnp.minimum(bcol - r["brow"][...], 0.0)), 0.0)
        e = jnp.exp(bcol)
    else:
        D = _f32(keep)
        e = jnp.ones((C, 1), F32)
    if seg:
        e = e * r["carry"][...]
    A = mm_nt(q, k) * D
    dP = mm_nt(dol, v) * D
    dq = mm(dP.astype(cdt), k) + e * mm_nt(dol, h)
    dk = mm_tn(dP.astype(cdt), q)
    r["dq"][...] = dq.astype(r["dq"].dtype)
    r["dk"][...] = dk.astype(r["dk"].dtype)
    r["dv"][...] = mm_tn(A.astype(cdt), dol).astype(r["dv"].dtype)
    r["dh"][...] = mm_tn((q.astype(F32) * e).astype(cdt), dol)
    if decayed:
        r["db"][...] = (jnp.sum(q.astype(F32) * dq, axis=1, keepdims=True)
                        - jnp.sum(k.astype(F32) * dk, axis=1, keepdims=True))


# Per-channel gates ("key", "value"): secondary sub-chunks of c positions (the GLA paper's
# two-level chunking). For a query sub-chunk a and an earlier key sub-chunk b the decay factors
# through r_b, the cumulative log gate at the end of b: exp(b_i - b_j) = exp(b_i - r_b) exp(r_b - b_j),
# both factors <= 1, so the pair is one small matmul. Segment masks factor the same way: with the
# reset count rid non-decreasing, rid_i == rid_j  iff  rid_i == rid(r_b) == rid_j. Diagonal
# sub-chunks are exact: a loop over their c key positions.

class _Blk:
    """Sub-chunk `a` (positions a*c .. a*c + c - 1) of the kernel's refs.

    `row(name, j)` is position j of the sub-chunk as a [1, D] row. Triton reads it from the ref
    at a dynamic offset; the TPU flavour extracts it from the loaded sub-chunk with a one-hot
    sum, so that Mosaic never sees a dynamic (or unaligned) single-row load of packed data.
    """

    def __init__(self, r, a, c, seg, tpu):
        self.sl = pl.ds(a * c, c)
        self.start, self.end = a * c, a * c + c - 1
        self.r, self.c, self.seg, self.tpu = r, c, seg, tpu
        self.tcol = lax.broadcasted_iota(jnp.int32, (c, 1), 0)

    def load(self, name, dtype=None):
        x = self.r[name][self.sl, :]
        return x if dtype is None else x.astype(dtype)

    def row(self, name, j):
        if not self.tpu:
            x = _row(self.r[name], self.start + j)
            return x.astype(F32)
        x = self.load(name, F32)
        return jnp.sum(jnp.where(self.tcol == j, x, 0.0), axis=0, keepdims=True)

    def r_end(self):
        """Cumulative log gate at the sub-chunk's last position, [1, D]."""
        return self.row("b", self.c - 1)

    def same_as_end(self, other):
        """[c, 1] mask: the positions of `self` lie in the segment of `other`'s last position."""
        if not self.seg:
            return None
        return self.load("rcol") == other.row("rcol", other.c - 1)


def _mask_mul(x, m):
    return x if m is None else x * _f32(m)


def _diag_masks(blk, j):
    """Column j of the diagonal sub-chunk: [c, 1] mask of positions i >= j in j's segment."""
    m = blk.tcol >= j
    if blk.seg:
        m = jnp.logical_and(m, blk.load("rcol") == blk.row("rcol", j))
    return _f32(m)


def _channel_fwd(r, mode, C, c, seg, tpu):
    S = C // c
    cdt = compute_dtype(r["q"], r["k"], r["v"])
    h = r["h"][...].astype(cdt)
    blks = [_Blk(r, a, c, seg, tpu) for a in range(S)]
    # key side of every sub-chunk, relative to its own end (key mode: k; value mode: v)
    side = "k" if mode == "key" else "v"
    ref_side = []
    for bk in blks:
        x = bk.load(side, F32) * jnp.exp(bk.r_end() - bk.load("b"))
        ref_side.append(_mask_mul(x, bk.same_as_end(bk)).astype(cdt))
    for a, ba in enumerate(blks):
        qa = ba.load("q", F32)
        b_a = ba.load("b")
        if mode == "key":
            o = mm((qa * jnp.exp(b_a)).astype(cdt), h)
        else:
            o = jnp.exp(b_a) * mm(qa.astype(cdt), h)
        if seg:
            o = ba.load("carry") * o
        for bi in range(a):
            bb = blks[bi]
            e_q = _mask_mul(jnp.exp(b_a - bb.r_end()), ba.same_as_end(bb))
            if mode == "key":
                A = mm_nt((qa * e_q).astype(cdt), ref_side[bi])
                o = o + mm(A.astype(cdt), bb.load("v"))
            else:
                P = mm_nt(qa.astype(cdt), bb.load("k"))
                o = o + e_q * mm(P.astype(cdt), ref_side[bi])

        def body(j, o, ba=ba, qa=qa, b_a=b_a):
            ks, vs = ba.row("k", j), ba.row("v", j)
            E = jnp.exp(jnp.minimum(b_a - ba.row("b", j), 0.0))
            m = _diag_masks(ba, j)
            if mode == "key":
                return o + (m * jnp.sum(qa * ks * E, axis=1, keepdims=True)) * vs
            return o + (m * jnp.sum(qa * ks, axis=1, keepdims=True)) * vs * E

        r["o"][ba.sl, :] = lax.fori_loop(0, c, body, o)


def _channel_bwd(r, mode, C, c, seg, tpu):
    S = C // c
    cdt = compute_dtype(r["q"], r["k"], r["v"])
    hf = r["h"][...]
    h = hf.astype(cdt)
    K, V = r["q"].shape[-1], r["v"].shape[-1]
    blks = [_Blk(r, a, c, seg, tpu) for a in range(S)]
    tcol = lax.broadcasted_iota(jnp.int32, (c, 1), 0)
    side = "k" if mode == "key" else "v"
    e_side, ref_side = [], []
    for bk in blks:
        e = _mask_mul(jnp.exp(bk.r_end() - bk.load("b")), bk.same_as_end(bk))
        e_side.append(e)
        ref_side.append((bk.load(side, F32) * e).astype(cdt))
    dq = [None] * S
    dk = [jnp.zeros((c, K), F32) for _ in range(S)]
    dv = [jnp.zeros((c, V), F32) for _ in range(S)]
    dref = [jnp.zeros((c, K if mode == "key" else V), F32) for _ in range(S)]
    o_all = [None] * S
    dh = jnp.zeros(hf.shape, F32)
    for a, ba in enumerate(blks):
        qa = ba.load("q", F32)
        b_a = ba.load("b")
        do = ba.load("do")
        dol = do.astype(cdt)
        eb = jnp.exp(b_a)
        if seg:
            eb = eb * ba.load("carry")
        if mode == "key":
            dq[a] = mm_nt(dol, h) * eb
            dh = dh + mm_tn((qa * eb).astype(cdt), dol)
        else:
            X = (do * eb).astype(cdt)
            dq[a] = mm_nt(X, h)
            dh = dh + mm_tn(qa.astype(cdt), X)
            o_all[a] = eb * mm(qa.astype(cdt), h)
        for bi in range(a):
            bb = blks[bi]
            e_q = _mask_mul(jnp.exp(b_a - bb.r_end()), ba.same_as_end(bb))
            if mode == "key":
                qref = (qa * e_q).astype(cdt)
                A = mm_nt(qref, ref_side[bi])
                dA = mm_nt(dol, bb.load("v"))
                dv[bi] = dv[bi] + mm_tn(A.astype(cdt), dol)
                dq[a] = dq[a] + mm(dA.astype(cdt), ref_side[bi]) * e_q
                dref[bi] = dref[bi] + mm_tn(dA.astype(cdt), qref)
            else:
                kb = bb.load("k")
                P = mm_nt(qa.astype(cdt), kb)
                X = (do * e_q).astype(cdt)
                o_all[a] = o_all[a] + e_q * mm(P.astype(cdt), ref_side[bi])
                dP = mm_nt(X, ref_side[bi])
                dq[a] = dq[a] + mm(dP.astype(cdt), kb)
                dk[bi] = dk[bi] + mm_tn(dP.astype(cdt), qa.astype(cdt))
                dref[bi] = dref[bi] + mm_tn(P.astype(cdt), X)

        def body(j, acc, ba=ba, qa=qa, b_a=b_a, do=do):
            dq_a, dk_a, dv_a, o_a = acc
            ks, vs = ba.row("k", j), ba.row("v", j)
            m = _diag_masks(ba, j)
            one = _f32(tcol == j)
            if mode == "key":
                E = m * jnp.exp(jnp.minimum(b_a - ba.row("b", j), 0.0))
                qE = qa * E
                a_col = jnp.sum(qE * ks, axis=1, keepdims=True)
                dA = m * jnp.sum(do * vs, axis=1, keepdims=True)
                dv_a = dv_a + one * jnp.sum(a_col * do, axis=0, keepdims=True)
                dk_a = dk_a + one * jnp.sum(dA * qE, axis=0, keepdims=True)
                dq_a = dq_a + dA * ks * E
                return dq_a, dk_a, dv_a, o_a
            F = jnp.exp(jnp.minimum(b_a - ba.row("b", j), 0.0))
            col = m * jnp.sum(qa * ks, axis=1, keepdims=True)
            vF = vs * F
            o_a = o_a + col * vF
            dP = m * jnp.sum(do * vF, axis=1, keepdims=True)
            dv_a = dv_a + one * jnp.sum(col * do * F, axis=0, keepdims=True)
            dk_a = dk_a + one * jnp.sum(dP * qa, axis=0, keepdims=True)
            dq_a = dq_a + dP * ks
            return dq_a, dk_a, dv_a, o_a

        o0 = o_all[a] if mode == "value" else jnp.zeros((1, 1), F32)
        dq[a], dk[a], dv[a], o_a = lax.fori_loop(0, c, body, (dq[a], dk[a], dv[a], o0))
        if mode == "value":
            o_all[a] = o_a
    for a, ba in enumerate(blks):
        if mode == "key":
            dk[a] = dk[a] + dref[a] * e_side[a]
            db = ba.load("q", F32) * dq[a] - ba.load("k", F32) * dk[a]
        else:
            dv[a] = dv[a] + dref[a] * e_side[a]
            db = ba.load("do") * o_all[a] - ba.load("v", F32) * dv[a]
        r["dq"][ba.sl, :] = dq[a].astype(r["dq"].dtype)
        r["dk"][ba.sl, :] = dk[a].astype(r["dk"].dtype)
        r["dv"][ba.sl, :] = dv[a].astype(r["dv"].dtype)
        r["db"][ba.sl, :] = db
    r["dh"][...] = dh


def _fwd_kernel(r, *, mode, decayed, seg, C, c, tpu):
    if mode == "scalar":
        _scalar_fwd(r, C, decayed, seg)
    else:
        _channel_fwd(r, mode, C, c, seg, tpu)


def _bwd_kernel(r, *, mode, decayed, seg, C, c, tpu):
    if mode == "scalar":
        _scalar_bwd(r, C, decayed, seg)
    else:
        _channel_bwd(r, mode, C, c, seg, tpu)


def _operands(mode, q, k, v, h, b, segments):
    """The inputs common to fwd and bwd: name -> (array or None, block shape, index kind), index
    kind "g" for [G, N, ...] arrays and "b" for the per-row [B, N, ...] segment arrays."""
    G, N, C, K = q.shape
    V = v.shape[-1]
    scalar = mode == "scalar"
    bs = b is not None
    items = {"q": (q, (C, K), "g"), "k": (k, (C, K), "g"), "v": (v, (C, V), "g"),
             "h": (h, (K, V), "g"),
             "bcol": (b.reshape(G, N, C, 1) if scalar and bs else None, (C, 1), "g"),
             "brow": (b.reshape(G, N, 1, C) if scalar and bs else None, (1, C), "g"),
             "b": (None if scalar else b, None if scalar else (C, b.shape[-1]), "g")}
    rid = carry = None
    if segments is not None:
        rid, carry = segments
        Bs = rid.shape[0]
        # reset counts travel as float32 (exact below 2**24): no integer vector ops in kernels
        rid = rid.astype(F32)
        carry = carry.astype(F32).reshape(Bs, N, C, 1)
    items["rcol"] = (None if rid is None else rid.reshape(rid.shape[0], N, C, 1), (C, 1), "b")
    items["carry"] = (carry, (C, 1), "b")
    items["rrow"] = (rid.reshape(rid.shape[0], N, 1, C) if rid is not None and scalar else None,
                     (1, C), "b")
    return items


def _spec(block, kind, heads):
    if kind == "g":
        return pl.BlockSpec((None, None) + block, lambda g, n: (g, n, 0, 0))
    # lax.div (truncating) rather than //: floor division lowers through `sign`, which Mosaic
    # only lowers knowing the TPU generation.
    return pl.BlockSpec((None, None) + block, lambda g, n: (lax.div(g, heads), n, 0, 0))


def _call(kernel, backend, items, outs, heads, name, **kw):
    """items: name -> (array or None, block, index kind); outs: name -> (shape, dtype, block) or
    None. Returns the outputs by name."""
    G, N = items["q"][0].shape[:2]
    specs = {nm: _spec(blk, kind, heads) for nm, (x, blk, kind) in items.items() if x is not None}
    specs.update({nm: _spec(o[2], "g", heads) for nm, o in outs.items() if o is not None})
    return call(
        functools.partial(kernel, **kw), backend=backend, grid=(G, N),
        inputs={nm: x for nm, (x, _, _) in items.items()},
        outputs={nm: None if o is None else jax.ShapeDtypeStruct(o[0], o[1])
                 for nm, o in outs.items()},
        in_specs=specs, out_specs=specs, semantics=("parallel", "parallel"),
        # Per-channel gates keep several sub-chunk accumulators live: more warps, fewer spills.
        num_warps=4 if kw["mode"] == "scalar" else 8, name=name)


def _static(backend, mode, q, b, segments):
    C = q.shape[2]
    return dict(mode=mode, decayed=b is not None, seg=segments is not None, C=C,
                c=min(SUB_CHUNK, C), tpu=backend.kind == "tpu")


def _fwd(backend, mode, heads, q, k, v, h, b, segments):
    G, N, C, K = q.shape
    V = v.shape[-1]
    items = _operands(mode, q, k, v, h, b, segments)
    outs = {"o": ((G, N, C, V), F32, (C, V))}
    return _call(_fwd_kernel, backend, items, outs, heads, "chunk_output_fwd",
                 **_static(backend, mode, q, b, segments))["o"]


def _bwd(backend, mode, heads, q, k, v, h, b, segments, do):
    G, N, C, K = q.shape
    V = v.shape[-1]
    items = _operands(mode, q, k, v, h, b, segments)
    items["do"] = (do.astype(F32), (C, V), "g")
    bshape = (C, 1) if mode == "scalar" or b is None else (C, b.shape[-1])
    outs = {"dq": ((G, N, C, K), q.dtype, (C, K)), "dk": ((G, N, C, K), k.dtype, (C, K)),
            "dv": ((G, N, C, V), v.dtype, (C, V)), "dh": ((G, N, K, V), F32, (K, V)),
            "db": None if b is None else ((G, N) + bshape, F32, bshape)}
    res = _call(_bwd_kernel, backend, items, outs, heads, "chunk_output_bwd",
                **_static(backend, mode, q, b, segments))
    db = None if b is None else res["db"].reshape(b.shape)
    return res["dq"], res["dk"], res["dv"], res["dh"], db


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _output(backend, mode, heads, q, k, v, h, b, segments):
    return _fwd(backend, mode, heads, q, k, v, h, b, segments)


def _output_fwd(backend, mode, heads, q, k, v, h, b, segments):
    return _fwd(backend, mode, heads, q, k, v, h, b, segments), (q, k, v, h, b, segments)


def _output_bwd(backend, mode, heads, res, do):
    q, k, v, h, b, segments = res
    dq, dk, dv, dh, db = _bwd(backend, mode, heads, q, k, v, h, b, segments, do)
    dseg = None if segments is None else jax.tree.map(
        lambda x: jnp.zeros(x.shape, jax.dtypes.float0) if x.dtype == jnp.int32 else jnp.zeros_like(x),
        segments)
    return dq, dk, dv, dh, db, dseg


_output.defvjp(_output_fwd, _output_bwd)


def output_stage(q, k, v, h, b, segments=None, *, mode: str, heads: int):
    """Chunk outputs from the entering states; see the module docstring for the contract.

    Args:
      q, k: [G, N, C, K]; v: [G, N, C, V]; h: [G, N, K, V] float32; b: chunk-local cumulative
        log gates ([G, N, C] for "scalar" or None, [G, N, C, K] for "key", [G, N, C, V] for
        "value"); segments: None or (rid int32 [B, N, C], carry float32 [B, N, C]) with
        G = B * heads; mode: "scalar" | "key" | "value"; heads: H.

    Returns:
      o: float32 [G, N, C, V].
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    G, N, C, K = q.shape
    V = v.shape[-1]
    want_b = {"scalar": (G, N, C), "key": (G, N, C, K), "value": (G, N, C, V)}[mode]
    if b is None and mode != "scalar":
        raise ValueError(f"mode {mode!r} needs log gates b of shape {want_b}")
    if b is not None and b.shape != want_b:
        raise ValueError(f"b must have shape {want_b} for mode {mode!r}, got {b.shape}")
    if k.shape != q.shape or v.shape[:3] != q.shape[:3] or h.shape != (G, N, K, V):
        raise ValueError(f"inconsistent shapes q {q.shape}, k {k.shape}, v {v.shape}, h {h.shape}")
    if segments is not None:
        rid, carry = segments
        if G % heads or rid.shape != (G // heads, N, C) or carry.shape != rid.shape:
            raise ValueError(f"segments must be [B, N, C] with B * heads = {G}, got {rid.shape}")
        segments = (rid.astype(jnp.int32), carry.astype(F32))
    b = None if b is None else b.astype(F32)
    return _output(_backend.current(), mode, heads, q, k, v, h.astype(F32), b, segments)

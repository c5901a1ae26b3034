"""Stages 2 + 4 of DESIGN.md §3: the intra-chunk decayed scores and the output, forward and backward.

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
(G, N), parallel; per-channel gates loop over the key position j inside the kernel.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels.pallas import _backend
from pallas_kernels.pallas.chunk_state import F32, _unpack, mm, mm_nt, mm_tn

MODES = ("scalar", "key", "value")


def _cdt(*xs):
    """Matmul operand dtype: bf16 when every data input is bf16, else f32."""
    return xs[0].dtype if all(x.dtype == xs[0].dtype for x in xs) else F32


def _row(ref, s):
    return ref[pl.ds(s, 1), :]


def _col_mask(r, s, tcol, seg):
    m = tcol >= s
    if seg:
        m = jnp.logical_and(m, r["rcol"][...] == _row(r["rcol"], s))
    return m


def _pair_mask(r, C, seg):
    t = lax.broadcasted_iota(jnp.int32, (C, C), 0)
    s = lax.broadcasted_iota(jnp.int32, (C, C), 1)
    keep = t >= s
    if seg:
        keep = jnp.logical_and(keep, r["rcol"][...] == r["rrow"][...])
    return keep


def _fwd_kernel(*refs, flags, mode, decayed, seg, C):
    r = _unpack(refs, flags)
    q, k, v = r["q"][...], r["k"][...], r["v"][...]
    cdt = _cdt(q, k, v)
    h = r["h"][...].astype(cdt)
    carry = r["carry"][...] if seg else None
    qf = q.astype(F32)
    tcol = lax.broadcasted_iota(jnp.int32, (C, 1), 0)
    if mode == "scalar":
        keep = _pair_mask(r, C, seg)
        if decayed:
            bcol = r["bcol"][...]
            D = jnp.where(keep, jnp.exp(jnp.minimum(bcol - r["brow"][...], 0.0)), 0.0)
            A = mm_nt(q, k) * D
            inter = mm((qf * jnp.exp(bcol)).astype(cdt), h)
        else:
            A = jnp.where(keep, mm_nt(q, k), 0.0)
            inter = mm(q, h)
        o = mm(A.astype(cdt), v)
        o = o + (inter if carry is None else carry * inter)
    elif mode == "key":
        b = r["b"][...]
        inter = mm((qf * jnp.exp(b)).astype(cdt), h)
        o0 = inter if carry is None else carry * inter

        def body(s, o):
            ks = _row(r["k"], s).astype(F32)
            vs = _row(r["v"], s).astype(F32)
            E = jnp.exp(jnp.minimum(b - _row(r["b"], s), 0.0))
            a = jnp.sum(qf * ks * E, axis=1, keepdims=True)
            a = jnp.where(_col_mask(r, s, tcol, seg), a, 0.0)
            return o + a * vs

        o = lax.fori_loop(0, C, body, o0)
    else:  # value
        b = r["b"][...]
        e0 = jnp.exp(b) if carry is None else carry * jnp.exp(b)
        o0 = e0 * mm(q, h)

        def body(s, o):
            ks = _row(r["k"], s).astype(F32)
            vs = _row(r["v"], s).astype(F32)
            F = jnp.exp(jnp.minimum(b - _row(r["b"], s), 0.0))
            col = jnp.where(_col_mask(r, s, tcol, seg),
                            jnp.sum(qf * ks, axis=1, keepdims=True), 0.0)
            return o + col * vs * F

        o = lax.fori_loop(0, C, body, o0)
    r["o"][...] = o


def _bwd_kernel(*refs, flags, mode, decayed, seg, C):
    r = _unpack(refs, flags)
    q, k, v = r["q"][...], r["k"][...], r["v"][...]
    cdt = _cdt(q, k, v)
    hf = r["h"][...]
    h = hf.astype(cdt)
    do = r["do"][...]
    dol = do.astype(cdt)
    carry = r["carry"][...] if seg else None
    qf, kf, vf = q.astype(F32), k.astype(F32), v.astype(F32)
    tcol = lax.broadcasted_iota(jnp.int32, (C, 1), 0)
    db = None
    if mode == "scalar":
        keep = _pair_mask(r, C, seg)
        if decayed:
            bcol = r["bcol"][...]
            D = jnp.where(keep, jnp.exp(jnp.minimum(bcol - r["brow"][...], 0.0)), 0.0)
            e = jnp.exp(bcol)
        else:
            D = keep.astype(F32)
            e = jnp.ones((C, 1), F32)
        if carry is not None:
            e = e * carry
        A = mm_nt(q, k) * D
        dP = mm_nt(dol, v) * D
        dq = mm(dP.astype(cdt), k) + e * mm_nt(dol, h)
        dk = mm_tn(dP.astype(cdt), q)
        dv = mm_tn(A.astype(cdt), dol)
        dh = mm_tn((qf * e).astype(cdt), dol)
        if decayed:
            db = jnp.sum(qf * dq, axis=1, keepdims=True) - jnp.sum(kf * dk, axis=1, keepdims=True)
    elif mode == "key":
        b = r["b"][...]
        eb = jnp.exp(b)
        dsc = do if carry is None else carry * do
        dq0 = mm_nt(dsc.astype(cdt), h) * eb
        dh = mm_tn((qf * eb).astype(cdt), dsc.astype(cdt))

        def body(s, acc):
            dq, dk, dv = acc
            ks = _row(r["k"], s).astype(F32)
            vs = _row(r["v"], s).astype(F32)
            m = _col_mask(r, s, tcol, seg)
            E = jnp.where(m, jnp.exp(jnp.minimum(b - _row(r["b"], s), 0.0)), 0.0)
            qE = qf * E
            a = jnp.sum(qE * ks, axis=1, keepdims=True)
            dA = jnp.where(m, jnp.sum(do * vs, axis=1, keepdims=True), 0.0)
            one = (tcol == s).astype(F32)
            dv = dv + one * jnp.sum(a * do, axis=0, keepdims=True)
            dk = dk + one * jnp.sum(dA * qE, axis=0, keepdims=True)
            dq = dq + dA * ks * E
            return dq, dk, dv

        K, V = q.shape[-1], v.shape[-1]
        dq, dk, dv = lax.fori_loop(
            0, C, body, (dq0, jnp.zeros((C, K), F32), jnp.zeros((C, V), F32)))
        db = qf * dq - kf * dk
    else:  # value
        b = r["b"][...]
        e0 = jnp.exp(b) if carry is None else carry * jnp.exp(b)
        X = do * e0
        dq0 = mm_nt(X.astype(cdt), h)
        dh = mm_tn(q, X.astype(cdt))
        db0 = do * e0 * mm(q, h)

        def body(s, acc):
            dq, dk, dv, db = acc
            ks = _row(r["k"], s).astype(F32)
            vs = _row(r["v"], s).astype(F32)
            m = _col_mask(r, s, tcol, seg)
            F = jnp.exp(jnp.minimum(b - _row(r["b"], s), 0.0))
            col = jnp.where(m, jnp.sum(qf * ks, axis=1, keepdims=True), 0.0)
            vF = vs * F
            db = db + do * col * vF
            dP = jnp.where(m, jnp.sum(do * vF, axis=1, keepdims=True), 0.0)
            one = (tcol == s).astype(F32)
            dv = dv + one * jnp.sum(col * do * F, axis=0, keepdims=True)
            dk = dk + one * jnp.sum(dP * qf, axis=0, keepdims=True)
            dq = dq + dP * ks
            return dq, dk, dv, db

        K, V = q.shape[-1], v.shape[-1]
        dq, dk, dv, db = lax.fori_loop(
            0, C, body, (dq0, jnp.zeros((C, K), F32), jnp.zeros((C, V), F32), db0))
        db = db - vf * dv
    r["dq"][...] = dq.astype(r["dq"].dtype)
    r["dk"][...] = dk.astype(r["dk"].dtype)
    r["dv"][...] = dv.astype(r["dv"].dtype)
    r["dh"][...] = dh
    if db is not None:
        r["db"][...] = db


def _operands(mode, q, k, v, h, b, segments, heads):
    """(names+flags, arrays, block shapes, index kinds) of the operands common to fwd and bwd."""
    G, N, C, K = q.shape
    V = v.shape[-1]
    decayed = b is not None
    seg = segments is not None
    items = [("q", q, (C, K), "g"), ("k", k, (C, K), "g"), ("v", v, (C, V), "g"),
             ("h", h, (K, V), "g")]
    if mode == "scalar":
        if decayed:
            items += [("bcol", b.reshape(G, N, C, 1), (C, 1), "g"),
                      ("brow", b.reshape(G, N, 1, C), (1, C), "g")]
    else:
        items.append(("b", b, (C, b.shape[-1]), "g"))
    if seg:
        rid, carry = segments
        Bs = rid.shape[0]
        items += [("rcol", rid.reshape(Bs, N, C, 1), (C, 1), "b"),
                  ("carry", carry.astype(F32).reshape(Bs, N, C, 1), (C, 1), "b")]
        if mode == "scalar":
            items.append(("rrow", rid.reshape(Bs, N, 1, C), (1, C), "b"))
    return items


def _spec(block, kind, heads):
    if kind == "g":
        return pl.BlockSpec((None, None) + block, lambda g, n: (g, n, 0, 0))
    # lax.div (truncating) rather than //: floor division lowers through `sign`, which Mosaic
    # only lowers knowing the TPU generation.
    return pl.BlockSpec((None, None) + block, lambda g, n: (lax.div(g, heads), n, 0, 0))


def _call(kernel, backend, items, outs, grid, name, **kw):
    in_names = [nm for nm, *_ in items]
    out_names = [nm for nm, *_ in outs]
    all_names = ["q", "k", "v", "h", "bcol", "brow", "b", "rcol", "carry", "rrow", "do",
                 "o", "dq", "dk", "dv", "dh", "db"]
    # _unpack walks the flags in order: inputs first, then outputs.
    flags = [(nm, nm in in_names) for nm in all_names[:11]] + \
            [(nm, nm in out_names) for nm in all_names[11:]]
    order = [nm for nm, p in flags if p]
    assert order == in_names + out_names, (order, in_names, out_names)
    heads = kw.pop("heads")
    return pl.pallas_call(
        functools.partial(kernel, flags=flags, **kw),
        out_shape=[jax.ShapeDtypeStruct(shape, dt) for _, shape, dt, _ in outs],
        grid=grid,
        in_specs=[_spec(blk, kind, heads) for _, _, blk, kind in items],
        out_specs=[_spec(blk, "g", heads) for _, _, _, blk in outs],
        compiler_params=_backend.compiler_params(backend, ("parallel", "parallel")),
        interpret=backend.interpret, name=name,
    )(*[x for _, x, _, _ in items])


def _fwd(backend, mode, heads, q, k, v, h, b, segments):
    G, N, C, K = q.shape
    V = v.shape[-1]
    items = _operands(mode, q, k, v, h, b, segments, heads)
    outs = [("o", (G, N, C, V), F32, (C, V))]
    (o,) = _call(_fwd_kernel, backend, items, outs, (G, N), "chunk_output_fwd", mode=mode,
                 decayed=b is not None, seg=segments is not None, C=C, heads=heads)
    return o


def _bwd(backend, mode, heads, q, k, v, h, b, segments, do):
    G, N, C, K = q.shape
    V = v.shape[-1]
    items = _operands(mode, q, k, v, h, b, segments, heads)
    items.append(("do", do.astype(F32), (C, V), "g"))
    outs = [("dq", (G, N, C, K), q.dtype, (C, K)), ("dk", (G, N, C, K), k.dtype, (C, K)),
            ("dv", (G, N, C, V), v.dtype, (C, V)), ("dh", (G, N, K, V), F32, (K, V))]
    if b is not None:
        bshape = (C, 1) if mode == "scalar" else (C, b.shape[-1])
        outs.append(("db", (G, N) + bshape, F32, bshape))
    res = _call(_bwd_kernel, backend, items, outs, (G, N), "chunk_output_bwd", mode=mode,
                decayed=b is not None, seg=segments is not None, C=C, heads=heads)
    dq, dk, dv, dh = res[:4]
    db = None if b is None else res[4].reshape(b.shape)
    return dq, dk, dv, dh, db


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

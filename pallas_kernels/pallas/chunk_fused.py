"""Stages 2 to 5 of docs/design.md fused on TPU for the gated-linear family (linear_attention,
simple_gla, gla, and the passes gsa_fused builds on) and the delta-rule family (delta_rule,
gated_delta_rule, ttt_linear): one forward kernel and one backward kernel, each walking the
chunks in order with the running state (or its gradient) in VMEM.

The staged path (`gla_family.gated_scan`, still the Triton flavour's) materialises the chunk
layout, the scaled queries and the decayed keys around its kernels, writes the state entering
every chunk to HBM and reads it back, and its backward does the same for dS. Here:

- forward (grid (B, H / HB, N), chunk axis "arbitrary"): per chunk and head, the output body of
  `chunk_output` on the state in VMEM, then the state step of `chunk_state`. It reads q, k, v, the
  gates and h0 once and writes o (in v's dtype) and the final state; under differentiation it
  also writes the state entering each chunk, in the matmul dtype (bf16 for bf16 inputs: the
  backward's matmuls read it in that dtype anyway), the one residual besides the inputs.
- backward (the same grid, chunks in reverse): per chunk and head, the backward body of
  `chunk_output` (dq, dk, dv, db and the output's share of dS_{n-1}), the state step's gradients,
  the gate gradient through the chunk-local cumulative sum (a triangular matmul), and
  dS_{n-1} = D_n * dS_n + dh in VMEM. It writes dq, dk, dv, dg and dh0 once.

Layout: q, k, v, o, do, dq, dk, dv (and gla's per-key gate) stay in [B, T, H, D]: a block is
[C, HB, D] (HB = 8 heads, the sublane tile, or all H when H is not a multiple of 8), each head's
[C, D] slice is copied into head-major VMEM scratch with static strided loads, and one loop over
the HB heads does the work. The chunk-local cumulative sum of a per-key gate is computed in the
kernel (a lower-triangular matmul at float32 precision); scalar gates [B, T, H] are tiny and
summed outside, as [B, N, H, C].

Delta-rule family (`fused_delta`): the forward computes per chunk the WY factors (wy.py's masks
and blocked inverse), v_new = U - W S_{n-1}, the output on v_new and the state step; W, U and
v_new never leave VMEM. The backward recomputes them per chunk from the saved entering state and
runs the output's, the state step's, v_new's and the WY backward (`wy.wy_grads`) in VMEM.
ttt_linear is the same kernels with beta = eta and L's pairs restricted to earlier mini-batches.

Ragged T: the grid has ceil(T / C) chunks; the last block reads past the array's end and its
rows are zeroed when copied into VMEM (`_valid_rows`); its writes past the end are dropped. Only
the small per-position arrays built outside (scalar gates' cumsums, beta, segment masks) are
padded.

TPU flavour only (`applies`): the Triton flavour has no ordered grid and keeps the staged path.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels.chunking import Segments, pad_time
from pallas_kernels.pallas import _backend
from pallas_kernels.pallas._common import F32, call, compute_dtype, mm, mm_nt, mm_tn
from pallas_kernels.pallas.chunk_output import SUB_CHUNK, _bwd_kernel, _fwd_kernel

KINDS = ("none", "scalar", "key", "value")
CHANNEL = ("key", "value")  # per-channel gates: [B, T, H, K] on the key axis, [B, T, H, V] on the value axis
SEMANTICS = ("parallel", "parallel", "arbitrary")  # grid (B, H / HB, N): the chunks in order


def applies(kind: str, backend=None) -> bool:
    """True when `fused_scan` runs `kind` on the current flavour (TPU only)."""
    backend = backend or _backend.current()
    return backend.kind == "tpu" and kind in KINDS


def _last_row(x):
    """Row C - 1 of x [C, D] as [1, D] (a masked sum: no unaligned single-row load)."""
    t = lax.broadcasted_iota(jnp.int32, x.shape, 0)
    return jnp.sum(jnp.where(t == x.shape[0] - 1, x, 0.0), axis=0, keepdims=True)


def _heads_block(H: int) -> int:
    """Heads per block: 8 (the sublane tile) when H divides by it, else all H (the full extent:
    TPU blocks need their last two dims tile-aligned or whole)."""
    return 8 if H % 8 == 0 else H


def _mode(kind):
    """chunk_output's mode of a kind ("none" is an undecayed "scalar")."""
    return kind if kind in CHANNEL else "scalar"


def _tril(C):
    t = lax.broadcasted_iota(jnp.int32, (C, C), 0)
    s = lax.broadcasted_iota(jnp.int32, (C, C), 1)
    return jnp.where(t >= s, 1.0, 0.0).astype(F32)


def _valid_rows(C, T, chunk):
    """[C, 1] mask of the chunk's positions before T (None when T is a multiple of C): the last
    block of a ragged T reads past the array's end, and those rows are zeroed on loading."""
    if T % C == 0:
        return None
    return lax.broadcasted_iota(jnp.int32, (C, 1), 0) < T - chunk * C


def _load_heads(r, kind, HB, scale, names, valid=None):
    """Copy each head's [C, D] slice of the [C, HB, D] blocks `names` into head-major VMEM scratch
    (static strided loads; the loop over heads then indexes the leading axis): q scaled as the
    staged glue rounds it, the chunk-local cumsum b of the gates (per-key: tril @ g at float32
    precision; scalar: summed outside, as bcol [C, 1] and brow [1, C]). `valid` ([C, 1] or None):
    the rows to keep (`_valid_rows`); the others are set to zero."""
    keep = (lambda x: x) if valid is None else (lambda x: jnp.where(valid, x, 0))  # noqa: E731
    for j in range(HB):
        for nm in names:
            x = keep(r[nm][:, j, :])
            if nm == "q":
                x = (x.astype(F32) * scale).astype(x.dtype)
            r[nm + "_h"][j] = x.astype(r[nm + "_h"].dtype)
        if kind in CHANNEL:
            r["b_h"][j] = mm(_tril(r["q"].shape[0]), keep(r["g"][:, j, :].astype(F32)))
        elif kind == "scalar":
            row = r["gc"][pl.ds(j, 1), :]                       # [1, C]
            r["brow_h"][j] = row
            r["bcol_h"][j] = row.T


def _view(r, j, **extra):
    """The refs of head j in the names chunk_output's kernel bodies read."""
    at = lambda name: None if r.get(name) is None else r[name].at[j]  # noqa: E731
    view = {"q": at("q_h"), "k": at("k_h"), "v": at("v_h"), "b": at("b_h"),
            "bcol": at("bcol_h"), "brow": at("brow_h"),
            "rcol": r["rcol"], "rrow": r["rrow"], "carry": r["carry"]}
    view.update(extra)
    return view


def _state_step(view, kind, seg):
    """Chunk_state's step operands for one head: (kd [C, K], vd [C, V], dec, the pieces the
    backward needs), with S_n = dec * S_{n-1} + kd^T vd. kd (vd for "value") is decayed to the
    chunk end and zeroed where a reset follows; dec decays the state's rows ([K, 1]; "scalar":
    [1, 1]), its columns ("value": [1, V]) or nothing (None)."""
    k, v = view["k"][...], view["v"][...]
    kd, vd, dec, end, b, e, reach, keep = k, v, None, None, None, None, None, None
    if kind != "none":
        b = view["bcol"][...] if kind == "scalar" else view["b"][...]   # [C, 1] | [C, D]
        end = _last_row(b)                                     # [1, 1] | [1, D]
        e = jnp.exp(end - b)                                   # decay from i to the chunk end
        dec = jnp.exp(end).T if kind == "key" else jnp.exp(end)
        if kind == "value":
            vd = (v.astype(F32) * e).astype(v.dtype)
        else:
            kd = (k.astype(F32) * e).astype(k.dtype)
    if seg:
        rid = view["rcol"][...]                                # [C, 1]
        reach = jnp.where(rid == _last_row(rid), 1.0, 0.0)     # in the last position's segment
        kd = (kd.astype(F32) * reach).astype(k.dtype)
        keep = _last_row(view["carry"][...])                   # no reset inside the chunk
        dec = keep if dec is None else dec * keep
    return kd, vd, dec, dict(e=e, reach=reach)


def _store_outputs(r, HB, *, last):
    """End of a forward step: each head's output from VMEM into its [C, HB, V] block, and the
    final state after the last chunk."""
    for j in range(HB):
        r["o"][:, j, :] = r["o_acc"][j].astype(r["o"].dtype)

    @pl.when(last)
    def _fin():
        r["hT"][...] = r["S"][...]


def _state_step_bwd(view, kind, seg, dS_ref, *, cdt, last):
    """The state step's backward for one head and chunk, after chunk_output's backward body has
    written view's dq, dk, dv, dh (and db): adds the step's share of dk and dv, sets dS_ref [K, V]
    from dL/dS_n to dL/dS_{n-1} = dec * dS_n + dh, and returns the gradient of b (the
    chunk-local cumsum of the gates; [C, 1] "scalar", [C, D] per channel, None for "none").
    `last`: the [C, 1] mask of the chunk's last row."""
    kd, vd, dec, p = _state_step(view, kind, seg)
    S, dS = view["h"][...], dS_ref[...]
    dSc = dS.astype(cdt)
    dkd = mm_nt(vd.astype(cdt), dSc)                           # [C, K] = vd dS^T
    dvd = mm(kd.astype(cdt), dSc)                              # [C, V] = kd dS
    dk_s = dkd * p["e"] if kind in ("scalar", "key") else dkd
    if seg:
        dk_s = dk_s * p["reach"]
    view["dk"][...] = view["dk"][...] + dk_s
    view["dv"][...] = view["dv"][...] + (dvd * p["e"] if kind == "value" else dvd)
    db = None
    if kind != "none":
        # d/d(end - b_i) of the state step (t) and d/d(end) through the state's decay (dend)
        dSS = dS * S.astype(F32)
        if kind == "value":
            t = vd.astype(F32) * dvd                                           # [C, V]
            dend = jnp.sum(t, axis=0, keepdims=True) + jnp.sum(dSS, axis=0, keepdims=True) * dec
        else:
            t = kd.astype(F32) * dkd                                            # [C, K]
            if kind == "scalar":
                t = jnp.sum(t, axis=1, keepdims=True)                           # [C, 1]
                dend = jnp.sum(t, axis=0, keepdims=True) + jnp.sum(dSS) * dec
            else:
                dend = (jnp.sum(t, axis=0, keepdims=True)
                        + (jnp.sum(dSS, axis=1, keepdims=True) * dec).T)       # [1, K]
        db = view["db"][...] - t + jnp.where(last, dend, 0.0)
    dS_ref[...] = view["dh"][...] + (dS if dec is None else dS * dec)
    return db


def _store_grads(r, HB, scale):
    """End of a backward step: each head's dq (times the scale q was multiplied by), dk and dv
    from VMEM into their [C, HB, D] blocks."""
    for j in range(HB):
        r["dq"][:, j, :] = (r["dq_h"][j] * scale).astype(r["dq"].dtype)
        r["dk"][:, j, :] = r["dk_h"][j].astype(r["dk"].dtype)
        r["dv"][:, j, :] = r["dv_h"][j].astype(r["dv"].dtype)


def _store_dh0(r, dS_ref, *, last):
    """dL/dh0 after the backward's last step (the first chunk), when h0 was given."""
    @pl.when(last)
    def _fin():
        if r["dh0"] is not None:
            r["dh0"][...] = dS_ref[...]


def _fwd_kernel_fused(r, *, kind, seg, C, HB, n_chunks, scale, T):
    """One chunk of HB heads: blocks q, k [C, HB, K], v [C, HB, V] (and g [C, HB, K]) in the
    [B, T, H, D] layout; per head the output body of chunk_output, then the state step of
    chunk_state (optionally emitting the entering state)."""
    n = pl.program_id(2)
    S_ref = r["S"]

    @pl.when(n == 0)
    def _init():
        S_ref[...] = r["h0"][...] if r["h0"] is not None else jnp.zeros(S_ref.shape, F32)

    cdt = compute_dtype(r["q"], r["k"], r["v"])
    _load_heads(r, kind, HB, scale, ("q", "k", "v"), _valid_rows(C, T, n))

    def head(j, carry):
        view = _view(r, j, h=S_ref.at[j], o=r["o_acc"].at[j])
        if r["states"] is not None:
            r["states"].at[j][...] = S_ref[j].astype(r["states"].dtype)
        _fwd_kernel(view, mode=_mode(kind), decayed=kind == "scalar", seg=seg, C=C,
                    c=min(SUB_CHUNK, C), tpu=True)
        kd, vd, dec, _ = _state_step(view, kind, seg)
        S = S_ref[j]
        S_ref[j] = (S if dec is None else S * dec) + mm_tn(kd.astype(cdt), vd.astype(cdt))
        return carry

    lax.fori_loop(0, HB, head, 0)
    _store_outputs(r, HB, last=n == n_chunks - 1)


def _bwd_kernel_fused(r, *, kind, seg, C, HB, n_chunks, scale, T):
    """The reverse pass: chunk N - 1 - i of HB heads, with dS = dL/dS_n in VMEM. Per head the
    backward body of chunk_output (dq, dk, dv, dS_{n-1} from the output, db), then the state
    step's gradients, the gate gradient through the chunk-local cumsum, and
    dS_{n-1} = dec * dS_n + dh."""
    i = pl.program_id(2)
    dS_ref = r["dS"]

    @pl.when(i == 0)
    def _init():
        dS_ref[...] = r["dhT"][...]

    cdt = compute_dtype(r["q"], r["k"], r["v"])
    _load_heads(r, kind, HB, scale, ("q", "k", "v", "do"), _valid_rows(C, T, n_chunks - 1 - i))
    tril = _tril(C)
    last = lax.broadcasted_iota(jnp.int32, (C, 1), 0) == C - 1

    def head(j, carry):
        view = _view(r, j, h=r["states"].at[j], do=r["do_h"].at[j], dq=r["dq_h"].at[j],
                     dk=r["dk_h"].at[j], dv=r["dv_h"].at[j], dh=r["dh"], db=r.get("db"))
        _bwd_kernel(view, mode=_mode(kind), decayed=kind == "scalar", seg=seg, C=C,
                    c=min(SUB_CHUNK, C), tpu=True)
        db = _state_step_bwd(view, kind, seg, dS_ref.at[j], cdt=cdt, last=last)
        if kind == "scalar":   # dg_j = sum_{i >= j} db_i, as a row [1, C]
            r["dg_h"][j] = mm(db.T, tril)
        elif kind != "none":
            r["dg_h"][j] = mm_tn(tril, db)
        return carry

    lax.fori_loop(0, HB, head, 0)
    _store_grads(r, HB, scale)
    for j in range(HB):
        if kind in CHANNEL:
            r["dg"][:, j, :] = r["dg_h"][j]
        elif kind == "scalar":
            r["dg"][pl.ds(j, 1), :] = r["dg_h"][j]
    _store_dh0(r, dS_ref, last=i == n_chunks - 1)


def _operands(kind, C, q, k, v, g, h0, ids, reverse):
    """Inputs and BlockSpecs of both kernels over the grid (B, H / HB, N) (chunk N - 1 - n when
    `reverse`)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    N = pl.cdiv(T, C)
    HB = _heads_block(H)
    c = (lambda n: N - 1 - n) if reverse else (lambda n: n)
    tok = lambda d: pl.BlockSpec((None, C, HB, d), lambda b, h, n: (b, c(n), h, 0))  # noqa: E731
    specs = {
        "q": tok(K), "k": tok(K), "v": tok(V), "g": tok(K), "o": tok(V), "do": tok(V),
        "dq": tok(K), "dk": tok(K), "dv": tok(V),
        "gc": pl.BlockSpec((None, None, HB, C), lambda b, h, n: (b, c(n), h, 0)),
        "states": pl.BlockSpec((None, HB, None, K, V), lambda b, h, n: (b, h, c(n), 0, 0)),
        **{nm: pl.BlockSpec((None, None, C, 1), lambda b, h, n: (b, c(n), 0, 0))
           for nm in ("rcol", "carry")},
        "rrow": pl.BlockSpec((None, None, 1, C), lambda b, h, n: (b, c(n), 0, 0)),
        **{nm: pl.BlockSpec((None, HB, K, V), lambda b, h, n: (b, h, 0, 0))
           for nm in ("h0", "hT", "dhT", "dh0")},
    }
    specs["g"] = tok(V) if kind == "value" else tok(K)
    specs["dg"] = specs["g"] if kind in CHANNEL else specs["gc"]
    inputs = {"q": q, "k": k, "v": v, "g": g if kind in CHANNEL else None, "gc": None,
              "rcol": None, "rrow": None, "carry": None}
    pad = N * C - T  # a ragged last chunk: the small per-position arrays are padded, not q, k, v
    if kind == "scalar":  # [B, T, H] gates: their chunk-local sums are cheap here, [B, N, H, C]
        gp = pad_time(g.astype(F32), pad).reshape(B, N, C, H)
        inputs["gc"] = jnp.moveaxis(jnp.cumsum(gp, axis=2), 3, 2)
    if ids is not None:
        segs = Segments(ids).pad(pad).chunked(C)
        rid = segs.rid[:, 0].astype(F32)                        # [B, N, C], exact below 2**24
        inputs["rcol"], inputs["rrow"] = rid[..., None], rid[..., None, :]
        inputs["carry"] = segs.first[:, 0].astype(F32)[..., None]
    return inputs, specs, HB


def _head_scratch(kind, HB, C, K, V, dtypes, extra=()):
    from jax.experimental.pallas import tpu as pltpu

    dims = {"q": K, "k": K, "v": V, "do": V, "dq": K, "dk": K, "dv": V}
    scratch = {f"{nm}_h": pltpu.VMEM((HB, C, dims[nm]), dtypes.get(nm, F32))
               for nm in ("q", "k", "v") + tuple(extra)}
    if kind in CHANNEL:
        scratch["b_h"] = pltpu.VMEM((HB, C, K if kind == "key" else V), F32)
    elif kind == "scalar":
        scratch["bcol_h"] = pltpu.VMEM((HB, C, 1), F32)
        scratch["brow_h"] = pltpu.VMEM((HB, 1, C), F32)
    return scratch


def _forward(backend, kind, scale, C, out_dtype, q, k, v, g, h0, ids, save_states):
    """The fused forward on the padded problem: (o [B, T, H, V] in v's dtype, hT f32 [B, H, K, V],
    states [B, H, N, K, V] in the matmul dtype (the state entering each chunk) or None)."""
    from jax.experimental.pallas import tpu as pltpu

    B, T, H, K = q.shape
    V = v.shape[-1]
    N = pl.cdiv(T, C)
    inputs, specs, HB = _operands(kind, C, q, k, v, g, h0, ids, reverse=False)
    inputs["h0"] = h0
    outputs = {"o": jax.ShapeDtypeStruct((B, T, H, V), out_dtype or v.dtype),
               "hT": jax.ShapeDtypeStruct((B, H, K, V), F32),
               "states": (jax.ShapeDtypeStruct((B, H, N, K, V), compute_dtype(q, k, v))
                          if save_states else None)}
    scratch = {"S": pltpu.VMEM((HB, K, V), F32), "o_acc": pltpu.VMEM((HB, C, V), F32),
               **_head_scratch(kind, HB, C, K, V, {"q": q.dtype, "k": k.dtype, "v": v.dtype})}
    out = call(functools.partial(_fwd_kernel_fused, kind=kind, seg=ids is not None, C=C, HB=HB,
                                 n_chunks=N, scale=scale, T=T),
               backend=backend, grid=(B, H // HB, N), inputs=inputs, outputs=outputs,
               in_specs=specs, out_specs=specs, scratch=scratch,
               semantics=SEMANTICS, name=f"chunk_fused_fwd_{kind}")
    return out["o"], out["hT"], out["states"]


def _backward(backend, kind, scale, C, q, k, v, g, h0, ids, states, do, dhT):
    """The fused backward: (dq, dk, dv, dg, dh0) from the saved entering states."""
    from jax.experimental.pallas import tpu as pltpu

    B, T, H, K = q.shape
    V = v.shape[-1]
    N = pl.cdiv(T, C)
    inputs, specs, HB = _operands(kind, C, q, k, v, g, h0, ids, reverse=True)
    inputs.update(states=states, do=do, dhT=dhT.astype(F32))
    sds = jax.ShapeDtypeStruct
    dg = None
    if kind in CHANNEL:
        dg = sds(g.shape, F32)
    elif kind == "scalar":
        dg = sds((B, N, H, C), F32)
    outputs = {"dq": sds(q.shape, q.dtype), "dk": sds(k.shape, k.dtype), "dv": sds(v.shape, v.dtype),
               "dg": dg, "dh0": None if h0 is None else sds(h0.shape, F32)}
    scratch = {"dS": pltpu.VMEM((HB, K, V), F32), "dh": pltpu.VMEM((K, V), F32),
               **_head_scratch(kind, HB, C, K, V, {"q": q.dtype, "k": k.dtype, "v": v.dtype},
                               extra=("do", "dq", "dk", "dv"))}
    if kind != "none":
        D = {"scalar": 1, "key": K, "value": V}[kind]
        scratch["db"] = pltpu.VMEM((C, D), F32)
        scratch["dg_h"] = pltpu.VMEM((HB, 1, C) if kind == "scalar" else (HB, C, D), F32)
    out = call(functools.partial(_bwd_kernel_fused, kind=kind, seg=ids is not None, C=C, HB=HB,
                                 n_chunks=N, scale=scale, T=T),
               backend=backend, grid=(B, H // HB, N), inputs=inputs, outputs=outputs,
               in_specs=specs, out_specs=specs, scratch=scratch,
               semantics=SEMANTICS, name=f"chunk_fused_bwd_{kind}")
    dg = out["dg"]
    if kind == "scalar":
        dg = jnp.moveaxis(dg, 2, 3).reshape(B, N * C, H)[:, :T]
    dg = None if dg is None else dg.astype(g.dtype)
    return out["dq"], out["dk"], out["dv"], dg, out["dh0"]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3, 4))
def _fused(backend, kind, scale, C, out_dtype, q, k, v, g, h0, ids):
    o, hT, _ = _forward(backend, kind, scale, C, out_dtype, q, k, v, g, h0, ids, save_states=False)
    return o, hT


def _fused_fwd(backend, kind, scale, C, out_dtype, q, k, v, g, h0, ids):
    o, hT, states = _forward(backend, kind, scale, C, out_dtype, q, k, v, g, h0, ids,
                             save_states=True)
    return (o, hT), (q, k, v, g, h0, ids, states)


def _fused_bwd(backend, kind, scale, C, out_dtype, res, cts):
    q, k, v, g, h0, ids, states = res
    do, dhT = cts
    dq, dk, dv, dg, dh0 = _backward(backend, kind, scale, C, q, k, v, g, h0, ids, states, do, dhT)
    dids = None if ids is None else jnp.zeros(ids.shape, jax.dtypes.float0)
    return dq, dk, dv, dg, dh0, dids


_fused.defvjp(_fused_fwd, _fused_bwd)


def fused_scan(kind, q, k, v, g, *, scale, initial_state, segments, chunk_size, out_dtype=None):
    """One gated-linear pass through the fused kernels: linear_attention ("none"), simple_gla
    ("scalar"), gla ("key"), or the gate on the value axis ("value", gsa's first pass).

    Args:
      q, k: [B, T, H, K]; v: [B, T, H, V]; g: None, [B, T, H], [B, T, H, K] or [B, T, H, V] per
        `kind` (any T: a ragged last chunk is masked in the kernels); initial_state: f32 [B, H, K, V] or None; segments:
        `Segments` or None; out_dtype: o's dtype (default v's).

    Returns:
      (o [B, T, H, V], final state f32 [B, H, K, V]).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    ids = None if segments is None else segments.ids
    h0 = None if initial_state is None else initial_state.astype(F32)
    out_dtype = None if out_dtype is None else jnp.dtype(out_dtype)
    return _fused(_backend.current(), kind, float(scale), chunk_size, out_dtype, q, k, v, g, h0,
                  ids)


# ----------------------------------------------------------------------------------------------
# The delta-rule family: the WY stage, the state pass and the output in one forward kernel, and
# their gradients in one backward kernel.

def _delta_prologue(r, HB, gated, scale, names, valid):
    """Both delta kernels' first step: the heads' blocks (and gates) into head-major scratch, and
    beta's rows [1, C] as columns [C, 1]."""
    _load_heads(r, "scalar" if gated else "none", HB, scale, names, valid)
    for j in range(HB):
        r["beta_h"][j] = r["beta"][pl.ds(j, 1), :].T             # [C, 1]


def _delta_factors(r, j, *, gated, seg, C, cdt, mini_batch):
    """Head j's WY factors (wy.py's masks and blocked triangular inverse): (a [C, C] f32, w [C, K],
    u [C, V] in the matmul dtype, the masks, beta [C, 1], kk = K K^T [C, C] f32). With
    `mini_batch` b (ttt_linear; chunks are whole mini-batches, no segments) the pairs of L are
    those whose key lies in an earlier mini-batch, [floor(j / b) < floor(i / b)]."""
    from pallas_kernels.pallas import wy

    zeros = jnp.zeros((C, 1), F32)
    gc = r["bcol_h"][j] if gated else zeros                      # [C, 1]
    local = r["local"][...] if seg else zeros                    # resets since the chunk start
    masks = wy.chunk_masks(gc, local)
    if mini_batch is not None:
        rows, cols = masks[:2]
        batch = lambda x: jnp.floor((x.astype(F32) + 0.5) / mini_batch)  # noqa: E731
        masks = (*masks[:3], batch(rows) > batch(cols), *masks[4:])
    rows, cols, _, lower_same, _, gam, gamma = masks
    k, v, beta = r["k_h"][j], r["v_h"][j], r["beta_h"][j]
    kk = mm_nt(k.astype(cdt), k.astype(cdt))
    a = wy.unit_lower_inverse(jnp.where(lower_same, beta * kk * gam, 0.0), rows, cols)
    w = mm(a.astype(cdt), (beta * gamma * k.astype(F32)).astype(cdt)).astype(cdt)
    u = mm(a.astype(cdt), (beta * v.astype(F32)).astype(cdt)).astype(cdt)
    return a, w, u, masks, beta, kk


def _delta_fwd_kernel(r, *, gated, seg, C, HB, n_chunks, scale, mini_batch, T):
    """One chunk of HB heads of the (gated) delta rule: per head the WY factors, v_new = U - W
    S_{n-1}, the output body of chunk_output on v_new, then S_n = dec * S_{n-1} + kd^T v_new
    (optionally emitting S_{n-1}). W, U and v_new never leave VMEM."""
    n = pl.program_id(2)
    S_ref = r["S"]

    @pl.when(n == 0)
    def _init():
        S_ref[...] = r["h0"][...] if r["h0"] is not None else jnp.zeros(S_ref.shape, F32)

    cdt = compute_dtype(r["k"], r["v"])
    _delta_prologue(r, HB, gated, scale, ("q", "k", "v"), _valid_rows(C, T, n))
    kind = "scalar" if gated else "none"

    def head(j, carry):
        _, w, u, _, _, _ = _delta_factors(r, j, gated=gated, seg=seg, C=C, cdt=cdt,
                                          mini_batch=mini_batch)
        S = S_ref[j]
        if r["states"] is not None:
            r["states"].at[j][...] = S.astype(r["states"].dtype)
        r["vn"][...] = u.astype(F32) - mm(w, S)                  # v_new, float32 [C, V]
        view = _view(r, j, v=r["vn"], h=S_ref.at[j], o=r["o_acc"].at[j])
        _fwd_kernel(view, mode="scalar", decayed=gated, seg=seg, C=C, c=min(SUB_CHUNK, C),
                    tpu=True)
        kd, _, dec, _ = _state_step(view, kind, seg)
        S_ref[j] = (S if dec is None else S * dec) + mm_tn(kd.astype(cdt), r["vn"][...])
        return carry

    lax.fori_loop(0, HB, head, 0)
    _store_outputs(r, HB, last=n == n_chunks - 1)


def _delta_bwd_kernel(r, *, gated, seg, C, HB, n_chunks, scale, mini_batch, T):
    """The reverse pass: chunk N - 1 - i of HB heads, dS = dL/dS_n in VMEM. Per head, from the
    saved S_{n-1}: the WY factors and v_new recomputed; the output's backward (dq, dk, dv_new,
    db, its share of dS_{n-1}); the state step's (dk, dv_new, the gate); v_new = U - W S_{n-1}
    (dU = dv_new, dW = -dv_new S_{n-1}^T, dS_{n-1} -= W^T dv_new); the WY backward (dk, dv,
    dbeta, the gate); dS_{n-1} += dec * dS_n. The gate's gradient goes through the chunk-local
    cumulative sum (a triangular matmul)."""
    from pallas_kernels.pallas import wy

    i = pl.program_id(2)
    dS_ref = r["dS"]

    @pl.when(i == 0)
    def _init():
        dS_ref[...] = r["dhT"][...]

    cdt = compute_dtype(r["k"], r["v"])
    _delta_prologue(r, HB, gated, scale, ("q", "k", "v", "do"), _valid_rows(C, T, n_chunks - 1 - i))
    kind = "scalar" if gated else "none"
    tril = _tril(C)
    last = lax.broadcasted_iota(jnp.int32, (C, 1), 0) == C - 1

    def head(j, carry):
        a, w, u, masks, beta, kk = _delta_factors(r, j, gated=gated, seg=seg, C=C, cdt=cdt,
                                                  mini_batch=mini_batch)
        S = r["states"][j]                                       # S_{n-1}, matmul dtype
        r["vn"][...] = u.astype(F32) - mm(w, S)
        view = _view(r, j, v=r["vn"], h=r["states"].at[j], do=r["do_h"].at[j],
                     dq=r["dq_h"].at[j], dk=r["dk_h"].at[j], dv=r["dvn"], dh=r["dh"],
                     db=r.get("db"))
        _bwd_kernel(view, mode="scalar", decayed=gated, seg=seg, C=C, c=min(SUB_CHUNK, C),
                    tpu=True)
        kd, _, dec, p = _state_step(view, kind, seg)
        dS = dS_ref[j]
        vn = r["vn"][...]
        dkd = mm_nt(vn, dS)                                      # [C, K] = v_new dS^T
        dk_s = dkd * p["e"] if gated else dkd
        if seg:
            dk_s = dk_s * p["reach"]
        r["dk_h"][j] = r["dk_h"][j] + dk_s
        dvn = r["dvn"][...] + mm(kd, dS)                         # [C, V]
        r["dvn"][...] = dvn
        r["dw"][...] = -mm_nt(dvn, S)                            # [C, K]
        dk_ref, dv_ref = r["dk_h"].at[j], r["dv_h"].at[j]

        def store(name, cols, x):
            if name == "dk":
                dk_ref[:, cols] = dk_ref[:, cols] + x
            else:
                dv_ref[:, cols] = x

        dbeta, dgc = wy.wy_grads(r["k_h"].at[j], r["v_h"].at[j], r["dw"], r["dvn"], beta,
                                 masks, a, kk, tile=128, cdt=cdt, store=store)
        r["dbeta_h"][j] = dbeta.T
        if gated:
            t = jnp.sum(kd.astype(F32) * dkd, axis=1, keepdims=True)           # [C, 1]
            dend = jnp.sum(t, axis=0, keepdims=True) + jnp.sum(dS * S.astype(F32)) * dec
            db = r["db"][...] - t + jnp.where(last, dend, 0.0) + dgc
            r["dg_h"][j] = mm(db.T, tril)                        # dg_j = sum_{i >= j} db_i
        dS_ref[j] = (r["dh"][...] + (dS if dec is None else dS * dec)
                     - mm_tn(w, dvn.astype(cdt)))
        return carry

    lax.fori_loop(0, HB, head, 0)
    _store_grads(r, HB, scale)
    for j in range(HB):
        r["dbeta"][pl.ds(j, 1), :] = r["dbeta_h"][j]
        if gated:
            r["dg"][pl.ds(j, 1), :] = r["dg_h"][j]
    _store_dh0(r, dS_ref, last=i == n_chunks - 1)


def _delta_operands(C, q, k, v, g, beta, h0, ids, reverse):
    """`_operands` plus beta's rows [B, N, H, C] and the chunk-local reset counts of WY."""
    B, T, H, _ = q.shape
    N = pl.cdiv(T, C)
    inputs, specs, HB = _operands("scalar" if g is not None else "none", C, q, k, v, g, h0, ids,
                                  reverse=reverse)
    beta = pad_time(beta.astype(F32), N * C - T)
    inputs.update(h0=h0, beta=jnp.moveaxis(beta.reshape(B, N, C, H), 3, 2), local=None)  # [B, N, H, C]
    specs.update(beta=specs["gc"], dbeta=specs["gc"], local=specs["rcol"])
    if ids is not None:
        segs = Segments(ids).pad(N * C - T).chunked(C)
        inputs["local"] = segs.local[:, 0].astype(F32)[..., None]
    return inputs, specs, HB


def _delta_scratch(gated, HB, C, K, V, dtypes, extra=()):
    from jax.experimental.pallas import tpu as pltpu

    return {"vn": pltpu.VMEM((C, V), F32), "beta_h": pltpu.VMEM((HB, C, 1), F32),
            **_head_scratch("scalar" if gated else "none", HB, C, K, V, dtypes, extra=extra)}


def _delta_forward(backend, scale, C, mini_batch, q, k, v, g, beta, h0, ids, save_states):
    """The fused delta-rule forward on the padded problem: (o [B, T, H, V] in v's dtype,
    hT f32 [B, H, K, V], states [B, H, N, K, V] in the matmul dtype or None)."""
    from jax.experimental.pallas import tpu as pltpu

    B, T, H, K = q.shape
    V = v.shape[-1]
    N = pl.cdiv(T, C)
    inputs, specs, HB = _delta_operands(C, q, k, v, g, beta, h0, ids, reverse=False)
    outputs = {"o": jax.ShapeDtypeStruct((B, T, H, V), v.dtype),
               "hT": jax.ShapeDtypeStruct((B, H, K, V), F32),
               "states": (jax.ShapeDtypeStruct((B, H, N, K, V), compute_dtype(k, v))
                          if save_states else None)}
    scratch = {"S": pltpu.VMEM((HB, K, V), F32), "o_acc": pltpu.VMEM((HB, C, V), F32),
               **_delta_scratch(g is not None, HB, C, K, V,
                                {"q": q.dtype, "k": k.dtype, "v": v.dtype})}
    out = call(functools.partial(_delta_fwd_kernel, gated=g is not None, seg=ids is not None,
                                 C=C, HB=HB, n_chunks=N, scale=scale, mini_batch=mini_batch,
                                 T=T),
               backend=backend, grid=(B, H // HB, N), inputs=inputs, outputs=outputs,
               in_specs=specs, out_specs=specs, scratch=scratch,
               semantics=SEMANTICS, name="chunk_fused_fwd_delta")
    return out["o"], out["hT"], out["states"]


def _delta_backward(backend, scale, C, mini_batch, q, k, v, g, beta, h0, ids, states, do, dhT):
    """The fused delta-rule backward: (dq, dk, dv, dg, dbeta, dh0) from the saved states."""
    from jax.experimental.pallas import tpu as pltpu

    B, T, H, K = q.shape
    V = v.shape[-1]
    N = pl.cdiv(T, C)
    gated = g is not None
    inputs, specs, HB = _delta_operands(C, q, k, v, g, beta, h0, ids, reverse=True)
    inputs.update(states=states, do=do, dhT=dhT.astype(F32))
    sds = jax.ShapeDtypeStruct
    rows = sds((B, N, H, C), F32)
    outputs = {"dq": sds(q.shape, q.dtype), "dk": sds(k.shape, k.dtype), "dv": sds(v.shape, v.dtype),
               "dg": rows if gated else None, "dbeta": rows,
               "dh0": None if h0 is None else sds(h0.shape, F32)}
    scratch = {"dS": pltpu.VMEM((HB, K, V), F32), "dh": pltpu.VMEM((K, V), F32),
               "dvn": pltpu.VMEM((C, V), F32), "dw": pltpu.VMEM((C, K), F32),
               "dbeta_h": pltpu.VMEM((HB, 1, C), F32),
               **_delta_scratch(gated, HB, C, K, V, {"q": q.dtype, "k": k.dtype, "v": v.dtype},
                                extra=("do", "dq", "dk", "dv"))}
    if gated:
        scratch["db"] = pltpu.VMEM((C, 1), F32)
        scratch["dg_h"] = pltpu.VMEM((HB, 1, C), F32)
    out = call(functools.partial(_delta_bwd_kernel, gated=gated, seg=ids is not None, C=C, HB=HB,
                                 n_chunks=N, scale=scale, mini_batch=mini_batch, T=T),
               backend=backend, grid=(B, H // HB, N), inputs=inputs, outputs=outputs,
               in_specs=specs, out_specs=specs, scratch=scratch,
               semantics=SEMANTICS, name="chunk_fused_bwd_delta")
    unrow = lambda x, like: (  # noqa: E731  [B, N, H, C] -> [B, T, H]
        jnp.moveaxis(x, 2, 3).reshape(B, N * C, H)[:, :T].astype(like.dtype))
    dg = unrow(out["dg"], g) if gated else None
    return out["dq"], out["dk"], out["dv"], dg, unrow(out["dbeta"], beta), out["dh0"]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _delta(backend, scale, C, mini_batch, q, k, v, g, beta, h0, ids):
    o, hT, _ = _delta_forward(backend, scale, C, mini_batch, q, k, v, g, beta, h0, ids,
                              save_states=False)
    return o, hT


def _delta_fwd(backend, scale, C, mini_batch, q, k, v, g, beta, h0, ids):
    o, hT, states = _delta_forward(backend, scale, C, mini_batch, q, k, v, g, beta, h0, ids,
                                   save_states=True)
    return (o, hT), (q, k, v, g, beta, h0, ids, states)


def _delta_bwd(backend, scale, C, mini_batch, res, cts):
    q, k, v, g, beta, h0, ids, states = res
    do, dhT = cts
    dq, dk, dv, dg, dbeta, dh0 = _delta_backward(backend, scale, C, mini_batch, q, k, v, g, beta,
                                                 h0, ids, states, do, dhT)
    dids = None if ids is None else jnp.zeros(ids.shape, jax.dtypes.float0)
    return dq, dk, dv, dg, dbeta, dh0, dids


_delta.defvjp(_delta_fwd, _delta_bwd)


def fused_delta(q, k, v, g, beta, *, scale, initial_state, segments, chunk_size,
                mini_batch=None):
    """(gated_)delta_rule through the fused kernels, forward and backward; with `mini_batch` b,
    ttt_linear (beta = eta, no gate, no segments, chunk_size a multiple of b): the delta rule
    whose pairs inside one mini-batch are masked out of L.

    Args:
      q, k: [B, T, H, K]; v: [B, T, H, V]; g: [B, T, H] log-decay or None (delta_rule); beta:
        [B, T, H]; any T (a ragged last chunk is masked in the kernels); initial_state: f32 [B, H, K, V] or None; segments:
        `Segments` or None; mini_batch: None or b.

    Returns:
      (o [B, T, H, V] in v's dtype, final state f32 [B, H, K, V]).
    """
    ids = None if segments is None else segments.ids
    h0 = None if initial_state is None else initial_state.astype(F32)
    if mini_batch is not None and (g is not None or segments is not None or chunk_size % mini_batch):
        raise ValueError(f"fused_delta: mini_batch={mini_batch} takes no gate and no segments, "
                         f"and chunk_size={chunk_size} must be a multiple of it")
    return _delta(_backend.current(), float(scale), chunk_size, mini_batch, q, k, v, g, beta, h0,
                  ids)

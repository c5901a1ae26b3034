"""Pallas paths of the gated-linear family: linear_attention, simple_gla, gla and gsa.

Each op is plain-JAX glue (layout changes, the chunk-local cumsum of the log gates (stage 1),
segment masks, the gsa softmax) around two Pallas stages shared by the whole family:

    chunk_state.state_pass     stage 3: S_n = decay_n * S_{n-1} + kd_n^T vd_n, states per chunk
    chunk_output.output_stage  stages 2 + 4: o = carry * (q decayed) S_{n-1} + intra-chunk scores @ v

Both stages are `jax.custom_vjp`s with Pallas backward kernels, and the glue is differentiated by
JAX, so every op is differentiable in q, k, v, every gate and the initial state, including through
the final state. `gsa` is two GLA passes with a softmax over the M slots between: the first with
the gate on the value (slot) axis of a K x M state, the second with it on the key (slot) axis of an
M x V state.

Notation: B batch, T time (a multiple of C here: `pallas_kernels.ops` pads), H heads, K key dim,
V value dim, M gsa slots, C chunk size, N = T / C, G = B * H.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels.pallas import _backend, register
from pallas_kernels.pallas.chunk_output import output_stage
from pallas_kernels.pallas.chunk_state import state_pass

F32 = jnp.float32
_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))


def _chunked(x, C: int):
    """[B, T, H, ...] -> [B * H, N, C, ...] (dtype kept)."""
    B, T, H = x.shape[:3]
    x = jnp.moveaxis(x, 2, 1)
    return x.reshape(B * H, T // C, C, *x.shape[3:])


def _unchunked(x, B: int):
    """[B * H, N, C, D] -> [B, T, H, D]."""
    G, N, C = x.shape[:3]
    x = x.reshape(B, G // B, N * C, *x.shape[3:])
    return jnp.moveaxis(x, 1, 2)


class _Segments:
    """Segment masks from `segment_ids` [B, T], per chunk ([B, N, C] unless said otherwise).

    rid: int32 number of resets up to each position (resets happen where the id changes, so
      ids that repeat after a change still start a new segment); carry: the state entering the
      chunk reaches the position; last: the position reaches the chunk's final state;
      chunk_carry [B, N]: the state entering the chunk reaches its end.
    """

    def __init__(self, segment_ids, C: int, heads: int):
        B, T = segment_ids.shape
        change = (segment_ids[:, 1:] != segment_ids[:, :-1]).astype(jnp.int32)
        rid = jnp.concatenate([jnp.zeros((B, 1), jnp.int32), jnp.cumsum(change, axis=1)], axis=1)
        rid = rid.reshape(B, T // C, C)
        prev = jnp.concatenate([jnp.zeros((B, 1), jnp.int32), rid[:, :-1, -1]], axis=1)
        self.rid = rid
        self.carry = (rid == prev[..., None]).astype(F32)
        self.heads = heads
        self.last_g = jnp.repeat((rid == rid[:, :, -1:]).astype(F32), heads, axis=0)  # [G, N, C]
        self.chunk_carry_g = jnp.repeat(self.carry[:, :, -1], heads, axis=0)  # [G, N]


def gated_scan(q, k, v, gate, kind: str, *, h0, segments: _Segments | None, heads: int):
    """One chunked gated-linear-attention pass on chunk-major inputs.

    Args:
      q, k: [G, N, C, K] (q already scaled); v: [G, N, C, V]; gate: log gates, float, per `kind`:
        "none" (None), "scalar" [G, N, C], "key" [G, N, C, K], "value" [G, N, C, V];
      h0: float32 [G, K, V] or None; segments: masks or None; heads: H (G = B * H).

    Returns:
      (o float32 [G, N, C, V], final state float32 [G, K, V]).
    """
    last = None if segments is None else segments.last_g
    cc = None if segments is None else segments.chunk_carry_g
    K = k.shape[-1]
    G, N = k.shape[:2]
    kd, vd, decay_k, decay_v, b = k, v, None, None, None
    if kind == "none":
        if segments is not None:
            kd = (k * last[..., None]).astype(k.dtype)
            decay_k = jnp.broadcast_to(cc[..., None], (G, N, K))
    else:
        b = jnp.cumsum(gate.astype(F32), axis=2)  # stage 1: chunk-local cumulative log gates
        b_end = b[:, :, -1]
        total = jnp.exp(b_end) if cc is None else jnp.exp(b_end) * (cc if kind == "scalar" else cc[..., None])
        if kind == "scalar":
            to_end = jnp.exp(b_end[..., None] - b)
            if last is not None:
                to_end = to_end * last
            kd = (k * to_end[..., None]).astype(k.dtype)
            decay_k = jnp.broadcast_to(total[..., None], (G, N, K))
        elif kind == "key":
            to_end = jnp.exp(b_end[:, :, None] - b)
            if last is not None:
                to_end = to_end * last[..., None]
            kd = (k * to_end).astype(k.dtype)
            decay_k = total
        elif kind == "value":
            if last is not None:
                kd = (k * last[..., None]).astype(k.dtype)
            vd = (v * jnp.exp(b_end[:, :, None] - b)).astype(v.dtype)
            decay_v = total
        else:
            raise ValueError(f"kind must be none|scalar|key|value, got {kind!r}")
    states, h_final, _ = state_pass(kd, vd, decay_k=decay_k, decay_v=decay_v, h0=h0)
    segs = None if segments is None else (segments.rid, segments.carry)
    mode = {"none": "scalar", "scalar": "scalar", "key": "key", "value": "value"}[kind]
    o = output_stage(q, k, v, states, b, segs, mode=mode, heads=heads)
    return o, h_final


def _prep(q, scale, C):
    qs = (q.astype(F32) * scale).astype(q.dtype)
    return _chunked(qs, C)


def _state_in(x, G):
    return None if x is None else x.astype(F32).reshape(G, *x.shape[2:])


def _check(op, q, k, v, gates, chunk_size):
    reason = supports_reason(op, q, k, v, *gates, chunk_size=chunk_size)
    if reason is not None:
        raise ValueError(f"impl='pallas' cannot run {op} here: {reason}")


def _gla_like(op, kind, q, k, v, g, *, scale, initial_state, segment_ids, chunk_size):
    _check(op, q, k, v, () if g is None else (g,), chunk_size)
    B, T, H, K = q.shape
    V = v.shape[-1]
    C = chunk_size
    segs = None if segment_ids is None else _Segments(segment_ids, C, H)
    gate = None if g is None else _chunked(g, C)
    o, hT = gated_scan(_prep(q, scale, C), _chunked(k, C), _chunked(v, C), gate, kind,
                       h0=_state_in(initial_state, B * H), segments=segs, heads=H)
    return _unchunked(o, B), hT.reshape(B, H, K, V)


def linear_attention(q, k, v, *, scale, initial_state=None, segment_ids=None, chunk_size=64,
                     output_final_state=False):
    """Padded problem: q, k [B, T, H, K], v [B, T, H, V] -> (o f32 [B, T, H, V], state [B, H, K, V])."""
    del output_final_state
    return _gla_like("linear_attention", "none", q, k, v, None, scale=scale,
                     initial_state=initial_state, segment_ids=segment_ids, chunk_size=chunk_size)


def simple_gla(q, k, v, g, *, scale, initial_state=None, segment_ids=None, chunk_size=64,
               output_final_state=False):
    """Padded problem; g [B, T, H] -> (o f32 [B, T, H, V], state [B, H, K, V])."""
    del output_final_state
    return _gla_like("simple_gla", "scalar", q, k, v, g, scale=scale,
                     initial_state=initial_state, segment_ids=segment_ids, chunk_size=chunk_size)


def gla(q, k, v, g, *, scale, initial_state=None, segment_ids=None, chunk_size=64,
        output_final_state=False):
    """Padded problem; g [B, T, H, K] -> (o f32 [B, T, H, V], state [B, H, K, V])."""
    del output_final_state
    return _gla_like("gla", "key", q, k, v, g, scale=scale,
                     initial_state=initial_state, segment_ids=segment_ids, chunk_size=chunk_size)


def gsa(q, k, v, s, g, *, scale, initial_state=None, segment_ids=None, chunk_size=64,
        output_final_state=False):
    """Padded problem; s, g [B, T, H, M] -> (o f32 [B, T, H, V], ([B, H, K, M], [B, H, M, V]))."""
    del output_final_state
    _check("gsa", q, k, v, (s, g), chunk_size)
    B, T, H, K = q.shape
    V, M = v.shape[-1], s.shape[-1]
    C = chunk_size
    G = B * H
    segs = None if segment_ids is None else _Segments(segment_ids, C, H)
    A0, B0 = (None, None) if initial_state is None else initial_state
    sc, gc = _chunked(s, C), _chunked(g, C)
    # Pass 1: A_t = A_{t-1} diag(exp g_t) + k_t s_t^T (gate on the value axis), scores A_t^T q_t.
    scores, AT = gated_scan(_prep(q, scale, C), _chunked(k, C), sc, gc, "value",
                            h0=_state_in(A0, G), segments=segs, heads=H)
    p = jax.nn.softmax(scores, axis=-1).astype(sc.dtype)
    # Pass 2: B_t = diag(exp g_t) B_{t-1} + s_t v_t^T (gate on the key axis), o_t = B_t^T p_t.
    o, BT = gated_scan(p, sc, _chunked(v, C), gc, "key", h0=_state_in(B0, G), segments=segs,
                       heads=H)
    return _unchunked(o, B), (AT.reshape(B, H, K, M), BT.reshape(B, H, M, V))


def supports_reason(op, q, k, v, *gates, chunk_size: int) -> str | None:
    """None when the Pallas kernels of the current flavour handle the call, else the reason."""
    backend = _backend.current()
    dims = {"K": q.shape[-1], "V": v.shape[-1]}
    if op == "gsa":
        dims["M"] = gates[0].shape[-1]
    for name, x in (("q", q), ("k", k), ("v", v)) + tuple((f"gate{i}", x) for i, x in enumerate(gates)):
        if jnp.dtype(x.dtype) not in _DTYPES:
            return f"{name} has dtype {x.dtype}; the kernels take float32 or bfloat16"
    for name, d in dims.items():
        if d > 256:
            return f"head dim {name}={d} > 256 does not fit the state in VMEM/registers"
    if backend.kind == "triton":
        for name, d in dims.items():
            if d < 16 or d & (d - 1):
                return f"Triton kernels need power-of-two head dims >= 16, got {name}={d}"
            if d > 128:
                # The reverse state pass holds the whole K x V state of a head in registers.
                return f"Triton kernels take head dims <= 128, got {name}={d}"
        if chunk_size < 16 or chunk_size > 128:
            return f"Triton kernels need 16 <= chunk_size <= 128, got {chunk_size}"
    else:
        if chunk_size < 8 or chunk_size > 256:
            return f"TPU kernels need 8 <= chunk_size <= 256, got {chunk_size}"
    return None


def _supports(op):
    def fn(q, k, v, *gates, chunk_size):
        return supports_reason(op, q, k, v, *gates, chunk_size=chunk_size)

    return fn


for _name, _fn in (("linear_attention", linear_attention), ("simple_gla", simple_gla),
                   ("gla", gla), ("gsa", gsa)):
    register(_name, _fn, _supports(_name))

"""The six public ops: validation, padding, dispatch to reference / xla / pallas.

Notation (used in every docstring of this package):
    B batch, T time, H heads, K key/query head dim, V value head dim, M gsa slots,
    C chunk size, N = ceil(T / C) chunks.
Layout is [B, T, H, D]. Gates are log-decays (g <= 0); the ops apply no activation to them.
"""

from __future__ import annotations

import functools
import inspect

import jax
import jax.numpy as jnp

from pallas_kernels import _validate
from pallas_kernels import pallas as _pallas
from pallas_kernels.chunking import Segments, on_whole_chunks
from pallas_kernels.spec import OP_SPECS

_STATIC = ("scale", "output_final_state", "chunk_size", "impl", "sharding", "mini_batch_size")


def resolve_impl(op: str, impl: str, q, k, v, gates, chunk_size: int, platform: str | None = None) -> str:
    """The path `impl` stands for on `platform` (default: this host's): "auto" becomes "pallas"
    on TPU/GPU when a kernel supports the call, else "xla"."""
    _validate.check_impl(impl)
    if impl != "auto":
        return impl
    if (platform or jax.default_backend()) in ("tpu", "gpu"):
        if _pallas.get(op).supports(q, k, v, *gates, chunk_size=chunk_size) is None:
            return "pallas"
    return "xla"


def _run(op, q, k, v, gates, *, scale, initial_state, output_final_state, segment_ids, chunk_size, impl,
         sharding=None, options=None):
    """The body of every public op: `op` (a key of `spec.OP_SPECS`) on q, k, v and the tuple of
    gates, with the public keywords. With `sharding=None` it runs one op on local, unsharded
    arrays (validation, `Segments.build`, time padding, the path's function); `sharding.run`
    calls it that way once per shard, with `impl` already resolved. Returns (o in v's dtype,
    float32 final state or None). `options`: the op's own static keywords (`OpSpec.options`),
    passed to every path."""
    options = dict(options or {})
    if sharding is not None and options:
        raise ValueError(f"{op} has no sharded path yet (sharding={sharding!r}); call it without "
                         "`sharding` (its xla path partitions under jit like any XLA code)")
    if sharding is not None:  # shard_map over the mesh (and LASP-2 over T): pallas_kernels.sharding
        from pallas_kernels import sharding as _sharding

        return _sharding.run(op, q, k, v, gates, scale=scale, initial_state=initial_state,
                             output_final_state=output_final_state, segment_ids=segment_ids,
                             chunk_size=chunk_size, impl=impl, sharding=sharding)
    _, T, _, K, _, _ = _validate.validate(
        op, q, k, v, gates, scale=scale, initial_state=initial_state, segment_ids=segment_ids,
        chunk_size=chunk_size, impl=impl,
    )
    scale = float(K**-0.5 if scale is None else scale)
    path = resolve_impl(op, impl, q, k, v, gates, chunk_size)
    spec = OP_SPECS[op]
    if initial_state is not None:
        initial_state = jax.tree.map(lambda s: s.astype(jnp.float32), initial_state)
    segments = Segments.build(segment_ids)  # the one encoding every path reads
    if path == "pallas":  # a kernel covering part of the op (Kernel.takes): auto falls back
        reason = _pallas.get(op).takes(segments, chunk_size, **options)
        if reason is not None:
            if impl == "pallas":
                raise ValueError(f"impl='pallas' cannot run {op} here: {reason}")
            path = "xla"
    if path == "reference":
        o, state = spec.reference(q, k, v, *gates, scale=scale, initial_state=initial_state,
                                  segments=segments, **options)
    elif path == "pallas":  # it pads T itself where its kernels need whole chunks (Kernel.fn)
        o, state = _pallas.get(op).fn(q, k, v, *gates, scale=scale, initial_state=initial_state,
                                      segments=segments, chunk_size=chunk_size, **options)
    else:
        o, state = on_whole_chunks(spec.xla, chunk_size, q, k, v, gates,
                                   [g.timed for g in spec.gates], scale=scale,
                                   initial_state=initial_state, segments=segments, **options)
    o = o.astype(v.dtype)
    return o, (state if output_final_state else None)


_COMMON_DOC = """
    Args (shared by every op):
      q: [B, T, H, K] queries; multiplied by `scale` (default K ** -0.5).
      k: [B, T, H, K] keys.
      v: [B, T, H, V] values; the output has v's dtype.
      initial_state: float32 state at t = 0 of each row (see the table in README.md), or None.
      output_final_state: return the float32 state after the last position of each row.
      segment_ids: int32 [B, T]; the state is reset to zero before every t where the id changes.
      chunk_size: chunk length C of the chunked paths (a power of two); T need not divide by it.
      impl: "auto" | "reference" | "xla" | "pallas".
      sharding: a `pallas_kernels.OpSharding` (mesh axes splitting B, H, T): the op runs inside
        `jax.shard_map`, with LASP-2 over T; see `pallas_kernels.sharding`. None: no mesh.

    Returns:
      (o [B, T, H, V], final_state or None).
"""


def _op(name: str, doc: str):
    def deco(fn):
        fn.__doc__ = doc + _COMMON_DOC
        params = inspect.signature(fn).parameters
        return functools.partial(jax.jit, static_argnames=[n for n in _STATIC if n in params])(fn)

    return deco


@_op("linear_attention", """Linear attention: S_t = S_{t-1} + k_t v_t^T, o_t = S_t^T (scale q_t).

    State [B, H, K, V].
    Example:
      >>> o, s = linear_attention(q, k, v, output_final_state=True)
""")
def linear_attention(q, k, v, *, scale=None, initial_state=None, output_final_state=False,
                     segment_ids=None, chunk_size=64, impl="auto", sharding=None):
    return _run("linear_attention", q, k, v, (), scale=scale, initial_state=initial_state,
                output_final_state=output_final_state, segment_ids=segment_ids,
                chunk_size=chunk_size, impl=impl, sharding=sharding)


@_op("simple_gla", """Scalar-gated linear attention (RetNet, Mamba2/SSD, Lightning):
    S_t = exp(g_t) S_{t-1} + k_t v_t^T, o_t = S_t^T (scale q_t).

    g: [B, T, H] log-decay per head (<= 0). State [B, H, K, V].
""")
def simple_gla(q, k, v, g, *, scale=None, initial_state=None, output_final_state=False,
               segment_ids=None, chunk_size=64, impl="auto", sharding=None):
    return _run("simple_gla", q, k, v, (g,), scale=scale, initial_state=initial_state,
                output_final_state=output_final_state, segment_ids=segment_ids,
                chunk_size=chunk_size, impl=impl, sharding=sharding)


@_op("gla", """Gated linear attention: S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T, o_t = S_t^T (scale q_t).

    g: [B, T, H, K] log-decay per key channel (<= 0). State [B, H, K, V].
""")
def gla(q, k, v, g, *, scale=None, initial_state=None, output_final_state=False,
        segment_ids=None, chunk_size=64, impl="auto", sharding=None):
    return _run("gla", q, k, v, (g,), scale=scale, initial_state=initial_state,
                output_final_state=output_final_state, segment_ids=segment_ids,
                chunk_size=chunk_size, impl=impl, sharding=sharding)


@_op("delta_rule", """DeltaNet: S_t = (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T, o_t = S_t^T (scale q_t).

    beta: [B, T, H] write strength in (0, 1]. State [B, H, K, V].
""")
def delta_rule(q, k, v, beta, *, scale=None, initial_state=None, output_final_state=False,
               segment_ids=None, chunk_size=64, impl="auto", sharding=None):
    return _run("delta_rule", q, k, v, (beta,), scale=scale, initial_state=initial_state,
                output_final_state=output_final_state, segment_ids=segment_ids,
                chunk_size=chunk_size, impl=impl, sharding=sharding)


@_op("gated_delta_rule", """Gated DeltaNet:
    S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T, o_t = S_t^T (scale q_t).

    g: [B, T, H] log-decay per head (<= 0); beta: [B, T, H] write strength. State [B, H, K, V].
""")
def gated_delta_rule(q, k, v, g, beta, *, scale=None, initial_state=None, output_final_state=False,
                     segment_ids=None, chunk_size=64, impl="auto", sharding=None):
    return _run("gated_delta_rule", q, k, v, (g, beta), scale=scale, initial_state=initial_state,
                output_final_state=output_final_state, segment_ids=segment_ids,
                chunk_size=chunk_size, impl=impl, sharding=sharding)


@_op("gsa", """Gated slot attention: two GLA passes with a softmax over M slots between.
    A_t = A_{t-1} diag(exp(g_t)) + k_t s_t^T      (A: K x M)
    B_t = diag(exp(g_t)) B_{t-1} + s_t v_t^T      (B: M x V)
    p_t = softmax(A_t^T (scale q_t)),  o_t = B_t^T p_t

    s: [B, T, H, M] slot write weights; g: [B, T, H, M] log-forget (<= 0).
    State: a tuple ([B, H, K, M], [B, H, M, V]).
""")
def gsa(q, k, v, s, g, *, scale=None, initial_state=None, output_final_state=False,
        segment_ids=None, chunk_size=64, impl="auto", sharding=None):
    return _run("gsa", q, k, v, (s, g), scale=scale, initial_state=initial_state,
                output_final_state=output_final_state, segment_ids=segment_ids,
                chunk_size=chunk_size, impl=impl, sharding=sharding)


@_op("selective_scan", """Mamba's selective SSM (Gu & Dao 2023), per head h, state index n and channel p:
    S_t[n, p] = exp(dt_t[p] A[p, n]) S_{t-1}[n, p] + k_t[n] dt_t[p] v_t[p],
    o_t[p] = sum_n scale q_t[n] S_t[n, p]
    (q = Mamba's C_t, k = B_t, v = x_t; its D x_t skip term belongs to the layer).

    dt: [B, T, H, V] step sizes (> 0, per channel); A: [H, V, K] rates (< 0, not per token).
    State [B, H, K, V]. No Pallas kernel (see `pallas_kernels.selective`); `sharding` is not
    supported (the xla path partitions under jit).
""")
def selective_scan(q, k, v, dt, A, *, scale=None, initial_state=None, output_final_state=False,
                   segment_ids=None, chunk_size=64, impl="auto", sharding=None):
    if sharding is not None:
        raise ValueError("selective_scan has no sharded path yet; call it without `sharding` "
                         "(its xla path partitions under jit like any XLA code)")
    return _run("selective_scan", q, k, v, (dt, A), scale=scale, initial_state=initial_state,
                output_final_state=output_final_state, segment_ids=segment_ids,
                chunk_size=chunk_size, impl=impl)


@_op("ttt_linear", """TTT-Linear (Sun et al. 2024): W is trained by one gradient step per
    mini-batch of `mini_batch_size` tokens (counted from each segment's start) on
    sum_t eta_t ||W^T k_t - v_t||^2 / 2, every gradient at the mini-batch's starting W^(m):
    W_t = W_{t-1} + eta_t k_t (v_t - W^(m)^T k_t)^T,  o_t = W_t^T (scale q_t).

    eta: [B, T, H] inner learning rates (>= 0). mini_batch_size: b (any positive int,
    independent of chunk_size). State W [B, H, K, V]; t = 0 starts a mini-batch, and the final
    state applies a trailing partial mini-batch as a whole one (see `pallas_kernels.ttt`).
""")
def ttt_linear(q, k, v, eta, *, mini_batch_size=16, scale=None, initial_state=None,
               output_final_state=False, segment_ids=None, chunk_size=64, impl="auto",
               sharding=None):
    from pallas_kernels.ttt import check_mini_batch_size

    check_mini_batch_size(mini_batch_size)
    return _run("ttt_linear", q, k, v, (eta,), scale=scale, initial_state=initial_state,
                output_final_state=output_final_state, segment_ids=segment_ids,
                chunk_size=chunk_size, impl=impl, sharding=sharding,
                options={"mini_batch_size": mini_batch_size})

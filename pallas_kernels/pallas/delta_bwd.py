"""Backward stages of the chunked delta rule that the gated-linear stages do not cover.

Notation: B batch, H heads, T = N C time, C chunk size, K key dim, V value dim; layout [B, H, T, D].
Per chunk n (rows i, j inside the chunk), with the masks and decays of `wy.chunk_masks` plus
`to_end_i` (decay from i to the chunk end, 0 before a reset in the chunk) and `dec` (decay over the
whole chunk, 0 if it holds a reset):

    forward   v_new = U - W S_{n-1}
              o     = (qs gamma) S_{n-1} + P v_new,           P = (qs K^T) * Gamma (diagonal included)
              S_n   = dec S_{n-1} + (K to_end)^T v_new

1. `reverse_state_pass` (sequential over chunks, parallel over B, H and value tiles): from dS_N,
       dv_new = P^T do + (K to_end) dS_n
       dS_{n-1} = dec dS_n + (qs gamma)^T do - W^T dv_new
   emitting dS_n per chunk, dv_new (= dU) and dS_0 (the gradient of the initial state). The
   -W^T dv_new term is what the gated-linear reverse pass lacks; without it (w = 0) this is the
   simple-GLA reverse pass with dv_new as its dv.
2. `chunk_grads` (parallel over chunks): dqs, dk, dw = -dv_new S_{n-1}^T and the gradient of the
   chunk-local cumulative log-gate, from S_{n-1}, dS_n, v_new and do.

Backends as in `wy`: "tpu" runs the reverse pass over a grid (B, H, V / bv, N) with the chunk axis
"arbitrary" (index maps walk it backwards) and dS in VMEM scratch; "triton" runs a grid
(B, H, V / bv) and loops over the chunks inside the kernel.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.pallas import _backend
from pallas_kernels.pallas.wy import chunk_masks, dot, params, resolve


def chunk_end(gc, r):
    """In-kernel: (to_end (C, 1), dec (1, 1), is_last (C, 1)) of one chunk from gc, r (C, 1)."""
    c = gc.shape[0]
    is_last = lax.broadcasted_iota(jnp.int32, (c, 1), 0) == c - 1
    gc_last = jnp.sum(jnp.where(is_last, gc, 0.0), axis=0, keepdims=True)
    r_last = jnp.sum(jnp.where(is_last, r, 0.0), axis=0, keepdims=True)
    same_end = r == r_last
    to_end = jnp.where(same_end, jnp.exp(jnp.where(same_end, gc_last - gc, 0.0)), 0.0)
    dec = jnp.where(r_last == 0.0, jnp.exp(gc_last), 0.0)
    return to_end, dec, is_last


def _reverse_step(qs, k, w, do, gc, r, ds):
    """One chunk of the reverse pass: (dv_new (C, bv), dS_{n-1} (K, bv)) from dS_n = ds."""
    _, _, _, _, _, gam, gamma = chunk_masks(gc, r)
    to_end, dec, _ = chunk_end(gc, r)
    p = dot(qs, k, trans_b=True) * gam
    dvn = dot(p, do, trans_a=True) + dot(k * to_end, ds)
    ds_prev = dec * ds + dot(qs * gamma, do, trans_a=True) - dot(w, dvn, trans_a=True)
    return dvn, ds_prev


def _rev_kernel_tpu(qs_ref, k_ref, w_ref, do_ref, gc_ref, r_ref, dsn_ref,
                    dsc_ref, dvn_ref, ds0_ref, ds_scr):
    n = pl.program_id(3)

    @pl.when(n == 0)
    def _():
        ds_scr[...] = dsn_ref[...].astype(jnp.float32)

    ds = ds_scr[...]
    dvn, ds_prev = _reverse_step(
        qs_ref[...].astype(jnp.float32), k_ref[...].astype(jnp.float32),
        w_ref[...].astype(jnp.float32), do_ref[...].astype(jnp.float32),
        gc_ref[...], r_ref[...], ds,
    )
    dsc_ref[...] = ds
    dvn_ref[...] = dvn
    ds_scr[...] = ds_prev

    @pl.when(n == pl.num_programs(3) - 1)
    def _():
        ds0_ref[...] = ds_prev


def _rev_kernel_triton(qs_ref, k_ref, w_ref, do_ref, gc_ref, r_ref, dsn_ref,
                       dsc_ref, dvn_ref, ds0_ref, *, chunk_size: int, n_chunks: int):
    C = chunk_size

    def body(i, ds):
        n = n_chunks - 1 - i
        rows = pl.ds(pl.multiple_of(n * C, C), C)
        dvn, ds_prev = _reverse_step(
            qs_ref[rows, :].astype(jnp.float32), k_ref[rows, :].astype(jnp.float32),
            w_ref[rows, :].astype(jnp.float32), do_ref[rows, :].astype(jnp.float32),
            gc_ref[rows, :], r_ref[rows, :], ds,
        )
        dsc_ref[n] = ds
        dvn_ref[rows, :] = dvn
        return ds_prev

    ds0_ref[...] = lax.fori_loop(0, n_chunks, body, dsn_ref[...].astype(jnp.float32))


def _block_v(backend: _backend.Backend, V: int) -> int:
    if backend.kind == "tpu":
        return 128 if V % 128 == 0 else V
    return min(V, 64)


@functools.partial(jax.jit, static_argnames=("chunk_size", "backend"))
def reverse_state_pass(qs, k, w, do, gc, r, ds_n, *, chunk_size: int,
                       backend: _backend.Backend | None = None):
    """Reverse state pass of the (gated) delta rule.

    Args:
      qs, k, w: [B, H, T, K] (qs = scale * q); do: [B, H, T, V]; gc: [B, H, T] chunk-local
        cumulative log-gate; r: [B, T] chunk-local reset counts (see `wy`); ds_n: [B, H, K, V]
        float32 gradient of the final state.
    Returns:
      ds_chunks [B, H, N, K, V] (gradient of S_n, the state after chunk n), dv_new [B, H, T, V]
      and ds_0 [B, H, K, V] (gradient of the initial state), all float32.
    """
    backend = resolve(backend)
    B, H, T, K = qs.shape
    V = do.shape[-1]
    C = chunk_size
    N = T // C
    bv = _block_v(backend, V)
    f32 = jnp.float32
    out_shape = (
        jax.ShapeDtypeStruct((B, H, N, K, V), f32),
        jax.ShapeDtypeStruct((B, H, T, V), f32),
        jax.ShapeDtypeStruct((B, H, K, V), f32),
    )
    gcc = gc.astype(f32)[..., None]
    rc = r.astype(f32)[..., None]
    args = (qs, k, w, do, gcc, rc, ds_n.astype(f32))
    if backend.kind == "tpu":
        rev = lambda n: N - 1 - n  # noqa: E731
        in_specs = [
            pl.BlockSpec((None, None, C, K), lambda b, h, j, n: (b, h, rev(n), 0)),
            pl.BlockSpec((None, None, C, K), lambda b, h, j, n: (b, h, rev(n), 0)),
            pl.BlockSpec((None, None, C, K), lambda b, h, j, n: (b, h, rev(n), 0)),
            pl.BlockSpec((None, None, C, bv), lambda b, h, j, n: (b, h, rev(n), j)),
            pl.BlockSpec((None, None, C, 1), lambda b, h, j, n: (b, h, rev(n), 0)),
            pl.BlockSpec((None, C, 1), lambda b, h, j, n: (b, rev(n), 0)),
            pl.BlockSpec((None, None, K, bv), lambda b, h, j, n: (b, h, 0, j)),
        ]
        out_specs = [
            pl.BlockSpec((None, None, None, K, bv), lambda b, h, j, n: (b, h, rev(n), 0, j)),
            pl.BlockSpec((None, None, C, bv), lambda b, h, j, n: (b, h, rev(n), j)),
            pl.BlockSpec((None, None, K, bv), lambda b, h, j, n: (b, h, 0, j)),
        ]
        return pl.pallas_call(
            _rev_kernel_tpu,
            grid=(B, H, V // bv, N),
            in_specs=in_specs,
            out_specs=out_specs,
            out_shape=out_shape,
            scratch_shapes=[pltpu.VMEM((K, bv), f32)],
            compiler_params=params(backend, 3, 1),
            interpret=backend.interpret,
            name="delta_reverse_state_pass",
        )(*args)
    in_specs = [
        pl.BlockSpec((None, None, T, K), lambda b, h, j: (b, h, 0, 0)),
        pl.BlockSpec((None, None, T, K), lambda b, h, j: (b, h, 0, 0)),
        pl.BlockSpec((None, None, T, K), lambda b, h, j: (b, h, 0, 0)),
        pl.BlockSpec((None, None, T, bv), lambda b, h, j: (b, h, 0, j)),
        pl.BlockSpec((None, None, T, 1), lambda b, h, j: (b, h, 0, 0)),
        pl.BlockSpec((None, T, 1), lambda b, h, j: (b, 0, 0)),
        pl.BlockSpec((None, None, K, bv), lambda b, h, j: (b, h, 0, j)),
    ]
    out_specs = [
        pl.BlockSpec((None, None, N, K, bv), lambda b, h, j: (b, h, 0, 0, j)),
        pl.BlockSpec((None, None, T, bv), lambda b, h, j: (b, h, 0, j)),
        pl.BlockSpec((None, None, K, bv), lambda b, h, j: (b, h, 0, j)),
    ]
    return pl.pallas_call(
        functools.partial(_rev_kernel_triton, chunk_size=C, n_chunks=N),
        grid=(B, H, V // bv),
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=out_shape,
        compiler_params=params(backend, 3),
        interpret=backend.interpret,
        name="delta_reverse_state_pass",
    )(*args)


def _grads_kernel(qs_ref, k_ref, vn_ref, do_ref, dvn_ref, s_ref, dsn_ref, gc_ref, r_ref,
                  dqs_ref, dk_ref, dw_ref, dgc_ref):
    f32 = jnp.float32
    qs = qs_ref[...].astype(f32)
    k = k_ref[...].astype(f32)
    vn = vn_ref[...].astype(f32)
    do = do_ref[...].astype(f32)
    dvn = dvn_ref[...].astype(f32)
    s = s_ref[...].astype(f32)
    dsn = dsn_ref[...].astype(f32)
    gc = gc_ref[...]
    r = r_ref[...]
    _, _, eye, _, _, gam, gamma = chunk_masks(gc, r)
    to_end, dec, is_last = chunk_end(gc, r)
    dpg = dot(do, vn, trans_b=True) * gam          # dP * Gamma
    dqg = dot(do, s, trans_b=True)                 # d(qs gamma)
    dkd = dot(vn, dsn, trans_b=True)               # d(K to_end)
    dqs_ref[...] = dot(dpg, k) + gamma * dqg
    dk_ref[...] = dot(dpg, qs, trans_a=True) + to_end * dkd
    dw_ref[...] = -dot(dvn, s, trans_b=True)
    r1 = dpg * dot(qs, k, trans_b=True)            # dP * P: d/dgc through Gamma
    kd_term = to_end * jnp.sum(dkd * k, axis=1, keepdims=True)
    end_total = (jnp.sum(kd_term, axis=0, keepdims=True)
                 + dec * jnp.sum(jnp.sum(dsn * s, axis=1, keepdims=True), axis=0, keepdims=True))
    dgc = (jnp.sum(r1, axis=1, keepdims=True)
           - jnp.sum(jnp.where(eye, jnp.sum(r1, axis=0, keepdims=True), 0.0), axis=1, keepdims=True)
           + gamma * jnp.sum(dqg * qs, axis=1, keepdims=True) - kd_term
           + jnp.where(is_last, end_total, 0.0))
    dgc_ref[...] = dgc


@functools.partial(jax.jit, static_argnames=("chunk_size", "backend"))
def chunk_grads(qs, k, v_new, do, dv_new, states, ds_chunks, gc, r, *, chunk_size: int,
                backend: _backend.Backend | None = None):
    """Per-chunk gradients of the output and state-update terms.

    Args:
      qs, k: [B, H, T, K]; v_new, do, dv_new: [B, H, T, V]; states: [B, H, N, K, V] (S_{n-1});
      ds_chunks: [B, H, N, K, V] (gradient of S_n); gc: [B, H, T]; r: [B, T].
    Returns:
      dqs, dk, dw [B, H, T, K] and dgc [B, H, T] (gradient of the chunk-local cumulative
      log-gate), float32. dk excludes the WY stage's share.
    """
    backend = resolve(backend)
    B, H, T, K = qs.shape
    V = v_new.shape[-1]
    C = chunk_size
    N = T // C
    f32 = jnp.float32
    row = lambda d: pl.BlockSpec((None, None, C, d), lambda b, h, n: (b, h, n, 0))  # noqa: E731
    state = pl.BlockSpec((None, None, None, K, V), lambda b, h, n: (b, h, n, 0, 0))
    out_shape = (
        jax.ShapeDtypeStruct((B, H, T, K), f32),
        jax.ShapeDtypeStruct((B, H, T, K), f32),
        jax.ShapeDtypeStruct((B, H, T, K), f32),
        jax.ShapeDtypeStruct((B, H, T, 1), f32),
    )
    dqs, dk, dw, dgc = pl.pallas_call(
        _grads_kernel,
        grid=(B, H, N),
        in_specs=[row(K), row(K), row(V), row(V), row(V), state, state, row(1),
                  pl.BlockSpec((None, C, 1), lambda b, h, n: (b, n, 0))],
        out_specs=[row(K), row(K), row(K), row(1)],
        out_shape=out_shape,
        compiler_params=params(backend, 3),
        interpret=backend.interpret,
        name="delta_chunk_grads",
    )(qs, k, v_new, do, dv_new, states, ds_chunks, gc.astype(f32)[..., None],
      r.astype(f32)[..., None])
    return dqs, dk, dw, dgc[..., 0]


def forward_reference(qs, k, w, u, gc, r, s0, *, chunk_size: int):
    """Plain JAX: the stages after WY, for tests. Same layout as above; s0 [B, H, K, V].

    Returns (o [B, H, T, V], S_N [B, H, K, V], states [B, H, N, K, V] = S_{n-1}, v_new [B, H, T, V]).
    """
    B, H, T, K = qs.shape
    V = u.shape[-1]
    C = chunk_size
    N = T // C
    f32 = jnp.float32
    hi = lax.Precision.HIGHEST
    ch = lambda x: x.astype(f32).reshape(B, H, N, C, -1)  # noqa: E731
    qc, kc, wc, uc, gcc = ch(qs), ch(k), ch(w), ch(u), ch(gc[..., None])
    rc = r.astype(f32).reshape(B, 1, N, C, 1)
    i = jnp.arange(C)
    same = rc == jnp.swapaxes(rc, -1, -2)
    incl = jnp.logical_and(i[:, None] >= i[None, :], same)
    gam = jnp.where(incl, jnp.exp(jnp.where(incl, gcc - jnp.swapaxes(gcc, -1, -2), 0.0)), 0.0)
    gamma = jnp.where(rc == 0, jnp.exp(gcc), 0.0)
    same_end = rc == rc[..., -1:, :]
    to_end = jnp.where(same_end, jnp.exp(jnp.where(same_end, gcc[..., -1:, :] - gcc, 0.0)), 0.0)
    dec = jnp.where(rc[..., -1, 0] == 0, jnp.exp(gcc[..., -1, 0]), 0.0)  # [B, H, N]
    p = jnp.einsum("bhnik,bhnjk->bhnij", qc, kc, precision=hi) * gam
    mv = lambda a, b: jnp.einsum("bhck,bhkv->bhcv", a, b, precision=hi)  # noqa: E731

    def step(s, x):
        qn, kn, wn, un, pn, gn, en, dn = x
        vn = un - mv(wn, s)
        o = mv(qn * gn, s) + jnp.einsum("bhij,bhjv->bhiv", pn, vn, precision=hi)
        s_next = dn[..., None, None] * s + jnp.einsum("bhck,bhcv->bhkv", kn * en, vn, precision=hi)
        return s_next, (o, s, vn)

    xs = [jnp.moveaxis(x, 2, 0) for x in (qc, kc, wc, uc, p, gamma, to_end, dec)]
    s_n, (o, states, vn) = lax.scan(step, s0.astype(f32), xs)
    back = lambda x: jnp.moveaxis(x, 0, 2).reshape(B, H, T, -1)  # noqa: E731
    return back(o), s_n, jnp.moveaxis(states, 0, 2), back(vn)

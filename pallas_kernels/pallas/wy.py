"""WY stage of the chunked delta rule: the per-chunk triangular solve, forward and backward.

Notation: B batch, H heads, T time (a multiple of C), C chunk size, N = T / C chunks,
K key dim, V value dim. Layout of this stage is head-major, [B, H, T, D].

Per chunk (rows i, j index positions inside the chunk), with gc the chunk-local cumulative sum of
the log-gate (all zeros for the ungated delta rule) and r the chunk-local count of segment resets
at or before each position:

    same_ij  = [r_i == r_j]                    (no segment boundary between j and i)
    Gamma_ij = same_ij exp(gc_i - gc_j)        for i >= j, else 0
    gamma_i  = [r_i == 0] exp(gc_i)            (decay from the chunk start; 0 after a reset)
    L        = tril(diag(beta) (Gamma * K K^T), -1)
    A        = (I + L)^{-1}
    W        = A diag(beta gamma) K,           U = A diag(beta) V

so that the chunk's corrected values are V_new = U - W S_{n-1} (the delta rule's state pass).

A is computed by a blocked forward substitution: the 16 x 16 diagonal blocks of I + L are
inverted by column elimination (all diagonal blocks at once, 16 steps of C x C vector work),
then the block rows are merged by block forward substitution in Horner form,
Y <- D^{-1} - (D^{-1} E) Y (nb - 1 matrix products, nb = C / 16), which is exact because
D^{-1} E is strictly block-lower. The solve is float32 at full precision; the other products
take bf16/f16 operands when k and v are 16-bit (f32 accumulation), else full-precision f32.

The flavour is the ambient one (`_backend.current()` when the stage is traced): "tpu" (Mosaic)
or "triton" (GPU). Both run the same kernel bodies with grid (B, H, N), one chunk per program; on
CPU both run in interpret mode. `wy_factors` is the stage as a `jax.custom_vjp` (the delta-rule
ops call it); `wy_fwd` / `wy_bwd` are its two halves, `wy_reference` the plain-JAX check.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels.pallas import _backend
from pallas_kernels.pallas._common import HIGHEST, compiler_params, compute_dtype, dot

_SOLVE_BLOCK = 16


# ----------------------------------------------------------------------------- in-kernel helpers


def _iota(c: int):
    rows = lax.broadcasted_iota(jnp.int32, (c, c), 0)
    cols = lax.broadcasted_iota(jnp.int32, (c, c), 1)
    return rows, cols


def _col_to_row(x, eye):
    """(C, 1) -> (1, C) without a transpose op (portable to Mosaic and Triton)."""
    return jnp.sum(jnp.where(eye, x, 0.0), axis=0, keepdims=True)


def _row_to_col(x, eye):
    """(1, C) -> (C, 1)."""
    return jnp.sum(jnp.where(eye, x, 0.0), axis=1, keepdims=True)


def chunk_masks(gc, r):
    """In-kernel: masks and decays of one chunk from gc, r (C, 1) float32.

    Returns (rows, cols, eye, lower_same, incl_same, gam, gamma): `lower_same` strictly lower and
    same segment, `incl_same` lower including the diagonal and same segment, `gam` the (C, C)
    matrix Gamma (zero outside `incl_same`), `gamma` (C, 1) the decay from the chunk start.
    """
    c = gc.shape[0]
    rows, cols = _iota(c)
    eye = rows == cols
    gc_row = _col_to_row(gc, eye)
    r_row = _col_to_row(r, eye)
    same = r == r_row
    incl_same = jnp.logical_and(rows >= cols, same)
    lower_same = jnp.logical_and(rows > cols, same)
    gam = jnp.where(incl_same, jnp.exp(jnp.where(incl_same, gc - gc_row, 0.0)), 0.0)
    gamma = jnp.where(r == 0.0, jnp.exp(gc), 0.0)
    return rows, cols, eye, lower_same, incl_same, gam, gamma


def unit_lower_inverse(lmat, rows, cols):
    """In-kernel: (I + lmat)^{-1} for a strictly lower-triangular (C, C) float32 `lmat`."""
    c = lmat.shape[0]
    b = min(_SOLVE_BLOCK, c)
    shift = b.bit_length() - 1
    in_block = (rows >> shift) == (cols >> shift)
    row_in_block = jnp.bitwise_and(rows, b - 1)
    col_in_block = jnp.bitwise_and(cols, b - 1)
    l_diag = jnp.where(in_block, lmat, 0.0)
    # Column elimination inside all diagonal blocks at once: after step s, the rows below the s-th
    # pivot of every block have had that pivot's row subtracted. X stays block diagonal, so the
    # pivot rows of different blocks have disjoint column support and can be summed into one row.
    x = jnp.where(rows == cols, 1.0, 0.0).astype(jnp.float32)
    for s in range(b):
        col = jnp.sum(jnp.where(col_in_block == s, l_diag, 0.0), axis=1, keepdims=True)
        piv = jnp.sum(jnp.where(row_in_block == s, x, 0.0), axis=0, keepdims=True)
        x = x - jnp.where(in_block, col * piv, 0.0)
    nb = c // b
    if nb == 1:
        return x
    # Block forward substitution: Y = sum_m (-N)^m D^{-1}, N = D^{-1} E, in Horner form.
    n_mat = dot(x, jnp.where(in_block, 0.0, lmat))
    y = x
    for _ in range(nb - 1):
        y = x - dot(n_mat, y)
    return y


# ----------------------------------------------------------------------------- kernels


def _tiles(d: int, tile: int):
    """Static column slices covering a head dim d in tiles of `tile` (one slice if d <= tile or
    d is not a multiple of it)."""
    if d <= tile or d % tile:
        return [slice(0, d)]
    return [slice(i, i + tile) for i in range(0, d, tile)]


def _prologue(k_ref, v_ref, beta_ref, gc_ref, r_ref):
    """What both kernels read first: (compute dtype, K, V, beta (C, 1) f32, `chunk_masks`)."""
    f32 = jnp.float32
    gc, r = gc_ref[...].astype(f32), r_ref[...].astype(f32)
    return (compute_dtype(k_ref.dtype, v_ref.dtype), k_ref.shape[-1], v_ref.shape[-1],
            beta_ref[...].astype(f32), chunk_masks(gc, r))


def _wy_fwd_kernel(k_ref, v_ref, beta_ref, gc_ref, r_ref, w_ref, u_ref, a_ref, *, tile):
    # Head dims are walked in column tiles so that only (C, C) matrices and one (C, tile) slice
    # are live at a time (register pressure on GPUs, vreg pressure on TPUs).
    f32 = jnp.float32
    cdt, K, V, beta, (rows, cols, _, lower_same, _, gam, gamma) = _prologue(
        k_ref, v_ref, beta_ref, gc_ref, r_ref)
    kk = None
    for t in _tiles(K, tile):
        kt = k_ref[:, t]
        part = dot(kt, kt, trans_b=True, cdt=cdt)
        kk = part if kk is None else kk + part
    lmat = jnp.where(lower_same, beta * kk * gam, 0.0)
    a = unit_lower_inverse(lmat, rows, cols)
    a_ref[...] = a.astype(a_ref.dtype)
    bg = beta * gamma
    for t in _tiles(K, tile):
        w_ref[:, t] = dot(a, bg * k_ref[:, t].astype(f32), cdt=cdt).astype(w_ref.dtype)
    for t in _tiles(V, tile):
        u_ref[:, t] = dot(a, beta * v_ref[:, t].astype(f32), cdt=cdt).astype(u_ref.dtype)


def wy_grads(k_ref, v_ref, dw_ref, du_ref, beta, masks, a, kk, *, tile, cdt, store):
    """In-kernel backward of one chunk's W = A diag(beta gamma) K, U = A diag(beta) V.

    Args:
      k_ref [C, K], v_ref [C, V], dw_ref [C, K], du_ref [C, V]: refs, read in column tiles of
        `tile`; beta [C, 1] float32; masks: `chunk_masks`' tuple; a [C, C] float32 (A); kk
        [C, C] float32 (K K^T); cdt: matmul operand dtype; store(name, cols, x): receives the
        column tile `cols` of "dk" [C, K] and "dv" [C, V] (float32).

    Returns:
      (dbeta [C, 1], dgc [C, 1]) float32.
    """
    f32 = jnp.float32
    _, _, eye, lower_same, _, gam, gamma = masks
    K, V = k_ref.shape[-1], v_ref.shape[-1]
    bg = beta * gamma
    # W = A Kb, U = A Vb with Kb = diag(beta gamma) K, Vb = diag(beta) V:
    # dA = dW Kb^T + dU Vb^T, dKb = A^T dW, dVb = A^T dU.
    da = None
    for t in _tiles(K, tile):
        part = dot(dw_ref[:, t], bg * k_ref[:, t].astype(f32), trans_b=True, cdt=cdt)
        da = part if da is None else da + part
    for t in _tiles(V, tile):
        da = da + dot(du_ref[:, t], beta * v_ref[:, t].astype(f32), trans_b=True, cdt=cdt)
    # A = M^{-1}, M = I + L: dM = -A^T dA A^T; only the strictly lower (same segment) part of L
    # is live. L_ij = beta_i Gamma_ij (k_i . k_j).
    dm = -dot(dot(a, da, trans_a=True), a, trans_b=True)
    dl = jnp.where(lower_same, dm, 0.0)
    dl_gam = dl * gam
    dkk = beta * dl_gam                          # d(K K^T), strictly lower
    dbeta = jnp.sum(dl_gam * kk, axis=1, keepdims=True)
    # Gamma_ij = exp(gc_i - gc_j): dgc_i += sum_j R_ij, dgc_j -= sum_i R_ij with R = dL * L.
    rmat = dl * beta * kk * gam
    dgc = (jnp.sum(rmat, axis=1, keepdims=True)
           - _row_to_col(jnp.sum(rmat, axis=0, keepdims=True), eye))
    dkb_k = None
    for t in _tiles(K, tile):
        kt = k_ref[:, t].astype(f32)
        dkb = dot(a, dw_ref[:, t], trans_a=True, cdt=cdt)
        store("dk", t, dot(dkk, kt, cdt=cdt) + dot(dkk, kt, trans_a=True, cdt=cdt) + bg * dkb)
        part = jnp.sum(dkb * kt, axis=1, keepdims=True)
        dkb_k = part if dkb_k is None else dkb_k + part
    for t in _tiles(V, tile):
        dvb = dot(a, du_ref[:, t], trans_a=True, cdt=cdt)
        store("dv", t, beta * dvb)
        dbeta = dbeta + jnp.sum(dvb * v_ref[:, t].astype(f32), axis=1, keepdims=True)
    return dbeta + gamma * dkb_k, dgc + bg * dkb_k


def _wy_bwd_kernel(k_ref, v_ref, beta_ref, gc_ref, r_ref, a_ref, dw_ref, du_ref,
                   dk_ref, dv_ref, dbeta_ref, dgc_ref, *, tile):
    cdt, K, _V, beta, masks = _prologue(k_ref, v_ref, beta_ref, gc_ref, r_ref)
    kk = None
    for t in _tiles(K, tile):
        kt = k_ref[:, t]
        part = dot(kt, kt, trans_b=True, cdt=cdt)
        kk = part if kk is None else kk + part
    outs = {"dk": dk_ref, "dv": dv_ref}

    def store(name, cols, x):
        outs[name][:, cols] = x.astype(outs[name].dtype)

    dbeta, dgc = wy_grads(k_ref, v_ref, dw_ref, du_ref, beta, masks,
                          a_ref[...].astype(jnp.float32), kk, tile=tile, cdt=cdt, store=store)
    dbeta_ref[...] = dbeta.astype(dbeta_ref.dtype)
    dgc_ref[...] = dgc.astype(dgc_ref.dtype)


def _tile_for(backend: _backend.Backend) -> int:
    """Column tile: 128 lanes on TPU (aligned ref slices), 64 on GPUs (as FLA's BK / BV)."""
    return 128 if backend.kind == "tpu" else 64


def _num_warps(C: int, K: int, V: int) -> int:
    """Triton warps: the kernels keep several (C, C) float32 matrices live (the solve, masks,
    decays), 32 registers per thread each at C = 64 with 4 warps; 8 warps halve that."""
    return 8 if C >= 64 or C * max(K, V) >= 128 * 128 else 4


# ----------------------------------------------------------------------------- wrappers


def _specs(chunk_size: int, dims: tuple[int, ...], seg_index: tuple[bool, ...]):
    """BlockSpecs for grid (B, H, N): one chunk of a [B, H, T, D] array, or of a [B, T, 1] one."""
    specs = []
    for d, per_row in zip(dims, seg_index):
        if per_row:
            specs.append(pl.BlockSpec((None, chunk_size, d), lambda b, h, n: (b, n, 0)))
        else:
            specs.append(pl.BlockSpec((None, None, chunk_size, d), lambda b, h, n: (b, h, n, 0)))
    return specs


def _check(k, v, beta, gc, r, chunk_size):
    B, H, T, _K = k.shape
    if v.shape[:3] != (B, H, T):
        raise ValueError(f"v must be [B, H, T, V] with [B, H, T] = {[B, H, T]}, got {v.shape}")
    for name, x in (("beta", beta), ("gc", gc)):
        if x.shape != (B, H, T):
            raise ValueError(f"{name} must have shape [B, H, T] = {[B, H, T]}, got {x.shape}")
    if r.shape != (B, T):
        raise ValueError(f"r must have shape [B, T] = {[B, T]}, got {r.shape}")
    if T % chunk_size:
        raise ValueError(f"T = {T} must be a multiple of chunk_size = {chunk_size}")


def _fwd_call(backend, chunk_size, k, v, beta, gc, r):
    B, H, T, K = k.shape
    V = v.shape[-1]
    C = chunk_size
    f32 = jnp.float32
    wdt = compute_dtype(k.dtype, v.dtype)
    out_shape = (
        jax.ShapeDtypeStruct((B, H, T, K), wdt),
        jax.ShapeDtypeStruct((B, H, T, V), wdt),
        jax.ShapeDtypeStruct((B, H, T, C), wdt),
    )
    return pl.pallas_call(
        functools.partial(_wy_fwd_kernel, tile=_tile_for(backend)),
        grid=(B, H, T // C),
        in_specs=_specs(C, (K, V, 1, 1, 1), (False, False, False, False, True)),
        out_specs=_specs(C, (K, V, C), (False, False, False)),
        out_shape=out_shape,
        compiler_params=compiler_params(backend, ("parallel",) * 3, num_stages=1,
                                        num_warps=_num_warps(C, K, V)),
        interpret=backend.interpret,
        name="delta_wy_fwd",
    )(k, v, beta[..., None].astype(f32), gc[..., None].astype(f32), r[..., None].astype(f32))


def _bwd_call(backend, chunk_size, k, v, beta, gc, r, a, dw, du):
    B, H, T, K = k.shape
    V = v.shape[-1]
    C = chunk_size
    f32 = jnp.float32
    out_shape = (
        jax.ShapeDtypeStruct((B, H, T, K), f32),
        jax.ShapeDtypeStruct((B, H, T, V), f32),
        jax.ShapeDtypeStruct((B, H, T, 1), f32),
        jax.ShapeDtypeStruct((B, H, T, 1), f32),
    )
    dk, dv, dbeta, dgc = pl.pallas_call(
        functools.partial(_wy_bwd_kernel, tile=_tile_for(backend)),
        grid=(B, H, T // C),
        in_specs=_specs(C, (K, V, 1, 1, 1, C, K, V), (False,) * 4 + (True,) + (False,) * 3),
        out_specs=_specs(C, (K, V, 1, 1), (False,) * 4),
        out_shape=out_shape,
        compiler_params=compiler_params(backend, ("parallel",) * 3, num_stages=1,
                                        num_warps=_num_warps(C, K, V)),
        interpret=backend.interpret,
        name="delta_wy_bwd",
    )(k, v, beta[..., None].astype(f32), gc[..., None].astype(f32), r[..., None].astype(f32),
      a, dw.astype(f32), du.astype(f32))
    return dk, dv, dbeta[..., 0], dgc[..., 0]


def wy_fwd(k, v, beta, gc, r, *, chunk_size: int):
    """WY factors of every chunk, with the ambient flavour.

    Args:
      k: [B, H, T, K]; v: [B, H, T, V]; beta: [B, H, T]; gc: [B, H, T] float32 chunk-local
        cumulative log-gate (zeros for the ungated rule); r: [B, T] float32 chunk-local count of
        segment resets at or before each position (zeros without segments).
    Returns:
      w [B, H, T, K], u [B, H, T, V] (in k's dtype when k and v share a 16-bit float dtype, else
      float32) and a [B, H, T, C] in the same dtype (row i of a chunk's A; the solve itself is
      float32, a is rounded only for storage).
    """
    _check(k, v, beta, gc, r, chunk_size)
    return _fwd_call(_backend.current(), chunk_size, k, v, beta, gc, r)


def wy_bwd(k, v, beta, gc, r, a, dw, du, *, chunk_size: int):
    """Backward of `wy_fwd` given its `a` output and the cotangents dw [B, H, T, K], du [B, H, T, V].

    Returns dk [B, H, T, K], dv [B, H, T, V], dbeta [B, H, T], dgc [B, H, T], all float32.
    """
    _check(k, v, beta, gc, r, chunk_size)
    return _bwd_call(_backend.current(), chunk_size, k, v, beta, gc, r, a, dw, du)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _wy_factors(backend, chunk_size, k, v, beta, gc, r):
    w, u, _ = _fwd_call(backend, chunk_size, k, v, beta, gc, r)
    return w, u


def _wy_factors_fwd(backend, chunk_size, k, v, beta, gc, r):
    w, u, a = _fwd_call(backend, chunk_size, k, v, beta, gc, r)
    return (w, u), (k, v, beta, gc, r, a)


def _wy_factors_bwd(backend, chunk_size, res, cts):
    k, v, beta, gc, r, a = res
    dk, dv, dbeta, dgc = _bwd_call(backend, chunk_size, k, v, beta, gc, r, a, *cts)
    return (dk.astype(k.dtype), dv.astype(v.dtype), dbeta.astype(beta.dtype),
            dgc.astype(gc.dtype), jnp.zeros_like(r))


_wy_factors.defvjp(_wy_factors_fwd, _wy_factors_bwd)


def wy_factors(k, v, beta, gc, r, *, chunk_size: int):
    """(W [B, H, T, K], U [B, H, T, V]) of `wy_fwd`, differentiable in k, v, beta and gc (the
    backward is `wy_bwd`'s kernel); the flavour is the ambient one, read once here."""
    _check(k, v, beta, gc, r, chunk_size)
    return _wy_factors(_backend.current(), chunk_size, k, v, beta, gc, r)


# ----------------------------------------------------------------------------- reference


def wy_reference(k, v, beta, gc, r, *, chunk_size: int):
    """Plain-JAX WY factors (same contract as `wy_fwd`), differentiable with `jax.vjp`."""
    B, H, T, K = k.shape
    V = v.shape[-1]
    C = chunk_size
    N = T // C
    f32 = jnp.float32
    kc = k.astype(f32).reshape(B, H, N, C, K)
    vc = v.astype(f32).reshape(B, H, N, C, V)
    bc = beta.astype(f32).reshape(B, H, N, C, 1)
    gcc = gc.astype(f32).reshape(B, H, N, C, 1)
    rc = r.astype(f32).reshape(B, 1, N, C, 1)
    i = jnp.arange(C)
    same = rc == jnp.swapaxes(rc, -1, -2)
    lower = jnp.logical_and(i[:, None] > i[None, :], same)
    diff = gcc - jnp.swapaxes(gcc, -1, -2)
    gam = jnp.where(lower, jnp.exp(jnp.where(lower, diff, 0.0)), 0.0)
    gamma = jnp.where(rc == 0, jnp.exp(gcc), 0.0)
    kk = jnp.einsum("...ik,...jk->...ij", kc, kc, precision=HIGHEST)
    lmat = jnp.where(lower, bc * kk * gam, 0.0)
    m = jnp.eye(C, dtype=f32) + lmat
    eye = jnp.broadcast_to(jnp.eye(C, dtype=f32), m.shape)
    a = jax.scipy.linalg.solve_triangular(m, eye, lower=True, unit_diagonal=True)
    w = jnp.einsum("...ij,...jk->...ik", a, bc * gamma * kc, precision=HIGHEST)
    u = jnp.einsum("...ij,...jk->...ik", a, bc * vc, precision=HIGHEST)
    return w.reshape(B, H, T, K), u.reshape(B, H, T, V), a.reshape(B, H, T, C)

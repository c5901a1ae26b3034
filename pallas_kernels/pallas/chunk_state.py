"""Stage 3 of docs/design.md: the inter-chunk state pass (the chunked scan), forward and backward.

Notation: G = B * H (batch and heads flattened), N chunks of C positions, K key dim, V value dim.
Every array is chunk-major: [G, N, C, D] is [B, H, T, D] reshaped (T = N * C).

Contract of `state_pass` (shared with the delta-rule kernels)::

    states, h_final, v_new = state_pass(kd, vd, decay_k=None, decay_v=None, h0=None, w=None)

    kd       [G, N, C, K]  any float dtype   key side of each chunk's update; per chunk, with the
                                             decay from each position to the chunk end already
                                             applied (and zeroed where a segment reset follows)
    vd       [G, N, C, V]  any float dtype   value side of each chunk's update
    decay_k  [G, N, K]     float32 or None   per-chunk decay of the state rows (None: 1)
    decay_v  [G, N, V]     float32 or None   per-chunk decay of the state columns (None: 1)
    h0       [G, K, V]     float32 or None   state before the first chunk (None: 0)
    w        [G, N, C, K]  any float or None delta-rule correction (None: no correction)

    recurrence, chunk n = 0 .. N-1, S_{-1} = h0:
        u_n = vd_n - w_n @ S_{n-1}                     (u_n = vd_n when w is None)
        S_n = (decay_k[n][:, None] * decay_v[n][None, :]) * S_{n-1} + kd_n^T @ u_n

    states   [G, N, K, V]  float32           states[:, n] = S_{n-1}, the state entering chunk n
                                             (states[:, 0] = h0)
    h_final  [G, K, V]     float32           S_{N-1}, the state after the last chunk
    v_new    [G, N, C, V]  float32 or None   u_n (only when w is given)

`state_pass` is a `jax.custom_vjp`: differentiable in every array operand (cotangents for
states, h_final and v_new all flow back); the backward is a reverse pass over chunks in Pallas
(`dS_{n-1} = D_n * dS_n - w_n^T dU_n + dstates_n`). The flavour (TPU or Triton) comes from
`pallas_kernels.pallas._backend.current()` at trace time.

TPU flavour: grid (G, N) with the chunk axis "arbitrary" and the state in VMEM scratch (the
forward keeps the full K x V state; value tiles are not needed for head dims <= 256).
Triton flavour: the chunk loop runs inside the kernel with the state as the loop carry, over
programs (G, K / 64, V / 64) (K untiled when w is given). The backward is split in two: that
sequential reverse pass only carries dS_n (elementwise without w) and stores it per chunk; then
one parallel kernel over (G, N) computes every chunk's gradients from dS_n, looping over value
tiles. (The TPU flavour does both in one sequential pass.)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels.pallas import _backend
from pallas_kernels.pallas._common import F32, call, mm, mm_nt, mm_tn

# ----------------------------------------------------------------------------------------------
# The per-chunk math, one copy shared by both flavours.

def _step_fwd(S, kd, vd, dk, dv, w):
    """One chunk: returns (S_n, u_n). S [K, V] f32, kd [C, K], vd [C, V], dk [K, 1] | None,
    dv [1, V] | None, w [C, K] | None."""
    u = vd.astype(F32)
    if w is not None:
        u = u - mm(w, S)
    Sn = S
    if dk is not None:
        Sn = Sn * dk
    if dv is not None:
        Sn = Sn * dv
    Sn = Sn + mm_tn(kd, vd if w is None else u)
    return Sn, u


def _lowp(kd, vd, w):
    """Without the delta-rule correction, bf16 data keeps the backward matmuls in bf16 (f32
    accumulation; the running dS stays f32): tensor cores on GPU, the MXU's native rate on TPU."""
    return w is None and kd.dtype == vd.dtype and kd.dtype != F32


def _dU(dS, kd, dvnew, lowp):
    """dL/du_n = kd_n dS_n (+ the cotangent of the emitted u_n): [C, V(tile)] float32."""
    dU = mm(kd, dS.astype(kd.dtype) if lowp else dS)
    return dU if dvnew is None else dU + dvnew.astype(F32)


def _chunk_grads(dS, S, kd, vd, dk, dv, w, dvnew):
    """Gradients of chunk n's inputs from dS = dL/dS_n and S = S_{n-1} (float32 [K, V]).

    Works on a tile of value columns as well (vd, dv, dvnew, dS and S restricted to the tile;
    dkd, ddk and dw are then partial sums over the tiles). Returns (dkd [C, K], dU [C, V],
    ddk [K, 1] | None, ddv [1, V] | None, dw [C, K] | None), float32; dvd = dU.
    """
    lowp = _lowp(kd, vd, w)
    u = vd if lowp else vd.astype(F32)
    if w is not None:
        u = u - mm(w, S)
    dU = _dU(dS, kd, dvnew, lowp)
    dkd = mm_nt(u, dS.astype(kd.dtype) if lowp else dS)
    ddk = ddv = None
    if dk is not None or dv is not None:
        dD = dS * S
        if dk is not None:
            ddk = jnp.sum(dD * dv if dv is not None else dD, axis=1, keepdims=True)
        if dv is not None:
            ddv = jnp.sum(dD * dk if dk is not None else dD, axis=0, keepdims=True)
    dw = None if w is None else -mm_nt(dU, S)
    return dkd, dU, ddk, ddv, dw


def _reverse_step(dS, dU, dk, dv, w, dstate):
    """dL/dS_{n-1} = D_n * dS_n - w_n^T dU_n + dstates_n (dU only used with w)."""
    dSp = dS
    if dk is not None:
        dSp = dSp * dk
    if dv is not None:
        dSp = dSp * dv
    if w is not None:
        dSp = dSp - mm_tn(w, dU)
    return dSp + dstate


# ----------------------------------------------------------------------------------------------
# Forward kernels. `r` maps operand names to refs (None for absent ones, see `_common.call`).

def _get(r, name, index=...):
    return None if r[name] is None else r[name][index]


def _fwd_kernel_tpu(r, *, n_chunks):
    n = pl.program_id(1)
    S_ref = r["scratch"]

    @pl.when(n == 0)
    def _init():
        if r["h0"] is not None:
            S_ref[...] = r["h0"][...]
        else:
            S_ref[...] = jnp.zeros(S_ref.shape, F32)

    S = S_ref[...]
    r["states"][...] = S
    Sn, u = _step_fwd(S, r["kd"][...], r["vd"][...], _get(r, "dk"), _get(r, "dv"), _get(r, "w"))
    if r["vnew"] is not None:
        r["vnew"][...] = u
    S_ref[...] = Sn

    @pl.when(n == n_chunks - 1)
    def _fin():
        r["hT"][...] = Sn


def _fwd_kernel_triton(r, *, n_chunks):
    if r["h0"] is not None:
        S0 = r["h0"][...]
    else:
        S0 = jnp.zeros(r["hT"].shape, F32)

    def body(n, S):
        r["states"][n, :, :] = S
        Sn, u = _step_fwd(S, r["kd"][n], r["vd"][n], _get(r, "dk", n), _get(r, "dv", n),
                          _get(r, "w", n))
        if r["vnew"] is not None:
            r["vnew"][n, :, :] = u
        return Sn

    r["hT"][...] = lax.fori_loop(0, n_chunks, body, S0)


def _triton_tiles(K: int, V: int, has_w: bool) -> tuple[int, int]:
    """State tiles of the Triton programs: without w the rows and columns of the state evolve
    independently; the delta-rule correction w @ S needs all K rows, so then bk = K."""
    return (K if has_w else min(K, 64)), min(V, 64)


def _fwd_call(backend, kd, vd, decay_k, decay_v, h0, w):
    G, N, C, K = kd.shape
    V = vd.shape[-1]
    has_w = w is not None
    inputs = {"kd": kd, "vd": vd,
              "dk": None if decay_k is None else decay_k.reshape(G, N, K, 1),
              "dv": None if decay_v is None else decay_v.reshape(G, N, 1, V), "h0": h0, "w": w}
    outputs = {"states": jax.ShapeDtypeStruct((G, N, K, V), F32),
               "hT": jax.ShapeDtypeStruct((G, K, V), F32),
               "vnew": jax.ShapeDtypeStruct((G, N, C, V), F32) if has_w else None}
    if backend.kind == "tpu":
        from jax.experimental.pallas import tpu as pltpu

        chunk = lambda d2, d3: pl.BlockSpec((None, None, d2, d3), lambda g, n: (g, n, 0, 0))
        whole = lambda d2, d3: pl.BlockSpec((None, d2, d3), lambda g, n: (g, 0, 0))
        specs = {"kd": chunk(C, K), "vd": chunk(C, V), "dk": chunk(K, 1), "dv": chunk(1, V),
                 "h0": whole(K, V), "w": chunk(C, K), "states": chunk(K, V), "hT": whole(K, V),
                 "vnew": chunk(C, V)}
        outs = call(functools.partial(_fwd_kernel_tpu, n_chunks=N), backend=backend, grid=(G, N),
                    inputs=inputs, outputs=outputs, in_specs=specs, out_specs=specs,
                    scratch={"scratch": pltpu.VMEM((K, V), F32)},
                    semantics=("parallel", "arbitrary"), name="chunk_state_fwd")
    else:
        # Programs over (G, K tiles, V tiles), the chunk loop inside.
        bk, bv = _triton_tiles(K, V, has_w)
        tile = lambda d2, d3, f: pl.BlockSpec((None, N, d2, d3), f)  # noqa: E731
        specs = {
            "kd": tile(C, bk, lambda g, i, j: (g, 0, 0, i)),
            "vd": tile(C, bv, lambda g, i, j: (g, 0, 0, j)),
            "dk": tile(bk, 1, lambda g, i, j: (g, 0, i, 0)),
            "dv": tile(1, bv, lambda g, i, j: (g, 0, 0, j)),
            "h0": pl.BlockSpec((None, bk, bv), lambda g, i, j: (g, i, j)),
            "w": tile(C, K, lambda g, i, j: (g, 0, 0, 0)),
            "states": tile(bk, bv, lambda g, i, j: (g, 0, i, j)),
            "hT": pl.BlockSpec((None, bk, bv), lambda g, i, j: (g, i, j)),
            "vnew": tile(C, bv, lambda g, i, j: (g, 0, 0, j)),
        }
        outs = call(functools.partial(_fwd_kernel_triton, n_chunks=N), backend=backend,
                    grid=(G, K // bk, V // bv), inputs=inputs, outputs=outputs, in_specs=specs,
                    out_specs=specs, semantics=("parallel",) * 3, name="chunk_state_fwd")
    return outs["states"], outs["hT"], outs["vnew"]


# ----------------------------------------------------------------------------------------------
# Backward kernels.

def _bwd_kernel_tpu(r, *, n_chunks):
    i = pl.program_id(1)            # step i handles chunk n = N - 1 - i
    dS_ref = r["scratch"]

    @pl.when(i == 0)
    def _init():
        dS_ref[...] = r["dhT"][...]

    dS = dS_ref[...]
    dk, dv, w = _get(r, "dk"), _get(r, "dv"), _get(r, "w")
    dkd, dU, ddk, ddv, dw = _chunk_grads(
        dS, r["states"][...], r["kd"][...], r["vd"][...], dk, dv, w, _get(r, "dvnew"))
    dSp = _reverse_step(dS, dU, dk, dv, w, r["dstates"][...])
    r["dkd"][...] = dkd.astype(r["dkd"].dtype)
    r["dvd"][...] = dU.astype(r["dvd"].dtype)
    if ddk is not None:
        r["ddk"][...] = ddk
    if ddv is not None:
        r["ddv"][...] = ddv
    if dw is not None:
        r["dw"][...] = dw.astype(r["dw"].dtype)
    dS_ref[...] = dSp

    @pl.when(i == n_chunks - 1)
    def _fin():
        r["dh0"][...] = dSp


def _bwd_reverse_kernel_triton(r, *, n_chunks):
    """The sequential part on Triton: dS_n for every chunk (and dh0), on a (K, V) tile."""

    def body(i, dS):
        n = n_chunks - 1 - i
        r["dH"][n, :, :] = dS
        dU = None
        if r["w"] is not None:
            dU = _dU(dS, r["kd"][n], _get(r, "dvnew", n), lowp=False)
        return _reverse_step(dS, dU, _get(r, "dk", n), _get(r, "dv", n), _get(r, "w", n),
                             r["dstates"][n])

    r["dh0"][...] = lax.fori_loop(0, n_chunks, body, r["dhT"][...])


def _bwd_grads_kernel_triton(r, *, block_v):
    """The parallel part on Triton: one chunk's gradients from its dS_n, looping over V tiles."""
    V = r["vd"].shape[-1]
    dkd = ddk = dw = None
    for j in range(V // block_v):
        vs = pl.ds(j * block_v, block_v)
        dkd_j, dU, ddk_j, ddv, dw_j = _chunk_grads(
            r["dH"][:, vs], r["states"][:, vs], r["kd"][...], r["vd"][:, vs], _get(r, "dk"),
            _get(r, "dv", (slice(None), vs)), _get(r, "w"), _get(r, "dvnew", (slice(None), vs)))
        dkd = dkd_j if dkd is None else dkd + dkd_j
        if ddk_j is not None:
            ddk = ddk_j if ddk is None else ddk + ddk_j
        if dw_j is not None:
            dw = dw_j if dw is None else dw + dw_j
        r["dvd"][:, vs] = dU.astype(r["dvd"].dtype)
        if ddv is not None:
            r["ddv"][:, vs] = ddv
    r["dkd"][...] = dkd.astype(r["dkd"].dtype)
    if ddk is not None:
        r["ddk"][...] = ddk
    if dw is not None:
        r["dw"][...] = dw.astype(r["dw"].dtype)


def _bwd_call(backend, kd, vd, decay_k, decay_v, w, states, dstates, dhT, dvnew):
    G, N, C, K = kd.shape
    V = vd.shape[-1]
    dk = None if decay_k is None else decay_k.reshape(G, N, K, 1)
    dv = None if decay_v is None else decay_v.reshape(G, N, 1, V)
    has_w = w is not None
    arrays = {"kd": kd, "vd": vd, "dk": dk, "dv": dv, "w": w, "states": states,
              "dstates": dstates, "dhT": dhT, "dvnew": dvnew}
    sds = jax.ShapeDtypeStruct
    grads = {"dkd": sds((G, N, C, K), kd.dtype), "dvd": sds((G, N, C, V), vd.dtype),
             "ddk": None if dk is None else sds((G, N, K, 1), F32),
             "ddv": None if dv is None else sds((G, N, 1, V), F32),
             "dw": sds((G, N, C, K), w.dtype) if has_w else None}
    blocks = {"kd": (C, K), "vd": (C, V), "dk": (K, 1), "dv": (1, V), "w": (C, K),
              "states": (K, V), "dstates": (K, V), "dvnew": (C, V), "dH": (K, V),
              "dkd": (C, K), "dvd": (C, V), "ddk": (K, 1), "ddv": (1, V), "dw": (C, K)}
    if backend.kind == "tpu":
        from jax.experimental.pallas import tpu as pltpu

        def spec(nm):
            if nm in ("dhT", "dh0"):
                return pl.BlockSpec((None, K, V), lambda g, i: (g, 0, 0))
            return pl.BlockSpec((None, None) + blocks[nm], lambda g, i: (g, N - 1 - i, 0, 0))

        res = call(functools.partial(_bwd_kernel_tpu, n_chunks=N), backend=backend, grid=(G, N),
                   inputs=arrays, outputs={**grads, "dh0": sds((G, K, V), F32)},
                   in_specs=spec, out_specs=spec, scratch={"scratch": pltpu.VMEM((K, V), F32)},
                   semantics=("parallel", "arbitrary"), name="chunk_state_bwd")
    else:
        # Triton: a sequential reverse pass over (K, V) tiles that only carries dS (elementwise
        # without w), then the per-chunk gradients in parallel over (G, N).
        bk, bv = _triton_tiles(K, V, has_w)
        tile = lambda d2, d3, f: pl.BlockSpec((None, N, d2, d3), f)  # noqa: E731
        rev_specs = {
            "kd": tile(C, K, lambda g, i, j: (g, 0, 0, 0)),
            "dk": tile(bk, 1, lambda g, i, j: (g, 0, i, 0)),
            "dv": tile(1, bv, lambda g, i, j: (g, 0, 0, j)),
            "w": tile(C, K, lambda g, i, j: (g, 0, 0, 0)),
            "dstates": tile(bk, bv, lambda g, i, j: (g, 0, i, j)),
            "dhT": pl.BlockSpec((None, bk, bv), lambda g, i, j: (g, i, j)),
            "dvnew": tile(C, bv, lambda g, i, j: (g, 0, 0, j)),
            "dH": tile(bk, bv, lambda g, i, j: (g, 0, i, j)),
            "dh0": pl.BlockSpec((None, bk, bv), lambda g, i, j: (g, i, j)),
        }
        rev_in = {nm: arrays[nm] for nm in ("dk", "dv", "w", "dstates", "dhT", "dvnew")}
        rev_in["kd"] = kd if has_w else None
        rev = call(functools.partial(_bwd_reverse_kernel_triton, n_chunks=N), backend=backend,
                   grid=(G, K // bk, V // bv), inputs=rev_in,
                   outputs={"dH": sds((G, N, K, V), F32), "dh0": sds((G, K, V), F32)},
                   in_specs=rev_specs, out_specs=rev_specs, semantics=("parallel",) * 3,
                   name="chunk_state_bwd_reverse")
        grad_in = {nm: arrays[nm] for nm in ("kd", "vd", "dk", "dv", "w", "states", "dvnew")}
        grad_in["dH"] = rev["dH"]
        spec = lambda nm: pl.BlockSpec((None, None) + blocks[nm], lambda g, n: (g, n, 0, 0))  # noqa: E731
        res = call(functools.partial(_bwd_grads_kernel_triton, block_v=bv), backend=backend,
                   grid=(G, N), inputs=grad_in, outputs=grads, in_specs=spec, out_specs=spec,
                   semantics=("parallel", "parallel"), num_warps=8, name="chunk_state_bwd_grads")
        res["dh0"] = rev["dh0"]
    ddk = None if res["ddk"] is None else res["ddk"].reshape(G, N, K)
    ddv = None if res["ddv"] is None else res["ddv"].reshape(G, N, V)
    return res["dkd"], res["dvd"], ddk, ddv, res["dh0"], res["dw"]


# ----------------------------------------------------------------------------------------------
# custom_vjp wiring.

@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _state_pass(backend, kd, vd, decay_k, decay_v, h0, w):
    return _fwd_call(backend, kd, vd, decay_k, decay_v, h0, w)


def _state_pass_fwd(backend, kd, vd, decay_k, decay_v, h0, w):
    states, hT, vnew = _fwd_call(backend, kd, vd, decay_k, decay_v, h0, w)
    return (states, hT, vnew), (kd, vd, decay_k, decay_v, h0, w, states)


def _state_pass_bwd(backend, res, cts):
    kd, vd, decay_k, decay_v, h0, w, states = res
    dstates, dhT, dvnew = cts
    dkd, dvd, ddk, ddv, dh0, dw = _bwd_call(
        backend, kd, vd, decay_k, decay_v, w, states, dstates.astype(F32), dhT.astype(F32),
        None if w is None else dvnew)
    return dkd, dvd, ddk, ddv, (None if h0 is None else dh0), dw


_state_pass.defvjp(_state_pass_fwd, _state_pass_bwd)


def state_pass(kd, vd, *, decay_k=None, decay_v=None, h0=None, w=None):
    """The chunked scan; see the module docstring for the exact contract.

    Args:
      kd: [G, N, C, K]; vd: [G, N, C, V]; decay_k: [G, N, K] f32 or None; decay_v: [G, N, V] f32
        or None; h0: [G, K, V] f32 or None; w: [G, N, C, K] or None.

    Returns:
      (states [G, N, K, V] f32, h_final [G, K, V] f32, v_new [G, N, C, V] f32 or None).
    """
    if kd.ndim != 4 or vd.ndim != 4 or kd.shape[:3] != vd.shape[:3]:
        raise ValueError(f"kd [G, N, C, K] and vd [G, N, C, V] must agree, got {kd.shape} and {vd.shape}")
    G, N, C, K = kd.shape
    V = vd.shape[-1]
    for name, x, want in (("decay_k", decay_k, (G, N, K)), ("decay_v", decay_v, (G, N, V)),
                          ("h0", h0, (G, K, V)), ("w", w, (G, N, C, K))):
        if x is not None and x.shape != want:
            raise ValueError(f"{name} must have shape {want}, got {x.shape}")
    f32 = lambda x: None if x is None else x.astype(F32)
    return _state_pass(_backend.current(), kd, vd, f32(decay_k), f32(decay_v), f32(h0), w)

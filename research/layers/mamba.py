"""Mamba (Gu & Dao 2023, the selective SSM; Mamba-1's block), computed by `selective_scan`.

    x, z = split(u W_in)                           x, z: [B, T, E]    E = expand_v * d_model
    x = conv(x)                                    (width `conv_size`, then SiLU; SiLU alone with
                                                   conv_size 0)
    dt_r, Bm, Cm = split(x W_x)                    dt_r: [B, T, R], Bm, Cm: [B, T, N] (shared by
                                                   every channel), R = ceil(d_model / 16)
    dt = softplus(dt_r W_dt + dt_bias)             [B, T, E]  (per channel)
    A = -exp(A_log)                                [E, N]     (S4D-real init: A[d, n] = -(n + 1))
    h[n, d]_t = exp(dt[d]_t A[d, n]) h[n, d]_{t-1} + dt[d]_t Bm[n]_t x[d]_t
    y[d]_t = sum_n Cm[n]_t h[n, d]_t + D[d] x[d]_t
    out = W_out (y * silu(z))                      (without use_output_gate: W_out y)

The E channels are split over the config's n_heads for the op's [B, T, H, D] layout: x and dt
[B, T, H, P] (P = E / H), A [H, P, N], Bm and Cm broadcast to [B, T, H, N]; the op's state is
[B, H, N, P]. softplus(dt_bias) starts log-uniform in [dt_min, dt_max] (Mamba's init).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

import pallas_kernels
from research.config import ModelConfig
from research.layers import common

F32 = jnp.float32


class Mamba(common.SSMMixer):
    """Mamba (selective SSM) mixer. __call__(x [B, T, D]) -> (y [B, T, D], cache or None)."""

    name = "mamba"

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        super().__init__(cfg)
        d, N, E = cfg.d_model, self.d_state, self.d_inner
        self.dt_rank = R = math.ceil(d / 16)
        self.in_proj = common.linear(cfg, d, 2 * E if self.use_output_gate else E, rngs=rngs)
        self.conv = common.short_conv(cfg, E, rngs=rngs)
        self.x_proj = common.linear(cfg, E, R + 2 * N, rngs=rngs, names=("heads", None))
        k_dt, k_w = jax.random.split(rngs.params())
        u = jax.random.uniform(k_dt, (E,), F32)
        dt = jnp.exp(u * (math.log(cfg.dt_max) - math.log(cfg.dt_min)) + math.log(cfg.dt_min))
        dt = jnp.maximum(dt, 1e-4)
        bound = R ** -0.5  # Mamba's dt_proj init ("constant" std dt_rank^-0.5, uniform)
        self.dt_proj = nnx.Linear(
            R, E, use_bias=True, dtype=common.compute_dtype(cfg), param_dtype=F32,
            kernel_init=lambda key, shape, dtype=F32: jax.random.uniform(key, shape, dtype, -bound, bound),
            bias_init=common.constant_init(dt + jnp.log(-jnp.expm1(-dt))),  # softplus(bias) = dt
            kernel_metadata=common.axes(None, "heads", shape=(R, E)),
            bias_metadata=common.axes("heads", shape=(E,)), rngs=rngs)
        a = jnp.broadcast_to(jnp.arange(1, N + 1, dtype=F32), (E, N))
        self.A_log = nnx.Param(jnp.log(a), **common.axes("heads", None, shape=(E, N)))
        self.D = nnx.Param(jnp.ones((E,), F32), **common.axes("heads", shape=(E,)))
        self.out_proj = common.linear(cfg, E, d, rngs=rngs, names=("heads", "embed"))

    def ssm_inputs(self, u, *, segment_ids=None, cache=None):
        """(x [B, T, E] after the conv, z or None, dt [B, T, E] float32, Bm, Cm [B, T, N], conv cache)."""
        xz = self.in_proj(u)
        x, z = jnp.split(xz, 2, axis=-1) if self.use_output_gate else (xz, None)
        if self.conv is not None:
            (x,), conv_cache = common.conv_parts(self.conv, [x], segment_ids=segment_ids, cache=cache)
        else:
            x, conv_cache = jax.nn.silu(x), None
        R, N = self.dt_rank, self.d_state
        dt_r, bm, cm = jnp.split(self.x_proj(x), [R, R + N], axis=-1)
        dt = jax.nn.softplus(self.dt_proj(dt_r).astype(F32))
        return x, z, dt, bm, cm, conv_cache

    def __call__(self, u, *, segment_ids=None, cache=None, pos=None):
        """u: [B, T, D]; segment_ids: [B, T] or None; cache: from init_cache or None."""
        H, N, P = self.n_heads, self.d_state, self.head_dim
        x, z, dt, bm, cm, conv_cache = self.ssm_inputs(u, segment_ids=segment_ids, cache=cache)
        xh = common.split_heads(x, H)  # [B, T, H, P]
        shape = xh.shape[:3] + (N,)
        q = jnp.broadcast_to(cm[:, :, None, :], shape)
        k = jnp.broadcast_to(bm[:, :, None, :], shape)
        A = -jnp.exp(self.A_log[...]).reshape(H, P, N)
        state = None if cache is None else cache["state"]
        T = u.shape[1]
        chunk = min(self.cfg.chunk_size, common.next_pow2(T)) if T <= 16 else self.cfg.chunk_size
        y, state = pallas_kernels.selective_scan(
            q, k, xh, common.split_heads(dt, H), A, scale=1.0, initial_state=state,
            output_final_state=state is not None, segment_ids=segment_ids, chunk_size=chunk,
            impl=self.cfg.impl)
        y = common.merge_heads(y) + x * self.D[...].astype(x.dtype)
        if self.use_output_gate:
            y = y * jax.nn.silu(z)
        return self.out_proj(y), common.updated_cache(cache, state, conv_cache)

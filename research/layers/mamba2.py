"""Mamba2 (Dao & Gu 2024): the SSD layer, computed by `simple_gla`.

    z, x, B, C, dt = split(u W_in)      z, x: [B, T, H*P]; B, C: [B, T, N] (one group); dt: [B, T, H]
    x, B, C = conv(x, B, C)             (width `conv_size`, then SiLU)
    dt = softplus(dt + dt_bias),  A = -exp(A_log)                                  [H]
    S_t = exp(dt_t A) S_{t-1} + B_t (dt_t x_t)^T,  y_t = S_t^T C_t + D x_t         (S: N x P per head)
    out = W_out RMSNorm(y * silu(z))    (the gated norm; without use_output_gate, RMSNorm(y))

i.e. simple_gla with q = C, k = B, v = dt x, g = dt A, scale = 1. Here P = expand_v * d_model / H
(the config fixes H, not P), N = d_state. A starts uniform in [a_init_min, a_init_max], dt
log-uniform in [dt_min, dt_max] (Mamba2's defaults).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from research.config import ModelConfig
from research.layers import common


class Mamba2(common.SSMMixer):
    """Mamba2 (SSD) mixer. __call__(x [B, T, D]) -> (y [B, T, D], cache or None)."""

    name = "mamba2"

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        super().__init__(cfg)
        d, H, N, E = cfg.d_model, self.n_heads, self.d_state, self.d_inner
        self.split = (E, E, N, N, H) if self.use_output_gate else (E, N, N, H)
        self.in_proj = common.linear(cfg, d, sum(self.split), rngs=rngs)
        self.conv = common.short_conv(cfg, E + 2 * N, rngs=rngs)
        self.A_log, self.dt_bias = common.mamba_decay_init(cfg, H, rngs)
        self.D = nnx.Param(jnp.ones((H,), jnp.float32), **common.axes("heads"))
        self.norm = common.RMSNorm(E, eps=cfg.norm_eps, name="heads")
        self.out_proj = common.linear(cfg, E, d, rngs=rngs, names=("heads", "embed"))

    def _split(self, u):
        """in_proj(u) split into (z or None, x, B, C, dt_raw)."""
        bounds = [sum(self.split[:i + 1]) for i in range(len(self.split) - 1)]
        parts = jnp.split(self.in_proj(u), bounds, axis=-1)
        z = parts.pop(0) if self.use_output_gate else None
        return (z, *parts)

    def _dt(self, dt_raw):
        return jax.nn.softplus(dt_raw.astype(jnp.float32) + self.dt_bias[...])  # [B, T, H]

    def log_decay(self, u):
        """Per-step log-decay dt * A, [B, T, H] float32, for u [B, T, D]."""
        return -jnp.exp(self.A_log[...]) * self._dt(self._split(u)[-1])

    def __call__(self, u, *, segment_ids=None, cache=None, pos=None):
        """u: [B, T, D]; segment_ids: [B, T] or None; cache: from init_cache or None."""
        H = self.n_heads
        z, x, b, c, dt = self._split(u)
        (x, b, c), conv_cache = common.conv_parts(self.conv, [x, b, c], segment_ids=segment_ids,
                                                  cache=cache)
        dt = self._dt(dt)
        g = -jnp.exp(self.A_log[...]) * dt
        x = common.split_heads(x, H)  # [B, T, H, P]
        shape = x.shape[:3] + (self.d_state,)
        q = jnp.broadcast_to(c[:, :, None, :], shape)
        k = jnp.broadcast_to(b[:, :, None, :], shape)
        v = (x * dt[..., None]).astype(x.dtype)
        state = None if cache is None else cache["state"]
        y, state = common.run_op(self.cfg, "simple_gla", q, k, v, g, scale=1.0,
                                 segment_ids=segment_ids, state=state)
        y = y + x * self.D[...][:, None].astype(x.dtype)
        y = common.merge_heads(y)
        if self.use_output_gate:
            y = y * jax.nn.silu(z)
        return self.out_proj(self.norm(y)), common.updated_cache(cache, state, conv_cache)

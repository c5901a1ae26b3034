"""Gated DeltaNet (Yang et al. 2024), as FLA's GatedDeltaNet layer.

    q, k = l2norm(silu(conv(x W_q))), l2norm(silu(conv(x W_k)))   [B, T, H, K]
    v = silu(conv(x W_v))                                         [B, T, H, V]   (V = 2K by default)
    beta = sigmoid(x W_b)                                         [B, T, H]
    g = -exp(A_log) * softplus(x W_a + dt_bias)                   [B, T, H]      (Mamba2-style decay)
    S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,  o_t = S_t^T q_t / sqrt(K)
    y = W_o (RMSNorm_head(o) * swish(x W_gate))

A = exp(A_log) starts uniform in [a_init_min, a_init_max]; softplus(dt_bias) log-uniform in
[dt_min, dt_max]. With `init_half_life`, A_log is set so exp(g) halves the state in that many tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from research.config import ModelConfig
from research.layers import common
from research.layers.deltanet import DeltaNet


class GatedDeltaNet(DeltaNet):
    """Gated DeltaNet mixer. __call__(x [B, T, D]) -> (y [B, T, D], cache or None)."""

    name = "gated_deltanet"

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        super().__init__(cfg, rngs=rngs)
        self.a_proj = common.linear(cfg, cfg.d_model, self.n_heads, rngs=rngs)
        self.A_log, self.dt_bias = common.mamba_decay_init(cfg, self.n_heads, rngs)

    def log_decay(self, x):
        """g = -exp(A_log) * softplus(x W_a + dt_bias), [B, T, H] float32."""
        a = self.a_proj(x).astype(jnp.float32) + self.dt_bias[...]
        return -jnp.exp(self.A_log[...]) * jax.nn.softplus(a)

    def __call__(self, x, *, segment_ids=None, cache=None, pos=None):
        """x: [B, T, D]; segment_ids: [B, T] or None; cache: from init_cache or None."""
        q, k, v, conv_cache = self.qkv(x, segment_ids=segment_ids, cache=cache)
        state = None if cache is None else cache["state"]
        o, state = common.run_op(self.cfg, "gated_delta_rule", q, k, v, self.log_decay(x),
                                 self.beta(x).astype(q.dtype), scale=self.head_k ** -0.5,
                                 segment_ids=segment_ids, state=state)
        return self.output(o, x), common.updated_cache(cache, state, conv_cache)

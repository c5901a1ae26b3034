"""HGRN2 (Qin et al. 2024): gated linear RNN with outer-product state expansion, as FLA's HGRN2Attention.

    q = swish(conv(x W_q))                       [B, T, H, K]  (K = d_model * expand_k / H; the
                                                  conv's SiLU is the swish when conv_size > 0)
    i = conv(x W_i)                              [B, T, H, V]  (the input, used as v)
    g = logsigmoid(x W_f + b)                    [B, T, H, K]  (forget gate, log space)
    k = 1 - exp(g)                               (the input gate is tied to the forget gate)
    S_t = diag(exp(g_t)) S_{t-1} + k_t i_t^T,  o_t = S_t^T q_t,  y = W_o RMSNorm_head(o)

This is `gla` with k = 1 - exp(g) and scale 1. The layer-wise lower bound on the forget gate of the
paper is not included; `init_half_life` sets the initial forget-gate bias instead.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from research.config import ModelConfig
from research.layers import common


class HGRN2(nnx.Module):
    """HGRN2 mixer. __call__(x [B, T, D]) -> (y [B, T, D], cache or None)."""

    name = "hgrn2"

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        d, H = cfg.d_model, cfg.n_heads
        self.n_heads = H
        self.head_k, self.head_v = cfg.head_dims(self.name)
        self.feature = cfg.knob(self.name, "feature_map")
        self.use_output_gate = cfg.knob(self.name, "use_output_gate")
        HK, HV = H * self.head_k, H * self.head_v
        bias = 0.0
        if cfg.init_half_life is not None:
            bias = common.logsigmoid_bias_for_half_life(cfg.init_half_life)
        self.q_proj = common.linear(cfg, d, HK, rngs=rngs)
        self.f_proj = common.linear(cfg, d, HK, rngs=rngs, bias=True, bias_init=common.constant_init(bias))
        self.i_proj = common.linear(cfg, d, HV, rngs=rngs)
        self.conv = common.ShortConv(HK + HV, cfg.conv_size, rngs=rngs) if cfg.conv_size else None
        if self.use_output_gate:
            self.g_proj = common.linear(cfg, d, HV, rngs=rngs)
        self.o_norm = common.RMSNorm(self.head_v, eps=cfg.norm_eps, name="kv")
        self.o_proj = common.linear(cfg, HV, d, rngs=rngs, names=("heads", "embed"))

    def state_size(self, seq_len: int | None = None) -> int:
        """H * K * V floats per sequence."""
        return self.n_heads * self.head_k * self.head_v

    def init_cache(self, batch_size: int, max_length: int):
        """{"state": [B, H, K, V], "conv": [B, W-1, HK+HV] (if conv)}, zeros."""
        H = self.n_heads
        state = jnp.zeros((batch_size, H, self.head_k, self.head_v), jnp.float32)
        return common.recurrent_cache(self.conv, batch_size, H * (self.head_k + self.head_v), state)

    def log_decay(self, x):
        """Forget gate in log space [B, T, H, K] for x [B, T, D]."""
        return common.split_heads(jax.nn.log_sigmoid(self.f_proj(x).astype(jnp.float32)), self.n_heads)

    def __call__(self, x, *, segment_ids=None, cache=None, pos=None):
        """x: [B, T, D]; segment_ids: [B, T] or None; cache: from init_cache or None."""
        H = self.n_heads
        (q, i), conv_cache = common.conv_parts(self.conv, [self.q_proj(x), self.i_proj(x)],
                                               segment_ids=segment_ids, cache=cache)
        q = common.feature_map_after_conv(self.feature, common.split_heads(q, H), self.conv)
        v = common.split_heads(i, H)
        g = self.log_decay(x)
        k = (-jnp.expm1(g)).astype(q.dtype)
        state = None if cache is None else cache["state"]
        o, state = common.run_op(self.cfg, "gla", q, k, v, g, scale=1.0,
                                 segment_ids=segment_ids, state=state)
        return common.head_output(self, o, x), common.updated_cache(cache, state, conv_cache)

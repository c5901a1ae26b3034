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


class HGRN2(common.Mixer):
    """HGRN2 mixer. __call__(x [B, T, D]) -> (y [B, T, D], cache or None)."""

    name = "hgrn2"

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        super().__init__(cfg)
        self.feature = cfg.knob(self.name, "feature_map")
        d, HK, HV = cfg.d_model, self.n_heads * self.head_k, self.n_heads * self.head_v
        bias = 0.0
        if cfg.init_half_life is not None:
            bias = common.logsigmoid_bias_for_half_life(cfg.init_half_life)
        self.q_proj = common.linear(cfg, d, HK, rngs=rngs)
        self.f_proj = common.linear(cfg, d, HK, rngs=rngs, bias=True, bias_init=common.constant_init(bias))
        self.i_proj = common.linear(cfg, d, HV, rngs=rngs)
        self.conv = common.short_conv(cfg, HK + HV, rngs=rngs)
        self.add_output_block(rngs)

    def log_decay(self, x):
        """Forget gate in log space [B, T, H, K] for x [B, T, D]."""
        return common.split_heads(jax.nn.log_sigmoid(self.f_proj(x).astype(jnp.float32)), self.n_heads)

    def __call__(self, x, *, segment_ids=None, cache=None, pos=None):
        """x: [B, T, D]; segment_ids: [B, T] or None; cache: from init_cache or None."""
        (q, v), conv_cache = self.project_heads(x, (self.q_proj, self.i_proj),
                                                segment_ids=segment_ids, cache=cache)
        q = common.feature_map_after_conv(self.feature, q, self.conv)
        g = self.log_decay(x)
        k = (-jnp.expm1(g)).astype(q.dtype)
        state = None if cache is None else cache["state"]
        o, state = common.run_op(self.cfg, "gla", q, k, v, g, scale=1.0,
                                 segment_ids=segment_ids, state=state)
        return common.head_output(self, o, x), common.updated_cache(cache, state, conv_cache)

"""Gated Linear Attention (Yang et al. 2023; FLA's GatedLinearAttention).

    q, k, v = conv(x W_q, x W_k, x W_v)                [B, T, H, K], [B, T, H, V]
    g = logsigmoid(x W_down W_up + b) / normalizer      [B, T, H, K]  (decay="vector", the paper's)
    S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T,  o_t = S_t^T q_t / sqrt(K)
    y = W_o (RMSNorm_head(o) * swish(x W_gate))

`decay` swaps the gate for the ablation ladder: "scalar" (g = logsigmoid(x w_h + b) / normalizer
per head, `simple_gla`), "fixed" (RetNet's per-head constant, or `init_half_life`), "none"
(`linear_attention`). `LinearAttention` and `RetNet` are this module with the decay pinned.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from research.config import ModelConfig
from research.layers import common


class GLA(nnx.Module):
    """GLA token mixer. __call__(x [B, T, D]) -> (y [B, T, D], cache or None)."""

    name = "gla"
    forced_decay: str | None = None

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        name = self.name
        self.cfg = cfg
        d, H = cfg.d_model, cfg.n_heads
        self.n_heads = H
        self.head_k, self.head_v = cfg.head_dims(name)
        self.feature = cfg.knob(name, "feature_map")
        self.feat_k = common.feature_dim(self.feature, self.head_k)
        self.decay = self.forced_decay or cfg.knob(name, "decay")
        self.normalizer = float(cfg.knob(name, "gate_logit_normalizer") or 16.0)
        self.use_output_gate = cfg.knob(name, "use_output_gate")
        HK, HV = H * self.head_k, H * self.head_v
        self.q_proj = common.linear(cfg, d, HK, rngs=rngs)
        self.k_proj = common.linear(cfg, d, HK, rngs=rngs)
        self.v_proj = common.linear(cfg, d, HV, rngs=rngs)
        self.conv = common.ShortConv(2 * HK + HV, cfg.conv_size, rngs=rngs) if cfg.conv_size else None
        bias = 0.0
        if cfg.init_half_life is not None:
            bias = common.logsigmoid_bias_for_half_life(cfg.init_half_life, self.normalizer)
        if self.decay == "vector":
            r = cfg.gate_low_rank_dim
            self.gk_down = common.linear(cfg, d, r, rngs=rngs, names=("embed", None))
            self.gk_up = common.linear(cfg, r, HK, rngs=rngs, bias=True, names=(None, "heads"),
                                       bias_init=common.constant_init(bias))
        elif self.decay == "scalar":
            self.gs_proj = common.linear(cfg, d, H, rngs=rngs, bias=True,
                                         bias_init=common.constant_init(bias))
        if self.use_output_gate:
            self.g_proj = common.linear(cfg, d, HV, rngs=rngs)
        self.o_norm = common.RMSNorm(self.head_v, eps=cfg.norm_eps, name="kv")
        self.o_proj = common.linear(cfg, HV, d, rngs=rngs, names=("heads", "embed"))

    def state_size(self, seq_len: int | None = None) -> int:
        """Floats of recurrent state per sequence: H * K' * V (K' after the feature map)."""
        return self.n_heads * self.feat_k * self.head_v

    def init_cache(self, batch_size: int, max_length: int):
        """{"state": [B, H, K', V] zeros, "conv": [B, W-1, 2HK+HV] zeros (if conv)}."""
        H = self.n_heads
        state = jnp.zeros((batch_size, H, self.feat_k, self.head_v), jnp.float32)
        return common.recurrent_cache(self.conv, batch_size,
                                      H * (2 * self.head_k + self.head_v), state)

    def log_decay(self, x):
        """The log-decay gate for x [B, T, D]: [B, T, H, K] (vector) or [B, T, H] (scalar, fixed);
        None for decay="none"."""
        B, T, _ = x.shape
        H = self.n_heads
        if self.decay == "vector":
            logits = self.gk_up(self.gk_down(x)).astype(jnp.float32)
            return common.split_heads(jax.nn.log_sigmoid(logits) / self.normalizer, H)
        if self.decay == "scalar":
            return jax.nn.log_sigmoid(self.gs_proj(x).astype(jnp.float32)) / self.normalizer
        if self.decay == "fixed":
            g = common.retnet_log_decay(H, self.cfg.init_half_life)
            return jnp.broadcast_to(jnp.asarray(g), (B, T, H))
        return None

    def __call__(self, x, *, segment_ids=None, cache=None, pos=None):
        """x: [B, T, D]; segment_ids: [B, T] or None; cache: from init_cache or None."""
        H = self.n_heads
        (q, k, v), conv_cache = common.conv_parts(
            self.conv, [self.q_proj(x), self.k_proj(x), self.v_proj(x)],
            segment_ids=segment_ids, cache=cache)
        q = common.feature_map_after_conv(self.feature, common.split_heads(q, H), self.conv)
        k = common.feature_map_after_conv(self.feature, common.split_heads(k, H), self.conv)
        v = common.split_heads(v, H)
        g = self.log_decay(x)
        state = None if cache is None else cache["state"]
        scale = 1.0 if self.feature == "taylor" else self.head_k ** -0.5
        if self.decay == "vector":
            o, state = common.run_op(self.cfg, "gla", q, k, v, g, scale=scale,
                                     segment_ids=segment_ids, state=state)
        elif g is not None:
            o, state = common.run_op(self.cfg, "simple_gla", q, k, v, g, scale=scale,
                                     segment_ids=segment_ids, state=state)
        else:
            o, state = common.run_op(self.cfg, "linear_attention", q, k, v, scale=scale,
                                     segment_ids=segment_ids, state=state)
        return common.head_output(self, o, x), common.updated_cache(cache, state, conv_cache)

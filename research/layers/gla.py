"""Gated Linear Attention (Yang et al. 2023; FLA's GatedLinearAttention).

    q, k, v = conv(x W_q, x W_k, x W_v)                [B, T, H, K], [B, T, H, V]
    g = logsigmoid(x W_down W_up + b) / normalizer      [B, T, H, K]  (decay="vector", the paper's)
    S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T,  o_t = S_t^T q_t / sqrt(K)
    y = W_o (RMSNorm_head(o) * swish(x W_gate))

`decay` swaps the gate for the ablation ladder: "scalar" (g = logsigmoid(x w_h + b) / normalizer
per head, `simple_gla`), "fixed" (RetNet's per-head constant, or `init_half_life`), "none"
(`linear_attention`). `LinearAttention` and `RetNet` are this module with the decay pinned.

`max_half_life` (None: off) is a decay floor, the "forget more" mitigation of state collapse
(Chen et al. 2024, "Stuffed Mamba"): the log decay is clamped to g <= -ln 2 / max_half_life on
every token (and channel), so no gate can hold the state longer than that half-life and the state
norm stays bounded past the training length. Applies to the learned gates ("vector", "scalar")
and to "fixed".
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from research.config import ModelConfig
from research.layers import common


class GLA(common.Mixer):
    """GLA token mixer. __call__(x [B, T, D]) -> (y [B, T, D], cache or None)."""

    name = "gla"
    forced_decay: str | None = None

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        name = self.name
        super().__init__(cfg)
        d, H = cfg.d_model, cfg.n_heads
        self.feature = cfg.knob(name, "feature_map")
        self.feat_k = common.feature_dim(self.feature, self.head_k)
        self.decay = self.forced_decay or cfg.knob(name, "decay")
        self.normalizer = float(cfg.knob(name, "gate_logit_normalizer") or 16.0)
        HK = H * self.head_k
        self.add_qkv_projections(rngs)
        self.conv = common.short_conv(cfg, 2 * HK + H * self.head_v, rngs=rngs)
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
        self.add_output_block(rngs)

    def state_size(self, seq_len: int | None = None) -> int:
        """Floats of recurrent state per sequence: H * K' * V (K' after the feature map)."""
        return self.n_heads * self.feat_k * self.head_v

    def init_cache(self, batch_size: int, max_length: int):
        """{"state": [B, H, K', V] zeros, "conv": [B, W-1, 2HK+HV] zeros (if conv)}."""
        state = jnp.zeros((batch_size, self.n_heads, self.feat_k, self.head_v), jnp.float32)
        return common.recurrent_cache(self.conv, batch_size, state)

    def log_decay(self, x):
        """The log-decay gate for x [B, T, D]: [B, T, H, K] (vector) or [B, T, H] (scalar, fixed);
        None for decay="none". With `max_half_life` set, clamped to <= -ln 2 / max_half_life."""
        g = self._log_decay(x)
        floor = self.cfg.max_half_life if self.forced_decay is None else None
        if g is None or floor is None:
            return g
        return jnp.minimum(g, -math.log(2.0) / float(floor))

    def _log_decay(self, x):
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
        q, k, v, conv_cache = self.qkv_heads(x, segment_ids=segment_ids, cache=cache)
        g = self.log_decay(x)
        state = None if cache is None else cache["state"]
        scale = self.qk_scale
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

"""Gated Slot Attention (Zhang et al. 2024), as FLA's GatedSlotAttention.

    q, k = phi(conv(x W_q)), phi(conv(x W_k))   [B, T, H, K]   phi = `feature_map` (swish)
    v = silu(conv(x W_v))                        [B, T, H, V]   (the conv's SiLU is not repeated)
    g = logsigmoid(x W_f + b) / normalizer       [B, T, H, M]   per-slot forget gate (log space)
    s = 1 - exp(g)                               slot write weights
    A_t = A_{t-1} diag(exp(g_t)) + k_t s_t^T,  B_t = diag(exp(g_t)) B_{t-1} + s_t v_t^T
    o_t = B_t^T softmax(A_t^T q_t / sqrt(K)),  y = W_o RMSNorm_head(o) (* swish(x W_gate))
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from research.config import ModelConfig
from research.layers import common


class GSA(common.Mixer):
    """Gated slot attention mixer. __call__(x [B, T, D]) -> (y [B, T, D], cache or None)."""

    name = "gsa"

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        super().__init__(cfg)
        H = cfg.n_heads
        self.num_slots = cfg.num_slots
        self.feature = cfg.knob(self.name, "feature_map")
        self.feat_k = common.feature_dim(self.feature, self.head_k)
        self.normalizer = float(cfg.knob(self.name, "gate_logit_normalizer"))
        bias = 0.0
        if cfg.init_half_life is not None:
            bias = common.logsigmoid_bias_for_half_life(cfg.init_half_life, self.normalizer)
        self.add_qkv_projections(rngs)
        self.f_proj = common.linear(cfg, cfg.d_model, H * self.num_slots, rngs=rngs, bias=True,
                                    bias_init=common.constant_init(bias))
        self.conv = common.short_conv(cfg, H * (2 * self.head_k + self.head_v), rngs=rngs)
        self.add_output_block(rngs)

    def state_size(self, seq_len: int | None = None) -> int:
        """H * M * (K' + V) floats per sequence (the key-slot and slot-value memories)."""
        return self.n_heads * self.num_slots * (self.feat_k + self.head_v)

    def init_cache(self, batch_size: int, max_length: int):
        """{"state": ([B, H, K', M], [B, H, M, V]), "conv": [B, W-1, 2HK+HV] (if conv)}, zeros."""
        H, M = self.n_heads, self.num_slots
        state = (jnp.zeros((batch_size, H, self.feat_k, M), jnp.float32),
                 jnp.zeros((batch_size, H, M, self.head_v), jnp.float32))
        return common.recurrent_cache(self.conv, batch_size, state)

    def log_decay(self, x):
        """Per-slot forget gate in log space [B, T, H, M] for x [B, T, D]."""
        f = self.f_proj(x).astype(jnp.float32)
        return common.split_heads(jax.nn.log_sigmoid(f) / self.normalizer, self.n_heads)

    def __call__(self, x, *, segment_ids=None, cache=None, pos=None):
        """x: [B, T, D]; segment_ids: [B, T] or None; cache: from init_cache or None."""
        q, k, v, conv_cache = self.qkv_heads(x, segment_ids=segment_ids, cache=cache,
                                             v_feature="silu")
        g = self.log_decay(x)
        s = (-jnp.expm1(g)).astype(q.dtype)
        state = None if cache is None else tuple(cache["state"])
        o, state = common.run_op(self.cfg, "gsa", q, k, v, s, g, scale=self.qk_scale,
                                 segment_ids=segment_ids, state=state)
        state = None if state is None else tuple(state)
        return common.head_output(self, o, x), common.updated_cache(cache, state, conv_cache)

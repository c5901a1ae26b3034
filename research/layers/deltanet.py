"""DeltaNet (Schlag et al. 2021; Yang et al. 2024, chunked), as FLA's DeltaNet layer.

    q, k = l2norm(phi(conv(x W_q))), l2norm(phi(conv(x W_k)))    [B, T, H, K]   phi = silu
    v = silu(conv(x W_v))                                        [B, T, H, V]
    beta = sigmoid(x W_b)                                        [B, T, H]      (1 if not use_beta)
    S_t = (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,  o_t = S_t^T q_t / sqrt(K)
    y = W_o RMSNorm_head(o) (* swish(x W_gate) with use_output_gate)

The short conv ends in a SiLU, so with it phi = silu is not applied a second time (FLA's order).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from research.config import ModelConfig
from research.layers import common


class DeltaNet(nnx.Module):
    """DeltaNet mixer. __call__(x [B, T, D]) -> (y [B, T, D], cache or None)."""

    name = "deltanet"

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        d, H = cfg.d_model, cfg.n_heads
        self.n_heads = H
        self.head_k, self.head_v = cfg.head_dims(self.name)
        self.feature = cfg.knob(self.name, "feature_map")
        self.use_output_gate = cfg.knob(self.name, "use_output_gate")
        HK, HV = H * self.head_k, H * self.head_v
        self.q_proj = common.linear(cfg, d, HK, rngs=rngs)
        self.k_proj = common.linear(cfg, d, HK, rngs=rngs)
        self.v_proj = common.linear(cfg, d, HV, rngs=rngs)
        if cfg.use_beta:
            self.b_proj = common.linear(cfg, d, H, rngs=rngs)
        self.conv = common.ShortConv(2 * HK + HV, cfg.conv_size, rngs=rngs) if cfg.conv_size else None
        if self.use_output_gate:
            self.g_proj = common.linear(cfg, d, HV, rngs=rngs)
        self.o_norm = common.RMSNorm(self.head_v, eps=cfg.norm_eps, name="kv")
        self.o_proj = common.linear(cfg, HV, d, rngs=rngs, names=("heads", "embed"))

    def state_size(self, seq_len: int | None = None) -> int:
        """H * K * V floats per sequence."""
        return self.n_heads * self.head_k * self.head_v

    def init_cache(self, batch_size: int, max_length: int):
        """{"state": [B, H, K, V], "conv": [B, W-1, 2HK+HV] (if conv)}, zeros."""
        H = self.n_heads
        state = jnp.zeros((batch_size, H, self.head_k, self.head_v), jnp.float32)
        return common.recurrent_cache(self.conv, batch_size, H * (2 * self.head_k + self.head_v), state)

    def qkv(self, x, *, segment_ids=None, cache=None):
        """q, k [B, T, H, K] (activated, normalised), v [B, T, H, V], and the new conv cache."""
        H = self.n_heads
        (q, k, v), conv_cache = common.conv_parts(
            self.conv, [self.q_proj(x), self.k_proj(x), self.v_proj(x)],
            segment_ids=segment_ids, cache=cache)
        q, k, v = (common.split_heads(t, H) for t in (q, k, v))
        q = common.feature_map_after_conv(self.feature, q, self.conv)
        k = common.feature_map_after_conv(self.feature, k, self.conv)
        v = common.feature_map_after_conv("silu", v, self.conv)
        if self.cfg.qk_norm == "l2":
            q, k = common.l2_normalize(q), common.l2_normalize(k)
        return q, k, v, conv_cache

    def log_decay(self, x):
        """None: DeltaNet has no decay (its forgetting is the delta rule's overwrite)."""
        return None

    def beta(self, x):
        """Write strength [B, T, H] in (0, 1)."""
        if not self.cfg.use_beta:
            return jnp.ones(x.shape[:2] + (self.n_heads,), jnp.float32)
        return jax.nn.sigmoid(self.b_proj(x).astype(jnp.float32))

    def output(self, o, x):
        """W_o (RMSNorm_head(o) [* swish(x W_gate)]): [B, T, H, V] -> [B, T, D]."""
        return common.head_output(self, o, x)

    def __call__(self, x, *, segment_ids=None, cache=None, pos=None):
        """x: [B, T, D]; segment_ids: [B, T] or None; cache: from init_cache or None."""
        q, k, v, conv_cache = self.qkv(x, segment_ids=segment_ids, cache=cache)
        state = None if cache is None else cache["state"]
        o, state = common.run_op(self.cfg, "delta_rule", q, k, v, self.beta(x).astype(q.dtype),
                                 scale=self.head_k ** -0.5, segment_ids=segment_ids, state=state)
        return self.output(o, x), common.updated_cache(cache, state, conv_cache)

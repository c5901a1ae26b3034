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


class DeltaNet(common.Mixer):
    """DeltaNet mixer. __call__(x [B, T, D]) -> (y [B, T, D], cache or None)."""

    name = "deltanet"

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        super().__init__(cfg)
        self.feature = cfg.knob(self.name, "feature_map")
        self.add_qkv_projections(rngs)
        if cfg.use_beta:
            self.b_proj = common.linear(cfg, cfg.d_model, self.n_heads, rngs=rngs)
        self.conv = common.short_conv(cfg, self.n_heads * (2 * self.head_k + self.head_v), rngs=rngs)
        self.add_output_block(rngs)

    def qkv(self, x, *, segment_ids=None, cache=None):
        """q, k [B, T, H, K] (activated, normalised), v [B, T, H, V], and the new conv cache."""
        q, k, v, conv_cache = self.qkv_heads(x, segment_ids=segment_ids, cache=cache,
                                             v_feature="silu")
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

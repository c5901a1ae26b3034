"""Mixture-of-Memories (Du et al. 2025, "MoM: Linear Sequence Modeling with Mixture-of-Memories").

M memories per head, each a gated-delta-rule state with its own key/value projections; a router
sends every token to k of them, and an optional shared memory (index M) takes every token:

    r_t = softmax(x_t W_r)                                  [B, T, M]      router probabilities
    I_t = top-k indices of r_t,  w_tm = r_tm / sum_{j in I_t} r_tj  (m in I_t; 0 elsewhere)
    q = l2norm(silu(conv(x W_q)))                           [B, T, H, K]   shared by the memories
    k_m, v_m = l2norm(silu(conv(x W_k^m))), silu(conv(x W_v^m))   [B, T, H, K], [B, T, H, V]
    beta_m = sigmoid(x W_b^m),  g_m = -exp(A_log_m) softplus(x W_a^m + dt_bias_m)   [B, T, H]
    S^m_t = exp(g_tm)(I - beta_tm k_tm k_tm^T) S^m_{t-1} + beta_tm k_tm v_tm^T   if m in I_t
    S^m_t = S^m_{t-1}                                                           otherwise
    o_t = sum_{m in I_t} w_tm S^m_t^T q_t / sqrt(K)  (+ S^shared_t^T q_t / sqrt(K))
    y = W_o (RMSNorm_head(o) * swish(x W_gate))

Exactly one `gated_delta_rule` call over H * M' memory-heads (M' = M + shared): a token that is not
routed to memory m has beta = 0 and g = 0 there, which leaves S^m unchanged. Memory-head index
h * M' + m. The router's Switch-Transformer load-balancing loss (`aux_loss`)

    L_aux = M * sum_m f_m P_m,   f_m = mean_t [m in I_t] / k,   P_m = mean_t r_tm

is 1 for a uniform router; the model adds `router_aux_weight * L_aux` (summed over MoM layers) to
the training loss (see `LanguageModel.__call__(..., return_aux=True)`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from research.config import ModelConfig
from research.layers import common


class MoM(common.Mixer):
    """Mixture-of-memories mixer. __call__(x [B, T, D]) -> (y [B, T, D], cache or None)."""

    name = "mom"

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        super().__init__(cfg)
        d, H = cfg.d_model, cfg.n_heads
        self.num_memories, self.top_k = cfg.num_memories, cfg.memory_top_k
        self.n_mem = cfg.num_memories + int(cfg.shared_memory)  # M'
        self.feature = cfg.knob(self.name, "feature_map")
        HK, HV, Mp = H * self.head_k, H * self.head_v, self.n_mem
        self.router = common.linear(cfg, d, cfg.num_memories, rngs=rngs, names=("embed", None))
        # k, v features ordered (H, M', K) and (H, M', V)
        self.add_qkv_projections(rngs, k_width=Mp * HK, v_width=Mp * HV)
        self.b_proj = common.linear(cfg, d, H * Mp, rngs=rngs)   # (H, M')
        self.a_proj = common.linear(cfg, d, H * Mp, rngs=rngs)
        self.A_log, self.dt_bias = common.mamba_decay_init(cfg, H * Mp, rngs)
        self.conv_channels = HK + Mp * (HK + HV)
        self.conv = common.short_conv(cfg, self.conv_channels, rngs=rngs)
        self.add_output_block(rngs)

    def state_size(self, seq_len: int | None = None) -> int:
        """H * M' * K * V floats per sequence (M' = num_memories + shared_memory)."""
        return self.n_heads * self.n_mem * self.head_k * self.head_v

    def init_cache(self, batch_size: int, max_length: int):
        """{"state": [B, H * M', K, V], "conv": [B, W-1, HK + M'(HK + HV)] (if conv)}, zeros."""
        state = jnp.zeros((batch_size, self.n_heads * self.n_mem, self.head_k, self.head_v),
                          jnp.float32)
        return common.recurrent_cache(self.conv, batch_size, state)

    def route(self, x):
        """(probabilities r [B, T, M], routed mask [B, T, M] bool, weights w [B, T, M]) for
        x [B, T, D]: top-k of r, renormalised over the k chosen (0 elsewhere)."""
        probs = jax.nn.softmax(self.router(x).astype(jnp.float32), axis=-1)
        top, idx = jax.lax.top_k(probs, self.top_k)
        chosen = jax.nn.one_hot(idx, self.num_memories, dtype=jnp.float32)  # [B, T, k, M]
        weights = jnp.einsum("btk,btkm->btm", top / jnp.sum(top, -1, keepdims=True), chosen)
        return probs, chosen.sum(-2) > 0, weights

    def aux_loss(self, x, segment_ids=None):
        """Switch load-balancing loss M * sum_m f_m P_m of the router on x [B, T, D] (float32
        scalar; 1 when balanced). Every position counts once."""
        probs, routed, _ = self.route(x)
        f = jnp.mean(routed.astype(jnp.float32), axis=(0, 1)) / self.top_k
        p = jnp.mean(probs, axis=(0, 1))
        return self.num_memories * jnp.sum(f * p)

    def __call__(self, x, *, segment_ids=None, cache=None, pos=None):
        """x: [B, T, D]; segment_ids: [B, T] or None; cache: from init_cache or None."""
        H, Mp, K, V = self.n_heads, self.n_mem, self.head_k, self.head_v
        B, T, _ = x.shape
        (q, k, v), conv_cache = common.conv_parts(
            self.conv, [self.q_proj(x), self.k_proj(x), self.v_proj(x)],
            segment_ids=segment_ids, cache=cache)
        q = common.feature_map_after_conv(self.feature, q.reshape(B, T, H, 1, K), self.conv)
        k = common.feature_map_after_conv(self.feature, k.reshape(B, T, H, Mp, K), self.conv)
        v = common.feature_map_after_conv("silu", v.reshape(B, T, H, Mp, V), self.conv)
        if self.cfg.qk_norm == "l2":
            q, k = common.l2_normalize(q), common.l2_normalize(k)
        q = jnp.broadcast_to(q, (B, T, H, Mp, K))
        _, routed, weights = self.route(x)
        if self.n_mem > self.num_memories:  # the shared memory takes every token, weight 1
            routed = jnp.concatenate([routed, jnp.ones((B, T, 1), bool)], axis=-1)
            weights = jnp.concatenate([weights, jnp.ones((B, T, 1), jnp.float32)], axis=-1)
        on = routed[:, :, None, :]  # [B, T, 1, M']
        beta = jnp.where(on, jax.nn.sigmoid(self.b_proj(x).astype(jnp.float32)).reshape(B, T, H, Mp), 0.0)
        a = self.a_proj(x).astype(jnp.float32) + self.dt_bias[...]
        g = jnp.where(on, (-jnp.exp(self.A_log[...]) * jax.nn.softplus(a)).reshape(B, T, H, Mp), 0.0)
        state = None if cache is None else cache["state"]
        o, state = common.run_op(
            self.cfg, "gated_delta_rule", q.reshape(B, T, H * Mp, K), k.reshape(B, T, H * Mp, K),
            v.reshape(B, T, H * Mp, V), g.reshape(B, T, H * Mp), beta.reshape(B, T, H * Mp).astype(q.dtype),
            scale=K ** -0.5, segment_ids=segment_ids, state=state)
        o = jnp.einsum("bthmv,btm->bthv", o.reshape(B, T, H, Mp, V).astype(jnp.float32),
                       weights).astype(o.dtype)
        return common.head_output(self, o, x), common.updated_cache(cache, state, conv_cache)

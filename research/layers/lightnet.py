"""LightNet (Qin et al. 2024, "You Only Scan Once"): linear attention with the "additive" decay.

    q, v = conv(x W_q), conv(x W_v)               [B, T, H, K], [B, T, H, V]   q: phi = silu
    l_t = x W_k                                   [B, T, H, K]   log-keys: k_t = exp(l_t) > 0
    z_t = z_{t-1} + k_t                           [B, T, H, K]   per key channel, z_0 = 0
    S_t = diag(z_{t-1} / z_t) S_{t-1} + (k_t / z_t) v_t^T,   o_t = S_t^T q_t / sqrt(K)
    y = W_o (RMSNorm_head(o) * swish(x W_gate))

So S_t = sum_{s <= t} (k_s / z_t) v_s^T: every key channel averages the values with weights
k_s / z_t (a softmax over the past along time, per channel). It is `gla` with

    g_t = log z_{t-1} - log z_t,   k'_t = k_t / z_t = exp(l_t - log z_t),

computed in log space: log z_t = logcumsumexp(l)_t (restarted at every segment start, continued
from the decode cache's log z), so no exp(l) or z is ever formed and the layer stays finite at any
length. At a segment's first token z_{t-1} = 0: the state there is empty, so g_t is set to 0.
Decode state: (S [B, H, K, V], log z [B, H, K]).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from research.config import ModelConfig
from research.layers import common

# log z of an empty accumulator (z = 0); finite so that no inf - inf arises in the gradients.
EMPTY_LOG_Z = -1e30


def segmented_logcumsumexp(x, starts, init):
    """log(sum_{s in segment(t), s <= t} exp(x_s)) along axis 1, restarting where `starts` is True.

    x: [B, T, ...] float32; starts: bool [B, T] (True at a segment's first token); init: [B, ...],
    the log-sum carried into t = 0 (ignored where starts[:, 0]; EMPTY_LOG_Z for none). Returns
    x's shape.
    """
    starts = jnp.broadcast_to(starts.reshape(starts.shape + (1,) * (x.ndim - 2)), x.shape)
    x = jnp.concatenate([init[:, None].astype(x.dtype), x], axis=1)
    starts = jnp.concatenate([jnp.ones_like(starts[:, :1]), starts], axis=1)

    def combine(a, b):
        (fa, va), (fb, vb) = a, b
        return fa | fb, jnp.where(fb, vb, jnp.logaddexp(va, vb))

    _, out = jax.lax.associative_scan(combine, (starts, x), axis=1)
    return out[:, 1:]


def segment_starts(segment_ids, batch: int, length: int):
    """bool [B, T]: True at t = 0 and wherever the segment id changes."""
    first = jnp.zeros((batch, length), bool).at[:, 0].set(True)
    if segment_ids is None:
        return first
    change = jnp.concatenate([jnp.zeros((batch, 1), bool),
                              segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    return first | change


class LightNet(common.Mixer):
    """LightNet mixer. __call__(x [B, T, D]) -> (y [B, T, D], cache or None)."""

    name = "lightnet"

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        super().__init__(cfg)
        self.feature = cfg.knob(self.name, "feature_map")
        self.add_qkv_projections(rngs)  # k_proj: the log-keys, outside the conv
        self.conv = common.short_conv(cfg, self.n_heads * (self.head_k + self.head_v), rngs=rngs)
        self.add_output_block(rngs)

    def state_size(self, seq_len: int | None = None) -> int:
        """H * K * (V + 1) floats per sequence: the state and the key normaliser log z."""
        return self.n_heads * self.head_k * (self.head_v + 1)

    def init_cache(self, batch_size: int, max_length: int):
        """{"state": ([B, H, K, V] zeros, log z [B, H, K] = EMPTY_LOG_Z), "conv": [B, W-1, HK+HV]}."""
        H, K = self.n_heads, self.head_k
        state = (jnp.zeros((batch_size, H, K, self.head_v), jnp.float32),
                 jnp.full((batch_size, H, K), EMPTY_LOG_Z, jnp.float32))
        return common.recurrent_cache(self.conv, batch_size, state)

    def gates(self, x, *, segment_ids=None, log_z0=None):
        """(g [B, T, H, K] log-decays, k' [B, T, H, K] = k_t / z_t, log z_T [B, H, K]) for x [B, T, D].

        log_z0: the carried log z [B, H, K] (decode) or None (empty at t = 0).
        """
        B, T, _ = x.shape
        logk = common.split_heads(self.k_proj(x).astype(jnp.float32), self.n_heads)
        starts = segment_starts(segment_ids, B, T)
        if log_z0 is None:
            log_z0 = jnp.full((B,) + logk.shape[2:], EMPTY_LOG_Z, jnp.float32)
        else:  # t = 0 continues the carried accumulator
            starts = starts.at[:, 0].set(False)
        log_z = segmented_logcumsumexp(logk, starts, log_z0)
        prev = jnp.concatenate([log_z0[:, None], log_z[:, :-1]], axis=1)  # log z_{t-1}
        # g = 0 where z_{t-1} = 0 (a segment's first token): the state there is empty anyway,
        # and the previous segment's z must not leak a positive "decay" into the op.
        empty = starts[..., None, None] | (prev <= EMPTY_LOG_Z / 2)
        g = jnp.where(empty, 0.0, prev - log_z)
        return g, jnp.exp(logk - log_z), log_z[:, -1]

    def __call__(self, x, *, segment_ids=None, cache=None, pos=None):
        """x: [B, T, D]; segment_ids: [B, T] or None; cache: from init_cache or None."""
        (q, v), conv_cache = self.project_heads(x, (self.q_proj, self.v_proj),
                                                segment_ids=segment_ids, cache=cache)
        q = common.feature_map_after_conv(self.feature, q, self.conv)
        state, log_z0 = (None, None) if cache is None else cache["state"]
        g, k, log_z = self.gates(x, segment_ids=segment_ids, log_z0=log_z0)
        o, state = common.run_op(self.cfg, "gla", q, k.astype(q.dtype), v, g,
                                 scale=self.head_k ** -0.5, segment_ids=segment_ids, state=state)
        new_state = None if cache is None else (state, log_z)
        return common.head_output(self, o, x), common.updated_cache(cache, new_state, conv_cache)

"""JRT-RNN's prefix linear attention (Arora et al. 2024, "Just read twice").

A prompt prefix of P tokens (per sequence, from the data) is read non-causally: every prefix
position reads the state of the WHOLE prefix; after it, causal linear-attention updates continue
from that state:

    q, k, v = phi(conv(x W_q)), phi(conv(x W_k)), conv(x W_v)     [B, T, H, K|V]   phi = elu + 1
    S_P = sum_{s < P} k_s v_s^T                                   the prefix state  [B, H, K, V]
    S_t = S_P                       for t < P                      (non-causal inside the prefix)
    S_t = S_P + sum_{P <= s <= t} k_s v_s^T   for t >= P          (causal after it)
    o_t = S_t^T q_t / sqrt(K),  y = W_o RMSNorm_head(o) (* swish(x W_gate))

With P = 0 this is causal linear attention. One `linear_attention` call computes it: the keys of
the prefix positions are zeroed and S_P is its initial state.

The prefix length reaches the layer as `prefix_length` int [B] (tasks emit it per example as the
key "prefix_length": MQAR's key-value context, set disjointness's two sets; the training loop and
the probes pass it through `LanguageModel(tokens, prefix_length=...)`). It counts from the start
of the row; with packed `segment_ids` only positions of the row's first segment belong to it.
Decode: the whole prefix must arrive in the first call on a cache (the prompt's prefill);
positions at or after P then update causally, and later calls may pass `prefix_length` or not.
(The paper's JRT-RNN also keeps separate encoder and decoder key/value projections and the Based
feature map; here one set of projections, and the feature map is `feature_map`.)
"""

from __future__ import annotations

import jax.numpy as jnp

from research.layers import common
from research.layers.gla import GLA


class JRT(GLA):
    """Prefix linear attention mixer. __call__(x [B, T, D], prefix_length=None) -> (y, cache)."""

    name = "jrt"
    forced_decay = "none"
    uses_prefix = True

    def __call__(self, x, *, segment_ids=None, cache=None, pos=None, prefix_length=None):
        """x: [B, T, D]; segment_ids: [B, T] or None; cache: from init_cache (with pos) or None;
        prefix_length: int [B] or None (no prefix)."""
        B, T, _ = x.shape
        q, k, v, conv_cache = self.qkv_heads(x, segment_ids=segment_ids, cache=cache)
        state = None if cache is None else cache["state"]
        if prefix_length is not None:
            start = 0 if cache is None else pos
            t = start + jnp.arange(T)
            in_prefix = t[None, :] < jnp.asarray(prefix_length, jnp.int32).reshape(B, 1)  # [B, T]
            if segment_ids is not None:
                in_prefix = in_prefix & (segment_ids == segment_ids[:, :1])
            m = in_prefix[..., None, None].astype(jnp.float32)
            s_prefix = jnp.einsum("bthk,bthv->bhkv", k.astype(jnp.float32) * m,
                                  v.astype(jnp.float32))
            state = s_prefix if state is None else state + s_prefix
            k = jnp.where(in_prefix[..., None, None], 0, k)
        o, state = common.run_op(self.cfg, "linear_attention", q, k, v, scale=self.qk_scale,
                                 segment_ids=segment_ids, state=state)
        if cache is None:
            state = None
        return common.head_output(self, o, x), common.updated_cache(cache, state, conv_cache)

"""TTT-Linear (Sun et al. 2024, "Learning to (Learn at Test Time): RNNs with Expressive Hidden
States"), computed by `ttt_linear`.

    q, k, v = conv(x W_q), conv(x W_k), conv(x W_v)     [B, T, H, K], [B, T, H, K], [B, T, H, V]
    q, k = l2norm(q), l2norm(k)
    eta = ttt_base_lr * sigmoid(x W_eta + b_eta) / b     [B, T, H]   (b = ttt_mini_batch)
    the hidden state W (K x V per head) takes one gradient step on sum_t eta_t ||W^T k_t - v_t||^2 / 2
    per mini-batch of b tokens, every gradient at the mini-batch's starting W; o_t = W_t^T q_t
    y = W_o (RMSNorm_head(o) * swish(x W_gate))

(`pallas_kernels.ttt_linear` has the exact recurrence.) Mini-batches are counted from each
segment's start, so a packed sequence equals its own run. The inner model is the plain linear
one (no inner LayerNorm / residual); W starts at zero in every sequence; keys and queries are
L2-normalised so that a mini-batch's step I - K^T diag(eta) K stays a contraction (sum eta <= 1).

Decode with a partial mini-batch: the cache holds W at the start of the current mini-batch, the
keys, values and step sizes of its tokens so far (at most b - 1, right-aligned) and their count
`fill`. A call with n new tokens re-feeds those tokens in front of the new ones (so the op's
mini-batches line up with the sequence's) from that W, and a second problem in the same op call
(the step sizes from the last mini-batch start on set to zero) gives the next starting W. The
outputs equal the full pass for any split.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

import pallas_kernels
from research.config import ModelConfig
from research.layers import common

F32 = jnp.float32


class TTTLinear(common.Mixer):
    """TTT-Linear mixer. __call__(x [B, T, D]) -> (y [B, T, D], cache or None)."""

    name = "ttt_linear"

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        super().__init__(cfg)
        self.mini_batch = cfg.ttt_mini_batch
        self.add_qkv_projections(rngs)
        self.eta_proj = common.linear(cfg, cfg.d_model, self.n_heads, rngs=rngs, bias=True)
        self.conv = common.short_conv(cfg, self.n_heads * (2 * self.head_k + self.head_v), rngs=rngs)
        self.add_output_block(rngs)

    def state_size(self, seq_len: int | None = None) -> int:
        """H * (K V + (b - 1)(K + V + 1)) floats per sequence: W and the partial mini-batch."""
        K, V, b = self.head_k, self.head_v, self.mini_batch
        return self.n_heads * (K * V + (b - 1) * (K + V + 1))

    def init_cache(self, batch_size: int, max_length: int):
        """{"state": W [B, H, K, V], "k": [B, b-1, H, K], "v": [B, b-1, H, V], "eta": [B, b-1, H],
        "fill": int32 [] (tokens of the current mini-batch so far), "conv": [B, W-1, 2HK+HV]}."""
        B, H, K, V, m = batch_size, self.n_heads, self.head_k, self.head_v, self.mini_batch - 1
        cache = common.recurrent_cache(self.conv, B, jnp.zeros((B, H, K, V), F32))
        cache.update(k=jnp.zeros((B, m, H, K), F32), v=jnp.zeros((B, m, H, V), F32),
                     eta=jnp.zeros((B, m, H), F32), fill=jnp.zeros((), jnp.int32))
        return cache

    def inputs(self, x, *, segment_ids=None, cache=None):
        """q, k [B, T, H, K] (normalised), v [B, T, H, V], eta [B, T, H] float32, conv cache."""
        (q, k, v), conv_cache = self.project_heads(x, (self.q_proj, self.k_proj, self.v_proj),
                                                   segment_ids=segment_ids, cache=cache)
        q, k = common.l2_normalize(q), common.l2_normalize(k)
        eta = jax.nn.sigmoid(self.eta_proj(x).astype(F32)) * (self.cfg.ttt_base_lr / self.mini_batch)
        return q, k, v, eta, conv_cache

    def _op(self, q, k, v, eta, *, segment_ids=None, state=None):
        T = q.shape[1]
        chunk = min(self.cfg.chunk_size, common.next_pow2(T)) if T <= 16 else self.cfg.chunk_size
        return pallas_kernels.ttt_linear(
            q, k, v, eta, mini_batch_size=self.mini_batch, scale=1.0, initial_state=state,
            output_final_state=state is not None, segment_ids=segment_ids, chunk_size=chunk,
            impl=self.cfg.impl)

    def _decode(self, q, k, v, eta, cache):
        """The cached call (see the module docstring): returns (o [B, n, H, V], new cache entries)."""
        b, n = self.mini_batch, q.shape[1]
        p = cache["fill"]
        kv = [jnp.concatenate([cache[name].astype(F32), new.astype(F32)], axis=1)
              for name, new in (("k", k), ("v", v), ("eta", eta))]
        qq = jnp.concatenate([jnp.zeros(cache["k"].shape, F32), q.astype(F32)], axis=1)
        # Rolled so that the buffered tokens of the open mini-batch start at position 0; the empty
        # buffer slots (zeros: no effect on W) move to the end.
        qq, kk, vv, ee = (jnp.roll(a, -(b - 1 - p), axis=1) for a in (qq, *kv))
        L = qq.shape[1]
        boundary = b * ((p + n) // b)  # the last mini-batch start, relative to the rolled input
        ee2 = jnp.where((jnp.arange(L) < boundary)[None, :, None], ee, 0.0)
        two = lambda a: jnp.concatenate([a, a], axis=0)  # noqa: E731
        W = cache["state"]
        o, Wn = self._op(two(qq), two(kk), two(vv), jnp.concatenate([ee, ee2], axis=0),
                         state=two(W))
        B = q.shape[0]
        o = jax.lax.dynamic_slice_in_dim(o[:B], p, n, axis=1).astype(v.dtype)
        fill = (p + n) % b
        keep = (jnp.arange(b - 1) >= b - 1 - fill)[None, :, None]
        tail = {name: jnp.where(keep[..., None] if a.ndim == 4 else keep, a[:, n:], 0.0)
                for name, a in zip(("k", "v", "eta"), kv)}
        return o, dict(state=Wn[B:], fill=fill.astype(jnp.int32), **tail)

    def __call__(self, x, *, segment_ids=None, cache=None, pos=None):
        """x: [B, T, D]; segment_ids: [B, T] or None; cache: from init_cache or None."""
        q, k, v, eta, conv_cache = self.inputs(x, segment_ids=segment_ids, cache=cache)
        if cache is None:
            o, _ = self._op(q, k, v, eta, segment_ids=segment_ids)
            return common.head_output(self, o, x), None
        o, new = self._decode(q, k, v, eta, cache)
        if conv_cache is not None:
            new["conv"] = conv_cache
        return common.head_output(self, o, x), new

"""Softmax attention (causal, RoPE) and its sliding-window variant, through
`jax.nn.dot_product_attention` (cuDNN on GPU for bf16 unpacked full passes, XLA otherwise; see
`ModelConfig.attention_impl`).

    q, k, v = conv(x W_q), conv(x W_k), conv(x W_v)      [B, T, H, K]   (conv only if conv_size > 0)
    q, k = rope(q), rope(k)
    o_i = sum_{j <= i, i - j < window, same segment} softmax_j(q_i . k_j / sqrt(K)) v_j
    y = W_o o

Decode cache: keys and values [B, max_length, H, K] written at the running position (global), or
the last window_size positions' keys and values (sliding window).

Under an ambient mesh with a `sequence` axis (`jax.set_mesh`), each sequence shard attends from its
own queries to the keys and values all-gathered over the axis (LASP-2's recipe for the softmax
layers of a hybrid), with the causal mask offset to the shard's positions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from research.config import ModelConfig
from research.layers import common


def rope(x, positions, theta: float):
    """Rotary embedding (GPT-NeoX halves) of x [B, T, H, D] at int positions [T]; an odd last
    channel is left as is."""
    D = x.shape[-1]
    half = D // 2
    if half == 0:
        return x
    freqs = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
    ang = positions.astype(jnp.float32)[:, None] * freqs  # [T, half]
    cos, sin = jnp.cos(ang)[:, None, :], jnp.sin(ang)[:, None, :]
    x32 = x.astype(jnp.float32)
    x1, x2 = x32[..., :half], x32[..., half:2 * half]
    out = jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos, x32[..., 2 * half:]], axis=-1)
    return out.astype(x.dtype)


class Attention(common.Mixer):
    """Causal softmax attention mixer. __call__(x [B, T, D]) -> (y [B, T, D], cache or None)."""

    name = "attention"
    window: int | None = None

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        super().__init__(cfg)
        self.add_qkv_projections(rngs)
        self.conv = common.short_conv(cfg, self.n_heads * (2 * self.head_k + self.head_v), rngs=rngs)
        self.add_output_block(rngs, norm=False)

    def state_size(self, seq_len: int | None = None) -> int:
        """H * (K + V) * L floats: the keys and values of L = seq_len positions (window if smaller)."""
        if seq_len is None and self.window is None:
            raise ValueError("seq_len is required for attention: its state grows with length")
        length = self.window if seq_len is None else min(seq_len, self.window or seq_len)
        return self.n_heads * (self.head_k + self.head_v) * length

    def init_cache(self, batch_size: int, max_length: int):
        """{"k": [B, S, H, K], "v": [B, S, H, V], "conv": [B, W-1, 2HK+HV] (if conv)}, zeros.

        Global attention: S = max_length, written at the running position. Sliding window:
        S = window_size, the keys and values of the last S positions (a shifting buffer), so the
        cache does not grow with max_length.
        """
        H, dt = self.n_heads, common.compute_dtype(self.cfg)
        S = max_length if self.window is None else self.window
        cache = {"k": jnp.zeros((batch_size, S, H, self.head_k), dt),
                 "v": jnp.zeros((batch_size, S, H, self.head_v), dt)}
        if self.conv is not None:
            cache["conv"] = self.conv.init_cache(batch_size)
        return cache

    def __call__(self, x, *, segment_ids=None, cache=None, pos=None):
        """x: [B, T, D]; segment_ids: [B, T] or None; cache: from init_cache (with pos, the number
        of tokens already fed through it) or None."""
        H = self.n_heads
        B, T, _ = x.shape
        (q, k, v), conv_cache = self.project_heads(x, (self.q_proj, self.k_proj, self.v_proj),
                                                   segment_ids=segment_ids, cache=cache)
        start = 0 if cache is None else pos
        qpos = start + jnp.arange(T)
        q, k = rope(q, qpos, self.cfg.rope_theta), rope(k, qpos, self.cfg.rope_theta)
        scale = self.head_k ** -0.5
        new_cache = None
        split = common.ambient_split(B, T, H) if cache is None else None
        if split is not None and split.sequence is not None:
            o = self._sequence_sharded(q, k, v, segment_ids, split, scale)
        elif cache is None:
            if segment_ids is None:
                window = None if self.window is None else (self.window - 1, 0)
                o = jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=True,
                                                 local_window_size=window,
                                                 implementation=self._implementation(q))
            else:
                mask = self._mask(qpos, qpos) & (segment_ids[:, :, None] == segment_ids[:, None, :])
                o = jax.nn.dot_product_attention(q, k, v, scale=scale, mask=mask[:, None])
        else:
            dt = cache["k"].dtype
            if self.window is None:  # write at pos; keys at positions 0 .. S-1
                kc = jax.lax.dynamic_update_slice(cache["k"], k.astype(dt), (0, pos, 0, 0))
                vc = jax.lax.dynamic_update_slice(cache["v"], v.astype(dt), (0, pos, 0, 0))
                keys, values, kpos = kc, vc, jnp.arange(kc.shape[1])
                new_cache = {"k": kc, "v": vc}
            else:  # buffer of positions pos-S .. pos-1, then this chunk; keep the last S
                S = cache["k"].shape[1]
                keys = jnp.concatenate([cache["k"], k.astype(dt)], axis=1)
                values = jnp.concatenate([cache["v"], v.astype(dt)], axis=1)
                kpos = pos - S + jnp.arange(S + T)
                new_cache = {"k": keys[:, -S:], "v": values[:, -S:]}
            mask = self._mask(qpos, kpos) & (kpos >= 0)[None, :]
            o = jax.nn.dot_product_attention(q, keys.astype(q.dtype), values.astype(q.dtype),
                                             scale=scale, mask=mask[None, None])
            if conv_cache is not None:
                new_cache["conv"] = conv_cache
        o = common.merge_heads(o)
        if self.use_output_gate:
            o = o * jax.nn.silu(self.g_proj(x))
        return self.o_proj(o), new_cache

    def _sequence_sharded(self, q, k, v, segment_ids, split, scale):
        """Attention with T split over the ambient mesh's sequence axis (LASP-2's hybrid recipe):
        each shard keeps its queries [B, T/P, H, K] and all-gathers the keys and values (and
        segment ids) over the axis; its queries sit at positions r T/P + i (shard r), so the
        causal (and window) mask is offset by r T/P. q, k, v: [B, T, H, K|V] (after RoPE)."""
        from jax.sharding import PartitionSpec as P
        seq = split.sequence
        spec = P(split.batch, seq, split.tensor, None)

        def body(q, k, v, *seg):
            Tl = q.shape[1]
            kf = jax.lax.all_gather(k, seq, axis=1, tiled=True)
            vf = jax.lax.all_gather(v, seq, axis=1, tiled=True)
            qpos = jax.lax.axis_index(seq) * Tl + jnp.arange(Tl)
            mask = self._mask(qpos, jnp.arange(kf.shape[1]))[None]  # [1, Tl, T]
            if seg:
                segf = jax.lax.all_gather(seg[0], seq, axis=1, tiled=True)
                mask = mask & (seg[0][:, :, None] == segf[:, None, :])
            return jax.nn.dot_product_attention(q, kf, vf, scale=scale, mask=mask[:, None])

        args, specs = [q, k, v], [spec, spec, spec]
        if segment_ids is not None:
            args.append(segment_ids)
            specs.append(P(split.batch, seq))
        return jax.shard_map(body, mesh=split.mesh, in_specs=tuple(specs), out_specs=spec)(*args)

    def _implementation(self, q) -> str:
        """"cudnn" or "xla" for the causal full pass (see ModelConfig.attention_impl)."""
        impl = self.cfg.attention_impl
        if impl != "auto":
            return impl
        ok = (jax.default_backend() == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16)
              and self.head_k == self.head_v and self.head_k % 8 == 0 and self.head_k <= 128)
        return "cudnn" if ok else "xla"

    def _mask(self, qpos, kpos):
        """[Tq, Tk] bool: key j visible from query i (causal, within the window)."""
        keep = kpos[None, :] <= qpos[:, None]
        if self.window is not None:
            keep = keep & (kpos[None, :] > qpos[:, None] - self.window)
        return keep


class SlidingWindowAttention(Attention):
    """Attention over the last `window_size` positions (the current one included)."""

    name = "sliding_window_attention"

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        super().__init__(cfg, rngs=rngs)
        self.window = cfg.window_size

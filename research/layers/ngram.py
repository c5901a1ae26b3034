"""Static n-gram layers (Akyürek et al. 2024, "In-Context Language Learning: Architectures and
Algorithms"): an attention head whose pattern is fixed by the tokens.

Position t attends uniformly to the earlier positions r (1 <= r <= t) whose previous n-1 tokens
equal t's last n-1 tokens, and reads the (value-)embedding of the token at r, i.e. of the token
that FOLLOWED each earlier occurrence of t's context:

    match(t, r) = [x_{r-1-j} = x_{t-j} for j = 0 .. n-2],  r <= t,  both contexts in t's segment
    a_tr = match(t, r) / sum_r' match(t, r')                      (0 where nothing matches)
    y_t = W_o sum_r a_tr E_v[x_r]                                 [B, T, D]

n = 1 reads the mean value-embedding of tokens 1..t; n = 2 the tokens that followed earlier copies
of x_t (an induction head); n = 3 those that followed the bigram (x_{t-1}, x_t). Shapes: tokens
[B, T], E_v [vocab, D], W_o [D, D]. O(T^2) per layer. In `LanguageModel` the layers of
`ModelConfig.ngram_layers` sit after the embedding, each a residual `x + ngram(tokens)`.

Decode cache: the tokens seen so far, [B, max_length] int32 (written at the running position).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from research.config import ModelConfig
from research.layers import common


class NGram(nnx.Module):
    """n-gram layer. __call__(tokens [B, T], ...) -> (y [B, T, D], cache or None)."""

    name = "ngram"

    def __init__(self, cfg: ModelConfig, n: int, *, rngs: nnx.Rngs):
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        self.cfg, self.n = cfg, n
        self.value_embed = nnx.Param(
            nnx.initializers.normal(cfg.init_std)(rngs.params(), (cfg.vocab_size, cfg.d_model)),
            **common.axes("vocab", "embed"))
        self.o_proj = common.linear(cfg, cfg.d_model, cfg.d_model, rngs=rngs,
                                    names=("embed", "embed"))

    def state_size(self, seq_len: int | None = None) -> int:
        """seq_len: the layer keeps every token seen (ints), like attention's keys and values."""
        if seq_len is None:
            raise ValueError("seq_len is required for n-gram layers: they keep every token")
        return int(seq_len)

    def init_cache(self, batch_size: int, max_length: int):
        """{"tokens": [B, max_length] int32 zeros}."""
        return {"tokens": jnp.zeros((batch_size, max_length), jnp.int32)}

    def weights(self, buf, seg, qpos):
        """The attention a [B, Tq, S] of queries at positions qpos [Tq] over the positions
        0..S-1 of `buf` (tokens [B, S]; seg [B, S] segment ids)."""
        S = buf.shape[1]
        r = jnp.arange(S)
        # first position of each position's segment
        change = jnp.concatenate([jnp.ones((buf.shape[0], 1), bool), seg[:, 1:] != seg[:, :-1]], 1)
        seg_start = jax.lax.cummax(jnp.where(change, r[None, :], 0), axis=1)  # [B, S]
        qseg, qstart = seg[:, qpos], seg_start[:, qpos]                       # [B, Tq]
        keep = (r[None, None, :] <= qpos[None, :, None]) & (r[None, None, :] >= 1)
        keep = keep & (seg[:, None, :] == qseg[:, :, None])
        keep = keep & (r[None, None, :] - 1 >= qstart[:, :, None])            # r-1 in t's segment
        for j in range(self.n - 1):
            qj, kj = qpos - j, r - 1 - j                                      # context positions
            keep = keep & (qj >= qstart)[:, :, None]
            keep = keep & (kj[None, None, :] >= qstart[:, :, None])
            qtok = buf[:, jnp.clip(qj, 0, S - 1)]                              # [B, Tq]
            ktok = buf[:, jnp.clip(kj, 0, S - 1)]                              # [B, S]
            keep = keep & (qtok[:, :, None] == ktok[:, None, :])
        a = keep.astype(jnp.float32)
        return a / jnp.maximum(a.sum(-1, keepdims=True), 1.0)

    def __call__(self, tokens, *, segment_ids=None, cache=None, pos=None):
        """tokens: int [B, T]; segment_ids: [B, T] or None; cache: from init_cache (with pos, the
        number of tokens already fed through it) or None."""
        B, T = tokens.shape
        tokens = tokens.astype(jnp.int32)
        if cache is None:
            buf, start, new_cache = tokens, 0, None
            seg = jnp.zeros_like(tokens) if segment_ids is None else segment_ids
        else:
            buf = jax.lax.dynamic_update_slice(cache["tokens"], tokens, (0, pos))
            start, new_cache = pos, {"tokens": buf}
            seg = jnp.zeros_like(buf)
        a = self.weights(buf, seg, start + jnp.arange(T))
        values = jnp.take(self.value_embed[...], buf, axis=0)                  # [B, S, D]
        y = jnp.einsum("bts,bsd->btd", a, values.astype(jnp.float32))
        return self.o_proj(y.astype(common.compute_dtype(self.cfg))), new_cache

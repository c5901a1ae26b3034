"""The language model: embedding, pre-norm blocks (mixer + gated MLP), final norm, head.

    x = embed(tokens)                                    [B, T, D]
    for each layer:  x = x + mixer(norm(x));  x = x + mlp(norm(x))
    logits = head(norm(x))                               [B, T, L]   (float32)

Decode: `cache = model.init_cache(B, S)`, then `logits, cache = model(tokens_chunk, cache=cache)`
for chunks of any length n (prefill) or n = 1; the outputs equal the full pass.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from research.config import ModelConfig
from research.layers import MIXER_CLASSES, common


class Block(nnx.Module):
    """Pre-norm residual block: x + mixer(norm(x)), then + mlp(norm(x)). x: [B, T, D]."""

    def __init__(self, cfg: ModelConfig, mixer: str, *, rngs: nnx.Rngs):
        self.mixer_name = mixer
        self.mixer_norm = common.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mixer = MIXER_CLASSES[mixer](cfg, rngs=rngs)
        self.mlp_norm = common.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = common.GatedMLP(cfg, rngs=rngs)

    def __call__(self, x, *, segment_ids=None, cache=None, pos=None):
        h, cache = self.mixer(self.mixer_norm(x), segment_ids=segment_ids, cache=cache, pos=pos)
        x = x + h
        x = x + self.mlp(self.mlp_norm(x))
        return x, cache


def _block_forward(block: Block, x, segment_ids):
    return block(x, segment_ids=segment_ids)[0]


class LanguageModel(nnx.Module):
    """Causal language model over `config.layer_mixers()`.

    Example:
      >>> cfg = ModelConfig(mixer="gla", vocab_size=256, d_model=128, n_layers=2, n_heads=2)
      >>> model = LanguageModel(cfg, rngs=nnx.Rngs(0))
      >>> logits = model(tokens)                                   # [B, T] -> [B, T, vocab]
      >>> cache = model.init_cache(batch_size=B, max_length=T)
      >>> step_logits, cache = model(tokens[:, :n], cache=cache)  # prefill / decode
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        if not isinstance(config, ModelConfig):
            raise ValueError(f"config must be a research.ModelConfig, got {type(config).__name__}")
        self.config = config
        cfg = config
        self.embed = nnx.Embed(cfg.vocab_size, cfg.d_model, dtype=common.compute_dtype(cfg),
                               param_dtype=jnp.float32,
                               embedding_init=nnx.initializers.normal(cfg.init_std),
                               embedding_metadata=common.axes("vocab", "embed"), rngs=rngs)
        self.blocks = nnx.List([Block(cfg, m, rngs=rngs) for m in cfg.layer_mixers()])
        self.final_norm = common.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        if not cfg.tie_embeddings:
            self.lm_head = common.linear(cfg, cfg.d_model, cfg.vocab_size, rngs=rngs,
                                         names=("embed", "vocab"))

    # ------------------------------------------------------------------ forward
    def __call__(self, tokens, segment_ids=None, cache=None):
        """tokens: int [B, T]; segment_ids: int [B, T] or None (packed sequences: no state, conv or
        attention crosses a change of id); cache: from `init_cache` or None.

        Returns float32 logits [B, T, vocab] or, with a cache, (logits, new cache).
        """
        tokens = jnp.asarray(tokens)
        if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f"tokens must be an integer array [B, T], got {tokens.dtype} {tokens.shape}")
        B, T = tokens.shape
        if segment_ids is not None:
            segment_ids = jnp.asarray(segment_ids)
            if segment_ids.shape != (B, T) or not jnp.issubdtype(segment_ids.dtype, jnp.integer):
                raise ValueError(f"segment_ids must be an integer array of shape {(B, T)} like tokens, "
                                 f"got {segment_ids.dtype} {segment_ids.shape}")
            if cache is not None:
                raise ValueError("segment_ids and cache cannot be combined: decode one sequence per row")
            segment_ids = segment_ids.astype(jnp.int32)
        x = self.embed(tokens)
        if cache is None:
            for block in self.blocks:
                if self.config.remat:
                    x = nnx.remat(_block_forward)(block, x, segment_ids)
                else:
                    x = _block_forward(block, x, segment_ids)
            return self._logits(x)
        self._check_cache(cache, B, T)
        pos = cache["pos"]
        new_layers = []
        for block, layer_cache in zip(self.blocks, cache["layers"]):
            x, layer_cache = block(x, cache=layer_cache, pos=pos)
            new_layers.append(layer_cache)
        return self._logits(x), {"pos": pos + T, "layers": new_layers}

    def _logits(self, x):
        x = self.final_norm(x)
        if self.config.tie_embeddings:
            logits = self.embed.attend(x)
        else:
            logits = self.lm_head(x)
        return logits.astype(jnp.float32)

    def _check_cache(self, cache, batch_size: int, n_new: int) -> None:
        if not isinstance(cache, dict) or set(cache) != {"pos", "layers"} or len(cache["layers"]) != len(self.blocks):
            raise ValueError("cache must come from model.init_cache(batch_size, max_length)")
        leaves = jax.tree.leaves(cache["layers"])
        if leaves and leaves[0].shape[0] != batch_size:
            raise ValueError(f"cache was made for batch_size={leaves[0].shape[0]}, tokens have batch {batch_size}")
        try:  # a concrete position (outside jit) is checked against global attention's cache length
            pos = int(cache["pos"])
        except Exception:
            return
        for block, layer in zip(self.blocks, cache["layers"]):
            if block.mixer_name == "attention" and pos + n_new > layer["k"].shape[1]:
                raise ValueError(f"cache holds max_length={layer['k'].shape[1]} positions; {pos} are "
                                 f"used and tokens add {n_new}: make the cache with a larger max_length")

    # ------------------------------------------------------------------ decode cache, sizes
    def init_cache(self, batch_size: int, max_length: int):
        """A zero decode cache: {"pos": int32 [], "layers": [per-layer dict]}.

        Recurrent layers hold their state ([B, H, K, V], a pair for gsa) and conv tail [B, W-1, C];
        attention layers hold keys and values [B, max_length, H, K|V]. `max_length` bounds the total
        number of tokens fed through the cache (attention only; recurrent layers do not grow).
        """
        for name, v in (("batch_size", batch_size), ("max_length", max_length)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        return {
            "pos": jnp.zeros((), jnp.int32),
            "layers": [b.mixer.init_cache(batch_size, max_length) for b in self.blocks],
        }

    def state_size(self, seq_len: int | None = None) -> int:
        """Total floats of decode state per sequence over all layers (Zoology's count).

        Attention layers' state grows with length: pass `seq_len` when the model has any.
        """
        if seq_len is None and any(b.mixer_name == "attention" for b in self.blocks):
            raise ValueError("seq_len is required: this model has attention layers, whose state grows "
                             f"with length (layers {self.config.layer_mixers()})")
        return int(sum(b.mixer.state_size(seq_len) for b in self.blocks))


def count_params(config: ModelConfig) -> int:
    """Number of parameters of `LanguageModel(config)`, computed with abstract shapes (no memory)."""
    abstract = nnx.eval_shape(lambda: LanguageModel(config, rngs=nnx.Rngs(0)))
    return int(sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param))))

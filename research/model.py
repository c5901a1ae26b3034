"""The language model: embedding, pre-norm blocks (mixer + gated MLP), final norm, head.

    x = embed(tokens)                                    [B, T, D]
    for each n in ngram_layers:  x = x + ngram_n(tokens)      (static n-gram layers, if any)
    for each layer:  x = x + mixer(norm(x));  x = x + mlp(norm(x))
    logits = head(norm(x))                               [B, T, vocab]   (float32)

Decode: `cache = model.init_cache(B, S)`, then `logits, cache = model(tokens_chunk, cache=cache)`
for chunks of any length n (prefill) or n = 1; the outputs equal the full pass.

`prefix_length` int [B] (from the data: the tasks' "prefix_length") is the prompt prefix that
prefix-attention mixers (`jrt`) read non-causally; other mixers ignore it. `return_aux=True`
also returns {"aux_loss": float32 []}: the sum over layers of `router_aux_weight` times each
routed mixer's (`mom`) load-balancing loss, which the training loss adds.

`return_hidden=True` returns h = norm(x) [B, T, D] (the final norm's output, in the compute
dtype) in place of the logits, and `model.logits(h)` applies the head to any slice of it: the
trainer's chunked cross-entropy (`train.loss_chunk_size`) computes the logits one chunk of T at a
time so that the [B, T, vocab] array is never whole.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from research.config import ModelConfig
from research.layers import MIXER_CLASSES, common
from research.layers.ngram import NGram


class Block(nnx.Module):
    """Pre-norm residual block: x + mixer(norm(x)), then + mlp(norm(x)). x: [B, T, D]."""

    def __init__(self, cfg: ModelConfig, mixer: str, *, rngs: nnx.Rngs):
        self.mixer_name = mixer
        self.mixer_norm = common.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mixer = MIXER_CLASSES[mixer](cfg, rngs=rngs)
        self.mlp_norm = common.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = common.GatedMLP(cfg, rngs=rngs)

    def __call__(self, x, *, segment_ids=None, cache=None, pos=None, prefix_length=None):
        kw = {"prefix_length": prefix_length} if getattr(self.mixer, "uses_prefix", False) else {}
        x = common.shard_activations(x)  # under a mesh: B over data x fsdp, T over sequence
        h, cache = self.mixer(self.mixer_norm(x), segment_ids=segment_ids, cache=cache, pos=pos, **kw)
        x = common.shard_activations(x + h)
        x = x + self.mlp(self.mlp_norm(x))
        return common.shard_activations(x), cache


    def aux_loss(self, x, segment_ids=None):
        """The mixer's auxiliary loss on this block's input x [B, T, D] (0 if it has none)."""
        if not hasattr(self.mixer, "aux_loss"):
            return jnp.zeros((), jnp.float32)
        return self.mixer.aux_loss(self.mixer_norm(x), segment_ids)


def _block_forward(block: Block, x, segment_ids, prefix_length=None):
    return block(x, segment_ids=segment_ids, prefix_length=prefix_length)[0]


_SAVED_PRIMITIVES = frozenset({"dot_general", "pallas_call"})


def save_dots_and_kernels(prim, *_, **__) -> bool:
    """A `jax.checkpoint` policy: keep the outputs of matmuls and Pallas kernels (the kernels'
    residuals among them) for the backward and recompute everything else there: norms, the short
    conv, activations, casts to float32 and layout copies, which are cheap to redo but, saved,
    cost several [B, T, D]-sized buffers per layer."""
    return prim.name in _SAVED_PRIMITIVES


REMAT_POLICIES = {"none": None, "save_dots_and_kernels": save_dots_and_kernels}


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
        self.ngrams = nnx.List([NGram(cfg, n, rngs=rngs) for n in cfg.ngram_layers])
        self.blocks = nnx.List([Block(cfg, m, rngs=rngs) for m in cfg.layer_mixers()])
        self.final_norm = common.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        if not cfg.tie_embeddings:
            self.lm_head = common.linear(cfg, cfg.d_model, cfg.vocab_size, rngs=rngs,
                                         names=("embed", "vocab"))

    # ------------------------------------------------------------------ forward
    def __call__(self, tokens, segment_ids=None, cache=None, prefix_length=None,
                 return_aux: bool = False, return_hidden: bool = False, remat_policy=None):
        """tokens: int [B, T]; segment_ids: int [B, T] or None (packed sequences: no state, conv or
        attention crosses a change of id); cache: from `init_cache` or None; prefix_length: int
        [B] or None (see the module docstring; with a cache, the prefix must lie in this call or
        an earlier one); return_aux: also return the auxiliary losses (not with a cache);
        return_hidden: return the final norm's output h [B, T, D] instead of the logits
        (`logits(h)` gives them; not with a cache); remat_policy: a `jax.checkpoint` policy
        (e.g. `save_dots_and_kernels`) that each block is checkpointed with, so that what it
        does not save is recomputed in the backward; None: `config.remat` decides (every block
        recomputed whole, or nothing).

        Returns float32 logits [B, T, vocab]; with a cache, (logits, new cache); with return_aux,
        (logits, {"aux_loss": float32 []}); with return_hidden, h in place of the logits.
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
        if prefix_length is not None:
            prefix_length = jnp.asarray(prefix_length)
            if prefix_length.shape != (B,) or not jnp.issubdtype(prefix_length.dtype, jnp.integer):
                raise ValueError(f"prefix_length must be an integer array of shape {(B,)}, got "
                                 f"{prefix_length.dtype} {prefix_length.shape}")
            prefix_length = prefix_length.astype(jnp.int32)
        if return_aux and cache is not None:
            raise ValueError("return_aux and cache cannot be combined: aux losses are for training")
        if return_hidden and cache is not None:
            raise ValueError("return_hidden and cache cannot be combined: the hidden states are "
                             "for the training loss")
        x = self.embed(tokens)
        if cache is None:
            for ngram in self.ngrams:
                x = x + ngram(tokens, segment_ids=segment_ids)[0].astype(x.dtype)
            aux = jnp.zeros((), jnp.float32)
            for block in self.blocks:
                if return_aux:
                    aux = aux + self.config.router_aux_weight * block.aux_loss(x, segment_ids)
                if remat_policy is not None or self.config.remat:  # policy None: recompute all
                    x = nnx.remat(_block_forward, policy=remat_policy)(block, x, segment_ids,
                                                                       prefix_length)
                else:
                    x = _block_forward(block, x, segment_ids, prefix_length)
            out = self.final_norm(x) if return_hidden else self._logits(x)
            return (out, {"aux_loss": aux}) if return_aux else out
        self._check_cache(cache, B, T)
        pos = cache["pos"]
        new_cache = {"pos": pos + T, "layers": []}
        if self.ngrams:
            new_cache["ngram"] = []
            for ngram, ngram_cache in zip(self.ngrams, cache["ngram"]):
                y, ngram_cache = ngram(tokens, cache=ngram_cache, pos=pos)
                x = x + y.astype(x.dtype)
                new_cache["ngram"].append(ngram_cache)
        for block, layer_cache in zip(self.blocks, cache["layers"]):
            x, layer_cache = block(x, cache=layer_cache, pos=pos, prefix_length=prefix_length)
            new_cache["layers"].append(layer_cache)
        return self._logits(x), new_cache

    def _logits(self, x):
        return self.logits(self.final_norm(x))

    def logits(self, h):
        """The head on h [..., D] (the final norm's output, `return_hidden=True`): float32
        logits [..., vocab]."""
        if self.config.tie_embeddings:
            logits = self.embed.attend(h)
        else:
            logits = self.lm_head(h)
        return logits.astype(jnp.float32)

    def _check_cache(self, cache, batch_size: int, n_new: int) -> None:
        keys = {"pos", "layers", "ngram"} if self.ngrams else {"pos", "layers"}
        if (not isinstance(cache, dict) or set(cache) != keys or len(cache["layers"]) != len(self.blocks)
                or len(cache.get("ngram", ())) != len(self.ngrams)):
            raise ValueError("cache must come from model.init_cache(batch_size, max_length)")
        leaves = jax.tree.leaves(cache["layers"])
        if leaves and leaves[0].shape[0] != batch_size:
            raise ValueError(f"cache was made for batch_size={leaves[0].shape[0]}, tokens have batch {batch_size}")
        try:  # a concrete position (outside jit) is checked against global attention's cache length
            pos = int(cache["pos"])
        except Exception:
            return
        held = [layer["k"].shape[1] for block, layer in zip(self.blocks, cache["layers"])
                if block.mixer_name == "attention"]
        held += [c["tokens"].shape[1] for c in cache.get("ngram", ())]
        for n in held:
            if pos + n_new > n:
                raise ValueError(f"cache holds max_length={n} positions; {pos} are "
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
        cache = {
            "pos": jnp.zeros((), jnp.int32),
            "layers": [b.mixer.init_cache(batch_size, max_length) for b in self.blocks],
        }
        if self.ngrams:
            cache["ngram"] = [g.init_cache(batch_size, max_length) for g in self.ngrams]
        return cache

    def state_size(self, seq_len: int | None = None) -> int:
        """Total floats of decode state per sequence over all layers (Zoology's count).

        Attention and n-gram layers' state grows with length: pass `seq_len` when the model has any
        (an n-gram layer counts the seq_len tokens it keeps).
        """
        if seq_len is None and (self.ngrams or any(b.mixer_name == "attention" for b in self.blocks)):
            raise ValueError("seq_len is required: this model has attention or n-gram layers, whose "
                             f"state grows with length (layers {self.config.layer_mixers()}, "
                             f"ngram_layers {self.config.ngram_layers})")
        return int(sum(b.mixer.state_size(seq_len) for b in self.blocks)
                   + sum(g.state_size(seq_len) for g in self.ngrams))


def count_params(config: ModelConfig) -> int:
    """Number of parameters of `LanguageModel(config)`, computed with abstract shapes (no memory)."""
    abstract = nnx.eval_shape(lambda: LanguageModel(config, rngs=nnx.Rngs(0)))
    return int(sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param))))

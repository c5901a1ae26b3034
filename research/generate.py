"""Sampling from a `LanguageModel`: chunked prefill of the prompt, then one token per step, all jitted.

    tokens = generate(model, prompt, max_new_tokens=64, temperature=0.8, top_k=40, rng=jax.random.key(0))
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx


def sample_logits(logits, rng, *, temperature: float, top_k: int | None):
    """One token per row from logits [B, L]: greedy when temperature == 0, else softmax(logits / T)
    restricted to the top_k largest logits (all when top_k is None). Returns int32 [B]."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    if top_k is not None:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "temperature", "top_k"))
def _generate(graphdef, state, prompt, rng, *, max_new_tokens, temperature, top_k):
    model = nnx.merge(graphdef, state)
    B, P = prompt.shape
    cache = model.init_cache(B, P + max_new_tokens)
    keys = jax.random.split(rng, max_new_tokens)
    logits, cache = model(prompt, cache=cache)  # prefill: the ops run chunked over the prompt
    first = sample_logits(logits[:, -1], keys[0], temperature=temperature, top_k=top_k)

    def step(carry, key):
        tok, cache = carry
        logits, cache = model(tok[:, None], cache=cache)
        nxt = sample_logits(logits[:, -1], key, temperature=temperature, top_k=top_k)
        return (nxt, cache), tok

    (last, _), toks = jax.lax.scan(step, (first, cache), keys[1:])
    new = jnp.concatenate([jnp.moveaxis(toks, 0, 1), last[:, None]], axis=1)
    return jnp.concatenate([prompt.astype(jnp.int32), new], axis=1)


def generate(model, prompt, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
             rng=None):
    """Continues `prompt` with `max_new_tokens` sampled tokens.

    Args:
      model: a `research.LanguageModel`.
      prompt: int [B, P] token ids (P >= 1), one prompt per row, all of length P.
      max_new_tokens: number of tokens to append (>= 1).
      temperature: 0 for greedy decoding, else the softmax temperature (> 0).
      top_k: sample only among the top_k logits (1 <= top_k <= vocab_size), or None for all.
      rng: a `jax.random.key`; needed unless temperature == 0.

    Returns:
      int32 [B, P + max_new_tokens]: the prompt followed by the new tokens. Compiled once per
      (model structure, prompt shape, max_new_tokens, temperature, top_k).
    """
    prompt = jnp.asarray(prompt)
    if prompt.ndim != 2 or prompt.shape[1] < 1 or not jnp.issubdtype(prompt.dtype, jnp.integer):
        raise ValueError(f"prompt must be an integer array [B, P] with P >= 1, got {prompt.dtype} {prompt.shape}")
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if not isinstance(temperature, (int, float)) or temperature < 0:
        raise ValueError(f"temperature must be a number >= 0, got {temperature!r}")
    vocab = model.config.vocab_size
    if top_k is not None and (not isinstance(top_k, int) or not 1 <= top_k <= vocab):
        raise ValueError(f"top_k must be None or an int in [1, {vocab}], got {top_k!r}")
    if rng is None:
        if temperature != 0:
            raise ValueError("rng must be a jax.random.key when temperature > 0, got None")
        rng = jax.random.key(0)
    graphdef, state = nnx.split(model)
    return _generate(graphdef, state, prompt, rng, max_new_tokens=max_new_tokens,
                     temperature=float(temperature), top_k=top_k)

"""Probes of the recurrence itself: per-head decay statistics and the state norm along a sequence.

- `decay_statistics(model, tokens)`: every mixer that exposes `log_decay(x)` (x the mixer's input,
  the block's normed hidden state [B, T, D]; returns log decays g <= 0 as [B, T, H] or
  [B, T, H, K], or None when the mixer has no decay) is run on real inputs, and each per-step log
  decay g is turned into a half-life `ln(1/2) / g` in tokens (the number of steps after which a
  state entry has decayed to half). Per layer and head: median, 10th and 90th percentile of the
  half-life and the mean log decay.
- `state_norms(model, tokens, chunk)`: the model is run through its decode cache `chunk` tokens at
  a time and the Frobenius norm of every recurrent layer's state (per head) is recorded after each
  chunk: state growth or collapse beyond the training length shows up here.

Shapes: B batch, T time, D d_model, H heads, K key dim.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

LN_HALF = math.log(0.5)


def half_life(log_decay: np.ndarray) -> np.ndarray:
    """Half-life in tokens of per-step log decays g <= 0: ln(1/2) / g (inf where g == 0)."""
    g = np.asarray(log_decay, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.where(g < 0, LN_HALF / np.minimum(g, -1e-300), np.inf)


def _mixer_inputs_and_decays(model, tokens):
    """[(layer, mixer name, log decay array or None or 'absent')] for int tokens [B, T]."""
    out = []
    x = model.embed(tokens)
    for i, block in enumerate(model.blocks):
        fn = getattr(block.mixer, "log_decay", None)
        if fn is None:
            out.append((i, block.mixer_name, "absent"))
        else:
            g = fn(block.mixer_norm(x))
            out.append((i, block.mixer_name, None if g is None else np.asarray(g, np.float64)))
        x, _ = block(x)
    return out


def decay_statistics(model, tokens) -> dict:
    """Per-layer, per-head half-life statistics of `model`'s decays on int tokens [B, T].

    Returns {"layers": [{"layer", "mixer", "kind", "heads": [{"head", "median_half_life",
    "p10_half_life", "p90_half_life", "mean_log_decay"}], "half_lives": float [H, n] samples}]}.
    `kind` is "vector" (data-dependent per key channel or slot), "scalar" (data-dependent per
    head), "fixed" (the same at every token, e.g. RetNet), "none" (no decay: infinite half-life)
    or "absent" (the mixer exposes no `log_decay`, e.g. softmax attention).
    """
    tokens = jnp.asarray(tokens, jnp.int32)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [B, T], got shape {tokens.shape}")
    layers = []
    for i, name, g in _mixer_inputs_and_decays(model, tokens):
        if isinstance(g, str) or g is None:
            layers.append({"layer": i, "mixer": name, "kind": "absent" if g else "none",
                           "heads": [], "half_lives": None})
            continue
        kind = "vector" if g.ndim == 4 else "scalar"
        if np.all(g == g[:1, :1]):  # the same decay at every token: a fixed (RetNet) decay
            kind = "fixed"
        H = g.shape[2]
        per_head = np.moveaxis(g, 2, 0).reshape(H, -1)  # [H, B*T(*K)]
        hl = half_life(per_head)
        heads = []
        for h in range(H):
            q10, q50, q90 = np.quantile(hl[h], [0.1, 0.5, 0.9])
            heads.append({"head": h, "median_half_life": float(q50),
                          "p10_half_life": float(q10), "p90_half_life": float(q90),
                          "mean_log_decay": float(per_head[h].mean())})
        layers.append({"layer": i, "mixer": name, "kind": kind, "heads": heads, "half_lives": hl})
    return {"layers": layers}


def _state_leaves(layer_cache):
    """The recurrent-state arrays of one layer's cache ([] for attention's key/value cache)."""
    if isinstance(layer_cache, dict) and "state" in layer_cache:
        return jax.tree.leaves(layer_cache["state"])
    return []


def state_norms(model, tokens, chunk: int = 16) -> dict:
    """Norm of each recurrent layer's state along the sequence, through the decode cache.

    Args:
      model: a LanguageModel.
      tokens: int [B, T]; T must be a multiple of `chunk`.
      chunk: tokens fed per cache step.

    Returns {"positions": int [T / chunk] (tokens read after each step), "layers":
    [{"layer", "mixer", "norm": float [T / chunk, H]}]} with the Frobenius norm of the state of
    each head ([K, V]; both gsa factors together), averaged over the batch. Layers without a
    recurrent state (attention) are left out.
    """
    tokens = np.asarray(tokens, np.int32)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [B, T], got shape {tokens.shape}")
    B, T = tokens.shape
    if chunk < 1 or T % chunk:
        raise ValueError(f"chunk must be >= 1 and divide T={T}, got chunk={chunk}")
    graphdef, params = nnx.split(model)

    @jax.jit
    def step(params, cache, toks):
        m = nnx.merge(graphdef, params)
        _, cache = m(toks, cache=cache)
        norms = []
        for layer in cache["layers"]:
            leaves = _state_leaves(layer)
            if leaves:
                sq = sum(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=(2, 3)) for x in leaves)
                norms.append(jnp.mean(jnp.sqrt(sq), axis=0))  # [H]
        return cache, norms

    cache = model.init_cache(batch_size=B, max_length=T)
    recurrent = [i for i, layer in enumerate(cache["layers"]) if _state_leaves(layer)]
    rows = []
    for s in range(0, T, chunk):
        cache, norms = step(params, cache, jnp.asarray(tokens[:, s : s + chunk]))
        rows.append([np.asarray(n) for n in norms])
    names = model.config.layer_mixers()
    return {
        "positions": np.arange(chunk, T + 1, chunk),
        "layers": [{"layer": i, "mixer": names[i], "norm": np.stack([r[j] for r in rows])}
                   for j, i in enumerate(recurrent)],
    }

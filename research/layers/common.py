"""Pieces shared by the mixers: norms, the short causal conv, the gated MLP, feature maps, gate
initialisation and the call into `pallas_kernels` (with the decode cache's state).

Shapes follow `research.array_typing`: B batch, T time, D d_model, H heads, K/V head dims, W conv width.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import pallas_kernels
from research.config import ModelConfig


def compute_dtype(cfg: ModelConfig):
    """The jnp dtype of activations and matmuls for `cfg.dtype`."""
    return jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32


def axes(*names: str | None, shape: tuple[int, ...] | None = None) -> dict:
    """Variable metadata naming the logical axes of a parameter (e.g. ("embed", "mlp")).

    `research.train.sharding.LOGICAL_AXIS_RULES` maps the names to mesh axes; the model code names
    logical axes only. `eager_sharding=False` keeps construction free of any mesh. Under an
    ambient mesh (`jax.set_mesh`, e.g. `nnx.eval_shape` of a model there) the metadata also carries
    flax's per-variable `sharding_rules`, the names resolved through the project's rules on that
    mesh (absent or size-1 mesh axes dropped; with `shape`, a dimension the axis size does not
    divide stays whole), so that flax's abstract variables get valid shardings.
    """
    meta = {"out_sharding": tuple(names), "eager_sharding": False}
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.manual_axes:
        return meta
    from research.train.sharding import logical_to_spec, rules_for_mesh
    table = dict(rules_for_mesh(mesh))
    if shape is not None and len(shape) == len(names) and len(set(names)) == len(names):
        spec = logical_to_spec(names, shape, mesh)
        rules = {n: a for n, a in zip(names, spec) if n is not None}
    else:
        rules = {n: table.get(n) for n in names if n is not None}
    meta["sharding_rules"] = tuple(rules.items())
    return meta


def linear(cfg: ModelConfig, d_in: int, d_out: int, *, rngs: nnx.Rngs, bias: bool = False,
           bias_init=None, names: tuple[str | None, str | None] = ("embed", "heads")) -> nnx.Linear:
    """A Linear layer [d_in] -> [d_out] with the config's init (normal(init_std)) and compute
    dtype; `names` are the logical axes of its kernel [d_in, d_out]."""
    kw = {}
    if bias_init is not None:
        kw["bias_init"] = bias_init
    return nnx.Linear(d_in, d_out, use_bias=bias, dtype=compute_dtype(cfg), param_dtype=jnp.float32,
                      kernel_init=nnx.initializers.normal(cfg.init_std), rngs=rngs,
                      kernel_metadata=axes(*names, shape=(d_in, d_out)),
                      bias_metadata=axes(names[1], shape=(d_out,)), **kw)


def constant_init(value):
    """An initialiser filling with `value` (a scalar or an array broadcast to the shape)."""
    def init(key, shape, dtype=jnp.float32):
        return jnp.broadcast_to(jnp.asarray(value, dtype), shape)
    return init


class RMSNorm(nnx.Module):
    """RMSNorm over the last axis (computed in float32): x / rms(x) * scale. x: [..., dim]."""

    def __init__(self, dim: int, *, eps: float = 1e-6, name: str = "embed"):
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32), **axes(name, shape=(dim,)))

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (y * self.scale[...]).astype(x.dtype)


class ShortConv(nnx.Module):
    """Causal depthwise conv of width W over time, then SiLU (FLA's ShortConvolution).

    y[t, c] = silu(sum_{j<W} w[j, c] * x[t - (W-1) + j, c]); taps before t = 0 or in another segment
    (segment_ids) read zero. The decode cache is the last W-1 inputs, [B, W-1, C].
    """

    def __init__(self, channels: int, width: int, *, rngs: nnx.Rngs, activation: bool = True):
        self.width = width
        self.activation = activation
        bound = 1.0 / math.sqrt(width)  # PyTorch's Conv1d default for a depthwise conv
        self.weight = nnx.Param(
            jax.random.uniform(rngs.params(), (width, channels), jnp.float32, -bound, bound),
            **axes("conv", "heads", shape=(width, channels)),
        )

    def init_cache(self, batch_size: int, channels: int, dtype=jnp.float32):
        """Zeros [B, W-1, C]: the inputs before t = 0."""
        return jnp.zeros((batch_size, self.width - 1, channels), dtype)

    def __call__(self, x, *, segment_ids=None, cache=None):
        """x: [B, T, C]; segment_ids: [B, T] or None; cache: [B, W-1, C] or None -> (y, new cache)."""
        B, T, C = x.shape
        W = self.width
        prev = jnp.zeros((B, W - 1, C), x.dtype) if cache is None else cache.astype(x.dtype)
        xp = jnp.concatenate([prev, x], axis=1)  # [B, T+W-1, C]
        w = self.weight[...].astype(x.dtype)
        if segment_ids is not None:
            segp = jnp.concatenate([jnp.repeat(segment_ids[:, :1], W - 1, axis=1), segment_ids], 1)
        y = jnp.zeros_like(x)
        for j in range(W):
            tap = xp[:, j:j + T]
            if segment_ids is not None and j < W - 1:
                tap = jnp.where((segp[:, j:j + T] == segment_ids)[..., None], tap, 0)
            y = y + tap * w[j]
        if self.activation:
            y = jax.nn.silu(y)
        new_cache = xp[:, T:].astype(cache.dtype) if cache is not None else None
        return y, new_cache


class GatedMLP(nnx.Module):
    """SwiGLU MLP: down(silu(gate(x)) * up(x)). x: [B, T, D] -> [B, T, D]."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        F = cfg.mlp_hidden
        self.gate_proj = linear(cfg, cfg.d_model, F, rngs=rngs, names=("embed", "mlp"))
        self.up_proj = linear(cfg, cfg.d_model, F, rngs=rngs, names=("embed", "mlp"))
        self.down_proj = linear(cfg, F, cfg.d_model, rngs=rngs, names=("mlp", "embed"))

    def __call__(self, x):
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


def feature_dim(name: str, d: int) -> int:
    """Width of feature map `name` applied to a d-wide head."""
    return 1 + d + d * d if name == "taylor" else d


def feature_map(name: str, x):
    """Applies feature map `name` over the last axis of x."""
    if name == "identity":
        return x
    if name == "elu":
        return jax.nn.elu(x) + 1.0
    if name == "relu":
        return jax.nn.relu(x)
    if name in ("silu", "swish"):
        return jax.nn.silu(x)
    if name == "softmax":
        return jax.nn.softmax(x.astype(jnp.float32), axis=-1).astype(x.dtype)
    if name == "taylor":  # 2nd-order Taylor expansion of exp(q.k) (Based / Zoology)
        d = x.shape[-1]
        x2 = (x[..., :, None] * x[..., None, :]).reshape(*x.shape[:-1], d * d) / math.sqrt(2)
        ones = jnp.ones(x.shape[:-1] + (1,), x.dtype)
        return jnp.concatenate([ones, x / d**0.25, x2 / math.sqrt(d)], axis=-1)
    raise ValueError(f"feature_map must be one of identity, elu, relu, silu, swish, softmax, taylor; got {name!r}")


def feature_map_after_conv(name: str, x, conv):
    """feature_map(name, x), except that a SiLU/swish map is not applied a second time after the
    short conv (which ends in a SiLU)."""
    if conv is not None and name in ("silu", "swish"):
        return x
    return feature_map(name, x)


def l2_normalize(x, eps: float = 1e-6):
    """x / sqrt(sum(x^2) + eps) over the last axis, computed in float32."""
    x32 = x.astype(jnp.float32)
    return (x32 * jax.lax.rsqrt(jnp.sum(x32 * x32, -1, keepdims=True) + eps)).astype(x.dtype)


def logsigmoid_bias_for_half_life(half_life: float, normalizer: float = 1.0) -> float:
    """b such that logsigmoid(b) / normalizer = log(1/2) / half_life (the decay halves in half_life steps)."""
    p = 2.0 ** (-normalizer / half_life)  # sigmoid(b)
    return float(math.log(p) - math.log1p(-p))


def retnet_log_decay(n_heads: int, half_life: float | None = None) -> np.ndarray:
    """Fixed per-head log-decay [H]: RetNet's log(1 - 2^(-5-h)), or log(1/2)/half_life for every head."""
    if half_life is not None:
        return np.full((n_heads,), -math.log(2.0) / half_life, np.float32)
    return np.log1p(-(2.0 ** (-5.0 - np.arange(n_heads, dtype=np.float64)))).astype(np.float32)


def mamba_decay_init(cfg: ModelConfig, n_heads: int, rngs: nnx.Rngs):
    """(A_log [H], dt_bias [H]) Params as Mamba2 initialises them: A = exp(A_log) uniform in
    [a_init_min, a_init_max], softplus(dt_bias) log-uniform in [dt_min, dt_max]. With
    `init_half_life`, A_log is set so that exp(-A softplus(dt_bias)) halves the state in that many
    tokens."""
    k_a, k_dt = jax.random.split(rngs.params())
    u = jax.random.uniform(k_dt, (n_heads,), jnp.float32)
    dt = jnp.exp(u * (math.log(cfg.dt_max) - math.log(cfg.dt_min)) + math.log(cfg.dt_min))
    dt = jnp.maximum(dt, 1e-4)
    dt_bias = dt + jnp.log(-jnp.expm1(-dt))  # softplus(dt_bias) = dt
    if cfg.init_half_life is not None:
        a = math.log(2.0) / (cfg.init_half_life * dt)
    else:
        a = jax.random.uniform(k_a, (n_heads,), jnp.float32, cfg.a_init_min, cfg.a_init_max)
    return (nnx.Param(jnp.log(a), **axes("heads", shape=(n_heads,))),
            nnx.Param(dt_bias, **axes("heads", shape=(n_heads,))))


def head_output(layer, o, x):
    """The output block of the linear-attention mixers: W_o (RMSNorm_head(o) * swish(x W_gate)).

    o: [B, T, H, V] (the op's output); x: [B, T, D] (the mixer input, for the gate). `layer`
    has `o_norm`, `o_proj` and, when `layer.use_output_gate`, `g_proj`. Returns [B, T, D].
    """
    o = merge_heads(layer.o_norm(o))
    if layer.use_output_gate:
        o = o * jax.nn.silu(layer.g_proj(x))
    return layer.o_proj(o)


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (n >= 1)."""
    return 1 << max(0, (n - 1).bit_length())


def run_op(cfg: ModelConfig, op: str, q, k, v, *gates, scale=None, segment_ids=None, state=None):
    """Calls `pallas_kernels.<op>` with the config's impl and chunk size.

    With `state` (the decode cache's recurrent state) it is the initial state and the final state is
    returned; otherwise the returned state is None. Inputs of at most 16 tokens (decode steps) use
    a chunk of next_pow2(T), so a single token is not padded to a full chunk.
    """
    T = q.shape[1]
    chunk = min(cfg.chunk_size, next_pow2(T)) if T <= 16 else cfg.chunk_size
    fn = getattr(pallas_kernels, op)
    o, final = fn(q, k, v, *gates, scale=scale, initial_state=state,
                  output_final_state=state is not None, segment_ids=segment_ids,
                  chunk_size=chunk, impl=cfg.impl)
    return o, final


def conv_parts(conv, parts, *, segment_ids=None, cache=None):
    """Runs the optional short conv over the channel-concatenation of `parts` ([B, T, C_i] each).

    Returns (parts after the conv, new conv cache); with conv None the parts pass through unchanged.
    `cache` is the mixer's cache dict (its "conv" entry is used) or None.
    """
    if conv is None:
        return parts, None
    sizes = np.cumsum([p.shape[-1] for p in parts])[:-1].tolist()
    y, new = conv(jnp.concatenate(parts, axis=-1), segment_ids=segment_ids,
                  cache=None if cache is None else cache["conv"])
    return jnp.split(y, sizes, axis=-1), new


def recurrent_cache(conv, batch_size: int, conv_channels: int, state):
    """The decode cache of a recurrent mixer: {"state": state, "conv": [B, W-1, C]} (conv if any)."""
    cache = {"state": state}
    if conv is not None:
        cache["conv"] = conv.init_cache(batch_size, conv_channels)
    return cache


def updated_cache(cache, state, conv_cache):
    """The new decode cache after a call, or None when the call had no cache."""
    if cache is None:
        return None
    new = {"state": state}
    if conv_cache is not None:
        new["conv"] = conv_cache
    return new


def split_heads(x, n_heads: int):
    """[B, T, H*D] -> [B, T, H, D]."""
    return x.reshape(*x.shape[:-1], n_heads, x.shape[-1] // n_heads)


def merge_heads(x):
    """[B, T, H, D] -> [B, T, H*D]."""
    return x.reshape(*x.shape[:-2], x.shape[-2] * x.shape[-1])

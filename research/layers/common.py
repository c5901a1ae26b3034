"""Pieces shared by the mixers: the `Mixer` base class (the config, head widths and the
projections most mixers share), norms, the short causal conv, the gated MLP, feature maps, gate
initialisation and the call into `pallas_kernels` (with the decode cache's state).

Shapes follow `research.array_typing`: B batch, T time, D d_model, H heads, K/V head dims, W conv width.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

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
        self.channels = channels
        self.width = width
        self.activation = activation
        bound = 1.0 / math.sqrt(width)  # PyTorch's Conv1d default for a depthwise conv
        self.weight = nnx.Param(
            jax.random.uniform(rngs.params(), (width, channels), jnp.float32, -bound, bound),
            **axes("conv", "heads", shape=(width, channels)),
        )

    def init_cache(self, batch_size: int, dtype=jnp.float32):
        """Zeros [B, W-1, C]: the inputs before t = 0."""
        return jnp.zeros((batch_size, self.width - 1, self.channels), dtype)

    def __call__(self, x, *, segment_ids=None, cache=None):
        """x: [B, T, C]; segment_ids: [B, T] or None; cache: [B, W-1, C] or None -> (y, new cache).

        Under an ambient mesh with a `sequence` axis (no cache), each sequence shard runs the conv
        on its slice with the previous shard's last W-1 inputs (and segment ids), passed along by
        `ppermute` (zeros at the first shard), so the result equals the unsplit conv.
        """
        B, T, C = x.shape
        W = self.width
        w = self.weight[...].astype(x.dtype)
        if segment_ids is not None:  # number segments by their changes: an id that comes back
            change = segment_ids[:, 1:] != segment_ids[:, :-1]  # starts a new segment
            segment_ids = jnp.concatenate(
                [jnp.zeros((B, 1), jnp.int32), jnp.cumsum(change.astype(jnp.int32), axis=1)], 1)
        if cache is None:
            split = ambient_split(B, T, min_shard_len=W - 1)
            if split is not None and split.sequence is not None:
                return _sequence_sharded_conv(x, w, segment_ids, split, self.activation), None
        prev = jnp.zeros((B, W - 1, C), x.dtype) if cache is None else cache.astype(x.dtype)
        y = causal_conv(x, w, prev, segment_ids, None, self.activation)
        new_cache = None
        if cache is not None:
            new_cache = jnp.concatenate([prev, x], axis=1)[:, T:].astype(cache.dtype)
        return y, new_cache


def short_conv(cfg: ModelConfig, channels: int, *, rngs: nnx.Rngs) -> ShortConv | None:
    """The mixers' `ShortConv` over `channels` of width `cfg.conv_size`; None with conv_size 0."""
    return ShortConv(channels, cfg.conv_size, rngs=rngs) if cfg.conv_size else None


def causal_conv(x, w, prev, segment_ids=None, prev_segment_ids=None, activation: bool = True):
    """The short conv of `ShortConv` on one slice: x [B, T, C], w [W, C], prev [B, W-1, C] (the
    inputs just before the slice); segment_ids [B, T] or None; prev_segment_ids [B, W-1] (the
    ids of `prev`; None: the slice's first id). Returns y [B, T, C]."""
    T = x.shape[1]
    W = w.shape[0]
    xp = jnp.concatenate([prev.astype(x.dtype), x], axis=1)  # [B, T+W-1, C]
    if segment_ids is not None:
        if prev_segment_ids is None:
            prev_segment_ids = jnp.repeat(segment_ids[:, :1], W - 1, axis=1)
        segp = jnp.concatenate([prev_segment_ids, segment_ids], axis=1)
    y = jnp.zeros_like(x)
    for j in range(W):
        tap = xp[:, j:j + T]
        if segment_ids is not None and j < W - 1:
            tap = jnp.where((segp[:, j:j + T] == segment_ids)[..., None], tap, 0)
        y = y + tap * w[j]
    return jax.nn.silu(y) if activation else y


def _sequence_sharded_conv(x, w, segment_ids, split, activation: bool):
    """`causal_conv` of x [B, T, C] inside a shard_map over `split` (T over its sequence axis):
    every shard takes the previous shard's last W-1 inputs and segment ids by `ppermute`."""
    from jax.sharding import PartitionSpec as P
    W, C = w.shape
    seq = split.sequence
    n_seq = split.mesh.shape[seq]
    chan = split.tensor if split.tensor is not None and C % split.mesh.shape[split.tensor] == 0 \
        else None
    perm = [(i, i + 1) for i in range(n_seq - 1)]  # shard 0 receives zeros

    def body(x, w, *seg):
        prev = jax.lax.ppermute(x[:, x.shape[1] - (W - 1):], seq, perm)
        ids = prev_ids = None
        if seg:
            ids = seg[0]
            prev_ids = jax.lax.ppermute(ids[:, ids.shape[1] - (W - 1):], seq, perm)
        return causal_conv(x, w, prev, ids, prev_ids, activation)

    x_spec = P(split.batch, seq, chan)
    args, specs = [x, w], [x_spec, P(None, chan)]
    if segment_ids is not None:
        args.append(segment_ids)
        specs.append(P(split.batch, seq))
    return jax.shard_map(body, mesh=split.mesh, in_specs=tuple(specs), out_specs=x_spec)(*args)


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


class MeshSplit(NamedTuple):
    """How the layers split an op over the ambient mesh: `mesh` (the abstract mesh), the mesh
    axes over B (`batch`, a tuple, possibly empty), T (`sequence`) and H (`tensor`), None for a
    dimension kept whole."""

    mesh: Any
    batch: tuple[str, ...]
    sequence: str | None
    tensor: str | None


def ambient_split(B: int, T: int, H: int | None = None, *, min_shard_len: int = 1):
    """The `MeshSplit` of an array [B, T, H, ...] on the ambient mesh (`jax.set_mesh`), or None.

    None outside a mesh, on a 1-device mesh and inside a `shard_map` (manual axes). B goes over
    those of the mesh axes `data`, `fsdp` (size > 1) whose product divides it (the last dropped
    first), T over `sequence` when its size divides T into shards of at least `min_shard_len`
    tokens, H over `tensor` when its size divides H (H None: not split).
    """
    from research.train.sharding import BATCH_AXES, SEQUENCE_AXIS, TENSOR_AXIS, mesh_axes_in
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.manual_axes or mesh.size == 1:
        return None
    batch = mesh_axes_in(mesh, BATCH_AXES)
    while batch and B % math.prod(mesh.shape[a] for a in batch):
        batch = batch[:-1]
    seq = mesh_axes_in(mesh, SEQUENCE_AXIS)
    sequence = None
    if seq and T % mesh.shape[seq[0]] == 0 and T // mesh.shape[seq[0]] >= max(min_shard_len, 1):
        sequence = seq[0]
    ten = mesh_axes_in(mesh, TENSOR_AXIS)
    tensor = ten[0] if ten and H is not None and H % mesh.shape[ten[0]] == 0 else None
    if not batch and sequence is None and tensor is None:
        return None
    return MeshSplit(mesh, batch, sequence, tensor)


def shard_activations(x):
    """x [B, T, ...] constrained to B over the ambient mesh's batch axes and T over its sequence
    axis (`ambient_split`); unchanged outside a mesh. Keeps XLA from replicating the batch of
    the residual stream (and so the MLP's activations) over `fsdp` to save weight gathers."""
    split = ambient_split(x.shape[0], x.shape[1])
    if split is None:
        return x
    from jax.sharding import PartitionSpec as P
    spec = P(split.batch or None, split.sequence, *([None] * (x.ndim - 2)))
    return jax.lax.with_sharding_constraint(x, spec)


def ambient_op_sharding(B: int, T: int, H: int):
    """The `pallas_kernels.OpSharding` for an op on q [B, T, H, K] under the ambient mesh
    (`ambient_split`), or None (no mesh, one device, inside a shard_map)."""
    split = ambient_split(B, T, H)
    if split is None:
        return None
    return pallas_kernels.OpSharding(split.mesh, batch=split.batch or None, heads=split.tensor,
                                     sequence=split.sequence)


def run_op(cfg: ModelConfig, op: str, q, k, v, *gates, scale=None, segment_ids=None, state=None):
    """Calls `pallas_kernels.<op>` with the config's impl and chunk size.

    With `state` (the decode cache's recurrent state) it is the initial state and the final state is
    returned; otherwise the returned state is None. Inputs of at most 16 tokens (decode steps) use
    a chunk of next_pow2(T), so a single token is not padded to a full chunk. Under an ambient
    mesh (`with jax.set_mesh(mesh):`) the op runs inside `shard_map` over the mesh's batch
    (`data`, `fsdp`), `sequence` (LASP-2) and `tensor` (heads) axes (`ambient_op_sharding`);
    the Mosaic/Triton kernels cannot be partitioned any other way.
    """
    B, T, H = q.shape[:3]
    chunk = min(cfg.chunk_size, next_pow2(T)) if T <= 16 else cfg.chunk_size
    fn = getattr(pallas_kernels, op)
    kw = {}
    sharding = ambient_op_sharding(B, T, H)
    if sharding is not None:
        kw["sharding"] = sharding
    o, final = fn(q, k, v, *gates, scale=scale, initial_state=state,
                  output_final_state=state is not None, segment_ids=segment_ids,
                  chunk_size=chunk, impl=cfg.impl, **kw)
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


def recurrent_cache(conv, batch_size: int, state):
    """The decode cache of a recurrent mixer: {"state": state, "conv": [B, W-1, C] zeros} (the
    conv entry only with a short conv)."""
    cache = {"state": state}
    if conv is not None:
        cache["conv"] = conv.init_cache(batch_size)
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


class Mixer(nnx.Module):
    """Base class of the token mixers: what every mixer keeps of its config, and the layers and
    input paths that most of them share.

    `__init__(cfg)` sets `cfg`, `n_heads`, the per-head widths `cfg.head_dims(name)` under the
    attribute names `head_dim_names` ((head_k, head_v); the SSMs: (d_state, head_dim)) and
    `use_output_gate`. The `add_*` builders create their layers in a fixed order, which is the
    order of the rng draws and so fixes the initial parameters. `state_size` and `init_cache`
    default to one matrix state of the two head widths per head ([B, H, K, V]; the SSMs:
    [B, H, N, P]); mixers with another state override them.
    """

    name = "mixer"
    head_dim_names: tuple[str, str] = ("head_k", "head_v")

    def __init__(self, cfg: ModelConfig):
        self.cfg = cfg
        self.n_heads = cfg.n_heads
        for attr, width in zip(self.head_dim_names, cfg.head_dims(self.name)):
            setattr(self, attr, width)
        self.use_output_gate = cfg.knob(self.name, "use_output_gate")

    def _head_widths(self) -> tuple[int, int]:
        return tuple(getattr(self, attr) for attr in self.head_dim_names)

    def state_size(self, seq_len: int | None = None) -> int:
        """Floats of decode state per sequence: H * K * V (the SSMs: H * N * P)."""
        return self.n_heads * math.prod(self._head_widths())

    def init_cache(self, batch_size: int, max_length: int):
        """{"state": [B, H, K, V] (the SSMs: [B, H, N, P]), "conv": [B, W-1, C] (with a short
        conv)}, zeros."""
        state = jnp.zeros((batch_size, self.n_heads, *self._head_widths()), jnp.float32)
        return recurrent_cache(self.conv, batch_size, state)

    def add_qkv_projections(self, rngs: nnx.Rngs, *, k_width: int | None = None,
                            v_width: int | None = None) -> None:
        """q_proj [D -> H K], k_proj [D -> k_width (default H K)], v_proj [D -> v_width
        (default H V)], created in that order."""
        cfg, d, H = self.cfg, self.cfg.d_model, self.n_heads
        self.q_proj = linear(cfg, d, H * self.head_k, rngs=rngs)
        self.k_proj = linear(cfg, d, H * self.head_k if k_width is None else k_width, rngs=rngs)
        self.v_proj = linear(cfg, d, H * self.head_v if v_width is None else v_width, rngs=rngs)

    def add_output_block(self, rngs: nnx.Rngs, *, norm: bool = True) -> None:
        """The layers of `head_output`: g_proj [D -> H V] (with use_output_gate), o_norm (the
        per-head RMSNorm over V; with `norm`) and o_proj [H V -> D], created in that order."""
        cfg, HV = self.cfg, self.n_heads * self.head_v
        if self.use_output_gate:
            self.g_proj = linear(cfg, cfg.d_model, HV, rngs=rngs)
        if norm:
            self.o_norm = RMSNorm(self.head_v, eps=cfg.norm_eps, name="kv")
        self.o_proj = linear(cfg, HV, cfg.d_model, rngs=rngs, names=("heads", "embed"))

    def project_heads(self, x, projections, *, segment_ids=None, cache=None):
        """x [B, T, D] through each of `projections`, the mixer's short conv `self.conv` (None:
        none) over them together, then split into heads: ([B, T, H, C_i / H] each, new conv
        cache). `cache` is the mixer's decode cache or None."""
        parts, conv_cache = conv_parts(self.conv, [p(x) for p in projections],
                                       segment_ids=segment_ids, cache=cache)
        return [split_heads(p, self.n_heads) for p in parts], conv_cache

    def qkv_heads(self, x, *, segment_ids=None, cache=None, v_feature: str = "identity"):
        """(q, k [B, T, H, K'], v [B, T, H, V], new conv cache): phi(conv(x W_q)),
        phi(conv(x W_k)) with phi the mixer's `feature` map, and v_feature(conv(x W_v)); a
        SiLU map is not applied again after the conv (`feature_map_after_conv`)."""
        (q, k, v), conv_cache = self.project_heads(x, (self.q_proj, self.k_proj, self.v_proj),
                                                   segment_ids=segment_ids, cache=cache)
        q = feature_map_after_conv(self.feature, q, self.conv)
        k = feature_map_after_conv(self.feature, k, self.conv)
        return q, k, feature_map_after_conv(v_feature, v, self.conv), conv_cache

    @property
    def qk_scale(self) -> float:
        """The attention scale of q.k: 1/sqrt(K), or 1 for the Taylor feature map (whose
        expansion already carries the 1/sqrt(K) of exp(q.k / sqrt(K)))."""
        return 1.0 if self.feature == "taylor" else self.head_k ** -0.5


class SSMMixer(Mixer):
    """Base of the Mamba mixers: per-head widths (d_state N, head_dim P) and d_inner = H * P
    channels E, split over the heads in the ops' [B, T, H, P] layout; state [B, H, N, P]."""

    head_dim_names = ("d_state", "head_dim")

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.d_inner = self.n_heads * self.head_dim

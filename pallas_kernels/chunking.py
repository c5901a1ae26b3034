"""Stage 1 of the chunked paths, shared by the XLA forms and the Pallas kernels of every op.

- `Segments`: the one encoding of `segment_ids`, built once per call (`ops.run_local`) and
  consumed by every path; `Segments.chunked(C)` gives the per-chunk masks (`ChunkSegments`).
- `to_chunks` / `from_chunks`: the chunk layout [B, T, H, ...] <-> [B, H, N, C, ...] (the Pallas
  stages flatten [B, H] to G = B * H with a free reshape).
- `log_decays`: the chunk-local cumulative sums of a log gate and the masked log-decays into each
  position, from each position to the chunk end and over the whole chunk.
- `pad_time` / `on_whole_chunks`: time padding to whole chunks (exact: zero inputs), for the
  paths that need T to be a multiple of C.
- `padded_dim` / `pad_dim`: head-dim padding for the Pallas flavours.
- `supports`: the one rule saying whether the Pallas path takes a call.

Notation: B batch, T time (a multiple of C once padded), H heads, C chunk size, N = T / C,
K / V / M head dims. Masked log-decays are -inf: exp(-inf) = 0 keeps values and gradients finite.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

F32 = jnp.float32
NEG_INF = -jnp.inf


# ----------------------------------------------------------------------------------------------
# Segments.

@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Segments:
    """Packed sequences of a batch: `ids` int32 [B, T], the segment number of each position,
    renumbered 0, 1, 2, ... along each row (a reset wherever `segment_ids` changes, so an id that
    comes back later is a new segment). Non-decreasing along T."""

    ids: jax.Array

    @classmethod
    def build(cls, segment_ids) -> Segments | None:
        """From the user's int [B, T] `segment_ids` (None -> None)."""
        if segment_ids is None:
            return None
        change = (segment_ids[:, 1:] != segment_ids[:, :-1]).astype(jnp.int32)
        return cls(jnp.concatenate([jnp.zeros_like(change[:, :1]), jnp.cumsum(change, axis=1)],
                                   axis=1))

    def pad(self, pad: int) -> Segments:
        """`pad` more positions at the end, in the last segment (padding is exact: zero inputs)."""
        if pad == 0:
            return self
        return Segments(jnp.concatenate([self.ids, jnp.repeat(self.ids[:, -1:], pad, axis=1)], axis=1))

    def resets(self) -> jax.Array:
        """bool [B, T]: the state is reset before position t."""
        return jnp.concatenate([jnp.zeros_like(self.ids[:, :1], bool),
                                self.ids[:, 1:] != self.ids[:, :-1]], axis=1)

    def chunked(self, C: int) -> ChunkSegments:
        """The masks of chunks of C positions (T a multiple of C)."""
        B, T = self.ids.shape
        rid = self.ids.reshape(B, 1, T // C, C)
        # segment number at the end of the previous chunk (the first chunk starts segment 0)
        prev = jnp.concatenate([jnp.zeros_like(rid[:, :, :1, -1]), rid[:, :, :-1, -1]], axis=2)
        local = rid - prev[..., None]
        return ChunkSegments(rid=rid, local=local, last=rid == rid[..., -1:])


@dataclasses.dataclass(frozen=True)
class ChunkSegments:
    """Per-chunk segment masks, each [B, 1, N, C] (the 1 broadcasts over heads).

    rid: int32 segment number of each position; local: int32 resets since the chunk start (the
    state entering the chunk reaches position i iff local_i == 0); last: bool, i is in the
    segment of the chunk's last position (i reaches the chunk's final state).
    """

    rid: jax.Array
    local: jax.Array
    last: jax.Array

    @property
    def first(self) -> jax.Array:
        """bool [B, 1, N, C]: the state entering the chunk reaches position i."""
        return self.local == 0

    @property
    def carry(self) -> jax.Array:
        """bool [B, 1, N]: the state entering the chunk reaches the chunk's end."""
        return self.local[..., -1] == 0

    def same(self) -> jax.Array:
        """bool [B, 1, N, C, C]: positions i and j are in one segment."""
        return self.rid[..., :, None] == self.rid[..., None, :]


def _mask(x, m, extra_dims: int):
    """where(m, x, -inf), broadcasting m over `extra_dims` trailing channel axes."""
    if m is None:
        return x
    return jnp.where(m.reshape(m.shape + (1,) * extra_dims), x, NEG_INF)


# ----------------------------------------------------------------------------------------------
# Time padding.

def pad_time(x, pad: int):
    """x [B, T, ...] with `pad` zero positions appended on T (None stays None)."""
    if x is None or pad == 0:
        return x
    return jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))


def on_whole_chunks(fn, chunk_size: int, q, k, v, gates=(), timed=(), *, segments, **kw):
    """`fn(q, k, v, *gates, chunk_size=..., segments=..., **kw) -> (o [B, T', H, V], state)` run
    on T padded to a multiple of `chunk_size`; o is sliced back to T. Zero k, v and zero
    log-gates after T change no state, so the padding is exact (the segments continue their
    last one). `timed[i]`: gate i has a T axis (padded; the others are passed as they are)."""
    T = q.shape[1]
    pad = -T % chunk_size
    if pad:
        q, k, v = (pad_time(x, pad) for x in (q, k, v))
        gates = [pad_time(x, pad) if t else x for x, t in zip(gates, timed, strict=True)]
        segments = None if segments is None else segments.pad(pad)
    o, state = fn(q, k, v, *gates, chunk_size=chunk_size, segments=segments, **kw)
    return o[:, :T], state


# ----------------------------------------------------------------------------------------------
# Chunk layout and chunk-local log-decays.

def to_chunks(x, C: int):
    """[B, T, H, ...] -> [B, H, N, C, ...] (dtype kept; T a multiple of C)."""
    B, T, H = x.shape[:3]
    return jnp.moveaxis(x.reshape(B, T // C, C, H, *x.shape[3:]), 3, 1)


def from_chunks(x):
    """[B, H, N, C, ...] -> [B, T, H, ...]."""
    B, H, N, C = x.shape[:4]
    return jnp.moveaxis(x, 1, 3).reshape(B, N * C, H, *x.shape[4:])


@dataclasses.dataclass(frozen=True)
class LogDecays:
    """Chunk-local log-decays of one gate: scalar gates [B, H, N, C], per channel [B, H, N, C, D].

    gc: inclusive cumulative sum within the chunk (unmasked); into: chunk start -> i (-inf where a
    reset came first); to_end: i -> chunk end (-inf where i does not reach the end); total: chunk
    start -> chunk end, [B, H, N] (+ [D]) (-inf where a reset lies inside the chunk).
    """

    gc: jax.Array
    into: jax.Array
    to_end: jax.Array
    total: jax.Array


def log_decays(g, segments: ChunkSegments | None) -> LogDecays:
    """g: chunked log gates [B, H, N, C] or [B, H, N, C, D] (any float) -> float32 `LogDecays`."""
    gc = jnp.cumsum(g.astype(F32), axis=3)
    extra = g.ndim - 4
    end = gc[:, :, :, -1]
    seg = segments
    return LogDecays(
        gc=gc,
        into=_mask(gc, None if seg is None else seg.first, extra),
        to_end=_mask(end[:, :, :, None] - gc, None if seg is None else seg.last, extra),
        total=_mask(end, None if seg is None else seg.carry, extra),
    )


# ----------------------------------------------------------------------------------------------
# Head-dim padding and the Pallas support rule.

MAX_HEAD_DIM = {"tpu": 256, "triton": 128}
# Chunk sizes the shared Pallas stages take, per flavour (Triton's tl.dot needs >= 16).
CHUNK_SIZES = {"tpu": (8, 256), "triton": (16, 128)}


def padded_dim(kind: str, d: int) -> int:
    """The head dim the Pallas stages of flavour `kind` run at for a true head dim d: Triton blocks
    need powers of two >= 16 (tl.dot), so d is padded up to one; TPU blocks take the full extent."""
    if kind == "tpu":
        return d
    p = 16
    while p < d:
        p *= 2
    return p


def pad_dim(x, to: int, axis: int = -1):
    """Zero-pads `axis` of x up to size `to` (no-op when it already has that size)."""
    if x is None or x.shape[axis] == to:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, to - x.shape[axis])
    return jnp.pad(x, widths)


def head_dims(spec, q, v, gates) -> dict[str, int]:
    """The true head dims of a call: K, V, and M when a gate has the slot dim."""
    dims = {"K": q.shape[-1], "V": v.shape[-1]}
    for gate, x in zip(spec.gates, gates):
        if gate.kind == "bthm":
            dims["M"] = x.shape[-1]
    return dims


def supports(spec, q, k, v, *gates, chunk_size: int, backend=None) -> str | None:
    """None when the Pallas path of `spec`'s op takes the call on `backend` (default: the current
    flavour), else the reason (impl="auto" then uses the XLA path, impl="pallas" raises it)."""
    from pallas_kernels.pallas import _backend

    if spec.kernel is None:
        return f"no Pallas kernel for {spec.name}"
    backend = _backend.current() if backend is None else backend
    allowed = tuple(jnp.dtype(d) for d in spec.kernel.dtypes)
    for name, x in zip(("q", "k", "v", *spec.gate_names), (q, k, v, *gates)):
        if jnp.dtype(x.dtype) not in allowed:
            return f"{name} has dtype {x.dtype}; the {spec.name} kernels take {', '.join(spec.kernel.dtypes)}"
    limit = MAX_HEAD_DIM[backend.kind]
    for name, d in head_dims(spec, q, v, gates).items():
        p = padded_dim(backend.kind, d)
        if p > limit:
            padded = f" (padded to {p})" if p != d else ""
            return (f"the {backend.kind} kernels take head dims <= {limit} (a head's state block "
                    f"stays in VMEM / registers), got {name}={d}{padded}")
    lo, hi = CHUNK_SIZES[backend.kind]
    if spec.kernel.chunk_sizes is not None:
        lo, hi = max(lo, spec.kernel.chunk_sizes[0]), min(hi, spec.kernel.chunk_sizes[1])
    if not lo <= chunk_size <= hi:
        return f"the {backend.kind} kernels of {spec.name} need {lo} <= chunk_size <= {hi}, got {chunk_size}"
    return None

"""The ops on a device mesh: `jax.shard_map` over batch / heads, and LASP-2 sequence parallelism.

Mosaic (TPU) and Triton (GPU) kernels cannot be partitioned by XLA: under a sharded `jit` a bare
`pallas_call` raises "Mosaic kernels cannot be automatically partitioned". Every op therefore
takes `sharding=OpSharding(...)`, which runs its path (reference, xla or pallas) inside
`jax.shard_map`:

    >>> import jax, numpy as np, pallas_kernels
    >>> from jax.sharding import Mesh
    >>> mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "sequence"))
    >>> sh = pallas_kernels.OpSharding(mesh, batch="data", sequence="sequence")
    >>> q = k = v = jax.numpy.ones((2, 32, 2, 16))
    >>> g = -0.1 * jax.numpy.ones((2, 32, 2, 16))
    >>> o, s = pallas_kernels.gla(q, k, v, g, output_final_state=True, chunk_size=16,
    ...                           impl="xla", sharding=sh)
    >>> o.shape, s.shape
    ((2, 32, 2, 16), (2, 2, 16, 16))

- B is split over `batch`, H over `heads`, T over `sequence` (each a mesh axis name, a tuple of
  names, or None). q, k, v, every gate and `segment_ids` follow; `initial_state` and
  `final_state` follow B and H. `OpSharding.from_mesh` keeps only the axes a mesh has (the model
  layers use it with data/fsdp, tensor, sequence).
- The kernel flavour follows the mesh's devices, not the host: TPU devices (real, or abstract from
  `jax.experimental.topologies.get_topology_desc`) give compiled Mosaic kernels even on a CPU
  host, GPU devices compiled Triton, CPU devices interpret mode. `impl="auto"` picks the kernels
  for a TPU or GPU mesh.

Sequence parallelism (LASP-2, Sun et al. 2025). Shard r of P holds tokens [r T/P, (r+1) T/P).
Over a shard the recurrence is affine in the state: S_out = A_r S_in + U_r, where U_r is the
shard's final state from a zero start and A_r its transition (zero from a segment start inside the
shard on). Each shard computes its summary (A_r, U_r); one `all_gather` over the sequence axis
exchanges them; shard r folds shards 0..r-1 (and the op's `initial_state` at shard 0) into its
S_in; `final_state` is the fold of all P. The backward (a suffix fold of the state cotangents) is
autodiff through `all_gather` and the fold. Per op:

- linear_attention, simple_gla, gla: one op pass per shard. The op runs from a zero start
  (outputs and U_r); A_r = exp(sum of g over the shard) (1 for linear attention; a scalar per head
  for simple_gla, a vector per key channel for gla) and the output correction
  o_t += (scale q_t * exp(G_t)) S_in, G_t the cumulative gate from the shard start to t, are
  plain JAX; both are 0 at and after a segment start in the shard.
- delta_rule, gated_delta_rule: two op passes, independent of each other: from a zero start
  (outputs, U_r), and with v = 0 and initial_state = I (K x K), whose final state is A_r
  (S_out = A_r S_in + U_r) and whose output w_t = M_t^T (scale q_t) gives the correction
  o_t += S_in^T w_t (M_t the transition from the shard start to t).
- gsa: pass 1's summary (A_1 -> A_1 diag(d) + k s^T sums) is closed form, d = exp(sum g); then two
  op passes: with initial_state (A_in, 0), whose pass-2 final state is U_r of pass 2 (its softmax
  input is already exact), and, after the second all_gather, with (A_in, B_in) for the outputs.

Segments crossing a shard boundary: a reset at a shard's first token is seen from the global
change mask, computed before the split.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

AxisNames = str | tuple[str, ...] | None

_HIGHEST = lax.Precision.HIGHEST
_GATED_LINEAR = ("linear_attention", "simple_gla", "gla")
_DELTA = ("delta_rule", "gated_delta_rule")


def _axes(value, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (tuple, list)) and all(isinstance(a, str) for a in value):
        return tuple(value)
    raise ValueError(f"OpSharding.{name} must be a mesh axis name, a tuple of names or None, got {value!r}")


@dataclasses.dataclass(frozen=True)
class OpSharding:
    """Which mesh axes split an op's batch B, heads H and time T.

    Attributes:
      mesh: a `jax.sharding.Mesh` or `AbstractMesh` (its devices pick the kernel flavour).
      batch: mesh axis name(s) splitting B, or None.
      heads: mesh axis name(s) splitting H, or None.
      sequence: mesh axis name(s) splitting T (LASP-2, see the module docstring), or None.

    Each axis given must exist in the mesh (else ValueError naming the argument and the mesh's
    axes) and may be used once. Stored normalised: tuples of names, () for None.
    """

    mesh: Any
    batch: AxisNames = ("data", "fsdp")
    heads: AxisNames = None
    sequence: AxisNames = None

    def __post_init__(self):
        names = tuple(getattr(self.mesh, "axis_names", ()))
        seen: dict[str, str] = {}
        for field in ("batch", "heads", "sequence"):
            axes = _axes(getattr(self, field), field)
            for a in axes:
                if a not in names:
                    raise ValueError(
                        f"OpSharding.{field} names mesh axis {a!r}, but the mesh has axes {names}; "
                        "OpSharding.from_mesh keeps only the axes that exist"
                    )
                if a in seen:
                    raise ValueError(f"mesh axis {a!r} is used by both OpSharding.{seen[a]} and .{field}")
                seen[a] = field
            object.__setattr__(self, field, axes)

    @classmethod
    def from_mesh(cls, mesh, *, batch: AxisNames = ("data", "fsdp"), heads: AxisNames = "tensor",
                  sequence: AxisNames = "sequence") -> OpSharding:
        """The sharding over whichever of the named axes `mesh` has (absent ones are dropped;
        size-1 axes are harmless). E.g. a mesh ("data", "fsdp") gives batch=("data", "fsdp")."""
        names = set(getattr(mesh, "axis_names", ()))

        def keep(value, field):
            return tuple(a for a in _axes(value, field) if a in names)

        return cls(mesh, batch=keep(batch, "batch"), heads=keep(heads, "heads"),
                   sequence=keep(sequence, "sequence"))

    def size(self, field: str) -> int:
        """Number of shards along `field` ("batch", "heads" or "sequence")."""
        shape = dict(self.mesh.shape)
        out = 1
        for a in getattr(self, field):
            out *= shape[a]
        return out

    @property
    def platform(self) -> str:
        """The platform of the mesh's devices ("tpu", "gpu", "cpu")."""
        device = getattr(getattr(self.mesh, "abstract_mesh", self.mesh), "abstract_device", None)
        platform = getattr(device, "platform", None)
        return platform or jax.default_backend()


def _spec(axes: tuple[str, ...]):
    return None if not axes else (axes[0] if len(axes) == 1 else axes)


def _check_divisible(sh: OpSharding, B: int, T: int, H: int) -> None:
    for field, dim, n in (("batch", "B", B), ("heads", "H", H), ("sequence", "T", T)):
        size = sh.size(field)
        if n % size:
            raise ValueError(
                f"q: {dim}={n} is not divisible by the {size} shards of OpSharding.{field}="
                f"{getattr(sh, field)} (mesh {dict(sh.mesh.shape)})"
            )


def run(op: str, q, k, v, gates: tuple, *, scale, initial_state, output_final_state, segment_ids,
        chunk_size, impl, sharding: OpSharding):
    """`op` under `sharding`: the arguments of `pallas_kernels.ops._run`, global shapes."""
    from pallas_kernels import _validate, ops
    from pallas_kernels.pallas import _backend

    if not isinstance(sharding, OpSharding):
        raise ValueError(f"sharding must be a pallas_kernels.OpSharding or None, got {type(sharding).__name__}")
    B, T, H, K, _, _ = _validate.validate(
        op, q, k, v, gates, scale=scale, initial_state=initial_state, segment_ids=segment_ids,
        chunk_size=chunk_size, impl=impl,
    )
    _check_divisible(sharding, B, T, H)
    if sharding.sequence and op not in _GATED_LINEAR + _DELTA + ("gsa",):
        raise ValueError(
            f"OpSharding.sequence={sharding.sequence}: sequence parallelism is implemented for "
            f"{_GATED_LINEAR + _DELTA + ('gsa',)}, not {op}; split B or H only"
        )
    scale = float(K**-0.5 if scale is None else scale)
    with _backend.for_platform(sharding.platform):
        path = ops.resolve_impl(op, impl, q, k, v, gates, chunk_size, platform=sharding.platform)
        if initial_state is not None:
            initial_state = jax.tree.map(lambda s: s.astype(jnp.float32), initial_state)
        b, h, s = (_spec(getattr(sharding, f)) for f in ("batch", "heads", "sequence"))
        tok = lambda x: P(b, s, h, *([None] * (x.ndim - 3)))  # noqa: E731 - [B, T, H, ...]
        state_spec = P(b, h, None, None)
        args = {"q": q, "k": k, "v": v, "gates": tuple(gates)}
        specs = {"q": tok(q), "k": tok(k), "v": tok(v),
                 "gates": tuple(_gate_spec(op, i, x, tok, h) for i, x in enumerate(gates))}
        if initial_state is not None:
            args["initial_state"] = initial_state
            specs["initial_state"] = jax.tree.map(lambda _: state_spec, initial_state)
        if segment_ids is not None:
            args["segment_ids"] = segment_ids
            specs["segment_ids"] = P(b, s)
            if sharding.sequence:
                # A reset at a shard's first token: its previous id lives on another shard.
                change = segment_ids[:, 1:] != segment_ids[:, :-1]
                args["starts"] = jnp.concatenate([jnp.zeros_like(change[:, :1]), change], axis=1)
                specs["starts"] = P(b, s)
        run_local = functools.partial(ops._run, op, scale=scale, chunk_size=chunk_size, impl=path)
        want_state = output_final_state
        if not sharding.sequence:
            def body(a):
                return run_local(a["q"], a["k"], a["v"], a["gates"],
                                 initial_state=a.get("initial_state"),
                                 output_final_state=want_state, segment_ids=a.get("segment_ids"))

        else:
            def body(a):
                o, state = _sequence_body(op, run_local, scale, sharding.sequence, a)
                return o, (state if want_state else None)
        state_out = jax.tree.map(lambda _: state_spec, _state_like(op)) if want_state else None
        # check_vma=False: the paths' scans start from fresh zeros (device-invariant) while their
        # updates vary per shard, which the check rejects. Every sequence shard computes the same
        # final_state (the fold of all P summaries), so replicating it over `sequence` holds; the
        # gradients are those of the unsharded op (tests/pallas_kernels/test_sharding.py).
        fn = jax.shard_map(body, mesh=sharding.mesh, in_specs=(specs,),
                           out_specs=(tok(v), state_out), check_vma=False)
        if AxisType.Explicit in tuple(getattr(sharding.mesh, "axis_types", ())):
            # Explicit axes (jax.make_mesh's default): shard_map takes inputs already so placed.
            args = jax.tree.map(lambda x, p: jax.reshard(x, NamedSharding(sharding.mesh, p)), args, specs)
        return fn(args)


def _gate_spec(op: str, i: int, x, tok, h):
    """A gate follows [B, T, H, ...]; a per-head gate ([H, ...], no time axis) follows H only."""
    from pallas_kernels.spec import OP_SPECS

    gate = OP_SPECS[op].gates[i] if op in OP_SPECS else None
    if gate is not None and not getattr(gate, "timed", True):
        return P(h, *([None] * (x.ndim - 1)))
    return tok(x)


def _state_like(op: str):
    """The pytree structure of `op`'s state: one array, or a tuple (gsa)."""
    from pallas_kernels.spec import OP_SPECS

    n = len(OP_SPECS[op].state) if op in OP_SPECS else (2 if op == "gsa" else 1)
    return (0,) * n if n > 1 else 0


def _fold(s0, transitions, summaries, apply):
    """Prefix states of the affine maps S -> apply(A_j, S) + U_j, j = 0..P-1, from s0.
    Returns (prefix [P, ...] with prefix[r] the state entering shard r, the state after all P)."""

    def step(state, au):
        a, u = au
        return apply(a, state) + u, state

    last, prefix = lax.scan(step, s0, (transitions, summaries))
    return prefix, last


def _sequence_body(op, run_local, scale, seq_axes, a):
    """One sequence shard of `op` (LASP-2; see the module docstring). Returns (o, final_state)."""
    q, k, v, gates = a["q"], a["k"], a["v"], a["gates"]
    segment_ids, starts = a.get("segment_ids"), a.get("starts")
    b, _, h, K = q.shape
    V = v.shape[-1]
    r = lax.axis_index(seq_axes)
    gather = functools.partial(lax.all_gather, axis_name=seq_axes)
    init = a.get("initial_state")
    # first[b, t]: no segment start in the shard up to and including t (S_in still reaches t).
    if starts is None:
        first = jnp.ones(q.shape[:2], bool)
    else:
        first = jnp.cumsum(starts.astype(jnp.int32), axis=1) == 0
    carry = first[:, 0].astype(jnp.float32)  # [b]: 0 when the shard starts a segment
    zero_state = jnp.zeros((b, h, K, V), jnp.float32)

    if op in _GATED_LINEAR:
        o0, u = run_local(q, k, v, gates, initial_state=None, output_final_state=True,
                          segment_ids=segment_ids)
        if op == "linear_attention":
            log_decay = jnp.zeros(q.shape[:3] + (1,), jnp.float32)
        elif op == "simple_gla":
            log_decay = jnp.cumsum(gates[0].astype(jnp.float32), axis=1)[..., None]
        else:
            log_decay = jnp.cumsum(gates[0].astype(jnp.float32), axis=1)
        decay = jnp.exp(log_decay) * first[:, :, None, None]  # [b, t, h, K or 1]
        transition = decay[:, -1]  # [b, h, K or 1]
        transitions, summaries = gather(transition), gather(u)
        prefix, last = _fold(init if init is not None else zero_state, transitions, summaries,
                             lambda d, S: d[..., None] * S)
        s_in = prefix[r]
        qd = scale * q.astype(jnp.float32) * decay
        o = o0.astype(jnp.float32) + jnp.einsum("bthk,bhkv->bthv", qd, s_in, precision=_HIGHEST)
        return o.astype(v.dtype), last

    if op in _DELTA:
        o0, u = run_local(q, k, v, gates, initial_state=None, output_final_state=True,
                          segment_ids=segment_ids)
        eye = jnp.broadcast_to(jnp.eye(K, dtype=jnp.float32), (b, h, K, K))
        w, transition = run_local(q, k, jnp.zeros(k.shape, v.dtype), gates, initial_state=eye,
                                  output_final_state=True, segment_ids=segment_ids)
        transition = transition * carry[:, None, None, None]
        transitions, summaries = gather(transition), gather(u)
        prefix, last = _fold(init if init is not None else zero_state, transitions, summaries,
                             lambda m, S: jnp.einsum("bhij,bhjv->bhiv", m, S, precision=_HIGHEST))
        s_in = prefix[r] * carry[:, None, None, None]
        o = o0.astype(jnp.float32) + jnp.einsum("bthj,bhjv->bthv", w.astype(jnp.float32), s_in,
                                                precision=_HIGHEST)
        return o.astype(v.dtype), last

    # gsa. Pass 1, A_t = A_{t-1} diag(exp g_t) + k_t s_t^T [K x M], summarised in closed form:
    # U1 = sum over the shard's last segment of k_t (s_t * exp(sum_{u > t} g_u))^T.
    s_gate, g = gates
    M = g.shape[-1]
    g32 = g.astype(jnp.float32)
    after = jnp.flip(jnp.cumsum(jnp.flip(g32, 1), axis=1), 1) - g32  # sum_{u > t} g_u
    if starts is None:
        last_segment = jnp.ones(q.shape[:2], bool)
    else:
        count = jnp.cumsum(starts.astype(jnp.int32), axis=1)
        last_segment = count == count[:, -1:]
    weights = s_gate.astype(jnp.float32) * jnp.exp(after) * last_segment[:, :, None, None]
    u1 = jnp.einsum("bthk,bthm->bhkm", k.astype(jnp.float32), weights, precision=_HIGHEST)
    decay = jnp.exp(jnp.sum(g32, axis=1)) * first[:, -1, None, None]  # [b, h, M]
    a0 = init[0] if init is not None else jnp.zeros((b, h, K, M), jnp.float32)
    b0 = init[1] if init is not None else jnp.zeros((b, h, M, V), jnp.float32)
    transitions, summaries = gather(decay), gather(u1)
    prefix1, last1 = _fold(a0, transitions, summaries, lambda d, S: S * d[..., None, :])
    a_in = prefix1[r] * carry[:, None, None, None]
    # Pass 2, B_t = diag(exp g_t) B_{t-1} + s_t v_t^T: its summary from the op with pass 1 exact.
    _, (_, u2) = run_local(q, k, v, gates, initial_state=(a_in, jnp.zeros_like(b0)),
                           output_final_state=True, segment_ids=segment_ids)
    prefix2, last2 = _fold(b0, transitions, gather(u2), lambda d, S: d[..., None] * S)
    b_in = prefix2[r] * carry[:, None, None, None]
    o, _ = run_local(q, k, v, gates, initial_state=(a_in, b_in), output_final_state=False,
                     segment_ids=segment_ids)
    return o, (last1, last2)

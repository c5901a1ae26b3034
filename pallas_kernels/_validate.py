"""Argument checks shared by every op: each failure is a ValueError naming the argument and values."""

from __future__ import annotations

import jax.numpy as jnp

from pallas_kernels.spec import OP_SPECS

IMPLS = ("auto", "reference", "xla", "pallas")

def _shape(x) -> tuple[int, ...]:
    return tuple(getattr(x, "shape", ()))


def _check_float(name: str, x) -> None:
    dtype = getattr(x, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"{name} must be a floating-point array, got dtype {dtype} (shape {_shape(x)})")


def check_chunk_size(chunk_size) -> None:
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1 or (
        chunk_size & (chunk_size - 1)
    ):
        raise ValueError(f"chunk_size must be a positive power of two, got {chunk_size!r}")


def check_impl(impl) -> None:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")


def validate(op: str, q, k, v, gates: tuple, *, scale, initial_state, segment_ids, chunk_size, impl):
    """Checks the arguments of `op` against its `OpSpec`; returns (B, T, H, K, V, M), M = None
    unless a gate has the slot dim."""
    check_impl(impl)
    check_chunk_size(chunk_size)
    for name, x in (("q", q), ("k", k), ("v", v)):
        _check_float(name, x)
        if x.ndim != 4:
            raise ValueError(f"{name} must have rank 4 [B, T, H, D], got shape {_shape(x)}")
    if q.shape != k.shape:
        raise ValueError(f"q and k must have the same shape [B, T, H, K], got q {q.shape} and k {k.shape}")
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"v must share [B, T, H] with q, got v {v.shape} and q {q.shape}"
        )
    B, T, H, K = q.shape
    V = v.shape[-1]
    if T == 0:
        raise ValueError(f"sequence length T must be >= 1, got q {q.shape}")
    spec = OP_SPECS[op]
    if len(gates) != len(spec.gates):
        raise ValueError(f"{op} takes gates {list(spec.gate_names)}, got {len(gates)} gate arrays")
    M = None  # the slot count comes from the first [B, T, H, M] gate
    for gate, x in zip(spec.gates, gates):
        _check_float(gate.name, x)
        if gate.kind == "bthm" and M is None:
            if x.ndim != 4 or x.shape[:3] != (B, T, H):
                raise ValueError(
                    f"{gate.name} must have shape [B, T, H, M] = [{B}, {T}, {H}, M], got {_shape(x)}")
            M = x.shape[-1]
        want = gate.shape(B, T, H, K, M, V)
        if x.shape != want:
            raise ValueError(
                f"{gate.name} must have shape {list(want)} for {op} with q {q.shape}, got {_shape(x)}")
    if scale is not None and not isinstance(scale, (int, float)):
        raise ValueError(f"scale must be a Python float or None, got {type(scale).__name__}")
    if initial_state is not None:
        want = spec.state_shapes(B, H, K, V, M)
        if len(want) > 1:
            ok = isinstance(initial_state, (tuple, list)) and len(initial_state) == len(want)
            got = tuple(_shape(x) for x in initial_state) if ok else _shape(initial_state)
            if not ok or got != want:
                shapes = " and ".join(str(list(w)) for w in want)
                raise ValueError(f"initial_state for {op} must be a tuple of shapes {shapes}, got {got}")
            for i, x in enumerate(initial_state):
                _check_float(f"initial_state[{i}]", x)
        else:
            dims = ", ".join(spec.state[0])
            if _shape(initial_state) != want[0]:
                raise ValueError(f"initial_state must have shape [B, H, {dims}] = {list(want[0])}, "
                                 f"got {_shape(initial_state)}")
            _check_float("initial_state", initial_state)
    if segment_ids is not None:
        dtype = getattr(segment_ids, "dtype", None)
        if dtype is None or not jnp.issubdtype(dtype, jnp.integer):
            raise ValueError(f"segment_ids must be an integer array [B, T], got dtype {dtype}")
        if _shape(segment_ids) != (B, T):
            raise ValueError(f"segment_ids must have shape [B, T] = [{B}, {T}], got {_shape(segment_ids)}")
    return B, T, H, K, V, M

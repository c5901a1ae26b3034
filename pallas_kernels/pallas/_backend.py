"""Which Pallas flavour the kernels are built for, and how they run.

Two flavours of every kernel exist (one algorithm, two ways to drive the hardware):

- ``"tpu"``: Mosaic TPU. ``pl.pallas_call`` over a grid whose last axis is the chunk axis
  (``"arbitrary"``, sequential), the running state in VMEM scratch.
- ``"triton"``: the GPU lowering of ``pl.pallas_call`` in jax 0.11.2. Programs have no order, so
  the chunk loop of the state pass runs inside the kernel (``lax.fori_loop``).

The flavour is chosen at trace time, in this order:

1. the innermost ``with use_backend(...)`` block;
2. the environment variable ``CHUNKWISE_PALLAS_BACKEND`` (``tpu`` or ``triton``), with
   ``CHUNKWISE_PALLAS_DETECT_RACES=1`` turning on the TPU interpreter's race detector on CPU;
3. the platform: TPU -> ``"tpu"`` compiled; GPU -> ``"triton"`` compiled; CPU -> ``"triton"``
   with ``interpret=True`` (the fastest interpreter).

On a CPU the kernels always run in interpret mode: ``"tpu"`` with ``pltpu.InterpretParams``
(it simulates VMEM and checks races), ``"triton"`` with ``interpret=True``.

The choice is read while tracing, so a function already jitted keeps the flavour it was traced
with: call the unjitted function (e.g. ``pallas_kernels.gla.__wrapped__``) inside a fresh
``jax.jit`` when switching flavours in one process.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import jax

KINDS = ("tpu", "triton")


@dataclasses.dataclass(frozen=True)
class Backend:
    """A resolved flavour.

    Attributes:
      kind: "tpu" or "triton".
      interpret: the value passed to ``pl.pallas_call(interpret=...)``: False (compiled), True
        (plain interpreter) or a ``pltpu.InterpretParams``.
    """

    kind: str
    interpret: Any = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"backend kind must be one of {KINDS}, got {self.kind!r}")


_override: contextvars.ContextVar[Backend | None] = contextvars.ContextVar(
    "chunkwise_pallas_backend", default=None
)


def _default_interpret(kind: str, detect_races: bool):
    if kind == "tpu":
        from jax.experimental.pallas import tpu as pltpu

        return pltpu.InterpretParams(detect_races=detect_races)
    return True


@contextlib.contextmanager
def use_backend(kind: str, *, interpret: Any = None, detect_races: bool = False) -> Iterator[Backend]:
    """Builds the Pallas kernels traced inside the block for flavour `kind` ("tpu" or "triton").

    `interpret` defaults to False on a matching accelerator and to interpret mode elsewhere
    (`pltpu.InterpretParams(detect_races=detect_races)` for "tpu", True for "triton").
    """
    if kind not in KINDS:
        raise ValueError(f"backend kind must be one of {KINDS}, got {kind!r}")
    if interpret is None:
        native = {"tpu": "tpu", "triton": "gpu"}[kind]
        interpret = False if jax.default_backend() == native else _default_interpret(kind, detect_races)
    backend = Backend(kind, interpret)
    token = _override.set(backend)
    try:
        yield backend
    finally:
        _override.reset(token)


@contextlib.contextmanager
def for_platform(platform: str) -> Iterator[Backend]:
    """Builds the kernels traced inside the block for the devices they are compiled for
    (`platform`: "tpu", "gpu" or "cpu", e.g. a mesh's), not for the host: "tpu" -> compiled
    Mosaic, "gpu" -> compiled Triton, "cpu" -> interpret mode (flavour from
    ``CHUNKWISE_PALLAS_BACKEND``, else "triton"). An enclosing `use_backend` block wins, and when
    the target is the host's own platform `current()` already decides."""
    if _override.get() is not None or platform == jax.default_backend():
        yield current()
        return
    if platform in ("tpu", "gpu"):
        backend = Backend("tpu" if platform == "tpu" else "triton", False)
    else:
        kind = os.environ.get("CHUNKWISE_PALLAS_BACKEND", "").strip().lower() or "triton"
        races = os.environ.get("CHUNKWISE_PALLAS_DETECT_RACES", "") not in ("", "0")
        backend = Backend(kind, _default_interpret(kind, races))
    token = _override.set(backend)
    try:
        yield backend
    finally:
        _override.reset(token)


def current() -> Backend:
    """The flavour kernels traced now are built for (see the module docstring)."""
    forced = _override.get()
    if forced is not None:
        return forced
    platform = jax.default_backend()
    env = os.environ.get("CHUNKWISE_PALLAS_BACKEND", "").strip().lower()
    races = os.environ.get("CHUNKWISE_PALLAS_DETECT_RACES", "") not in ("", "0")
    if env:
        if env not in KINDS:
            raise ValueError(f"CHUNKWISE_PALLAS_BACKEND must be one of {KINDS}, got {env!r}")
        native = {"tpu": "tpu", "triton": "gpu"}[env]
        return Backend(env, False if platform == native else _default_interpret(env, races))
    if platform == "tpu":
        return Backend("tpu", False)
    if platform == "gpu":
        return Backend("triton", False)
    return Backend("triton", True)

"""Pallas kernels behind `impl="pallas"`, registered per op.

A kernel module registers itself with `register(op, fn, supports)`:

- `fn(q, k, v, *gates, scale, initial_state, segment_ids, chunk_size, output_final_state)`
  gets the padded problem (T a multiple of chunk_size; `initial_state` and `segment_ids` may be
  None) and returns `(o, final_state)` with `o` float32 or v's dtype [B, T, H, V] and `final_state`
  float32 (a tuple for gsa; anything when `output_final_state` is False).
- `supports(q, k, v, *gates, chunk_size) -> str | None`: None when the kernel handles the call on
  the current backend, else the reason it does not (`impl="auto"` then falls back to xla).

Modules (DESIGN.md §3):
- `_backend`: which flavour the kernels are traced for ("tpu": Mosaic TPU, chunk axis "arbitrary",
  state in VMEM scratch; "triton": the GPU lowering, chunk loop inside the kernel) and how they run
  (compiled, or interpret mode on CPU). `use_backend("tpu" | "triton")` or the environment variable
  `CHUNKWISE_PALLAS_BACKEND` picks it; see that module.
- `chunk_state`: the shared inter-chunk state pass (stage 3) with its reverse pass; optional
  delta-rule correction `w`.
- `chunk_output`: the shared intra-chunk scores + output stage (stages 2 and 4) and its backward,
  for a scalar gate, per-key-channel gates and per-value-channel gates.
- `gla_family`: linear_attention, simple_gla, gla, gsa on those stages.
- `delta`, `wy`: delta_rule, gated_delta_rule (WY stage, then the shared stages).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable


@dataclasses.dataclass(frozen=True)
class Kernel:
    fn: Callable
    supports: Callable[..., str | None]


_KERNELS: dict[str, Kernel] = {}


def register(op: str, fn: Callable, supports: Callable[..., str | None]) -> None:
    _KERNELS[op] = Kernel(fn, supports)


def get(op: str) -> Kernel | None:
    _load()
    return _KERNELS.get(op)


def _load() -> None:
    """Imports the kernel modules (they register themselves). Kept lazy: importing Pallas is slow."""
    # Kernel modules are added here as they land, e.g. `from pallas_kernels.pallas import gla`.
    from pallas_kernels.pallas import (
        delta,  # noqa: F401  (delta_rule, gated_delta_rule)
        gla_family,  # noqa: F401  (linear_attention, simple_gla, gla, gsa)
    )

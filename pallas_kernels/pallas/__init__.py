"""Pallas kernels behind `impl="pallas"`, registered per op.

A kernel module registers itself with `register(op, fn, supports)`:

- `fn(q, k, v, *gates, scale, initial_state, segment_ids, chunk_size, output_final_state)`
  gets the padded problem (T a multiple of chunk_size; `initial_state` and `segment_ids` may be
  None) and returns `(o, final_state)` with `o` float32 or v's dtype [B, T, H, V] and `final_state`
  float32 (a tuple for gsa; anything when `output_final_state` is False).
- `supports(q, k, v, *gates, chunk_size) -> str | None`: None when the kernel handles the call on
  the current backend, else the reason it does not (`impl="auto"` then falls back to xla).
"""

from __future__ import annotations

import dataclasses
from typing import Callable


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
    from pallas_kernels.pallas import gla_family  # noqa: F401  (linear_attention, simple_gla, gla, gsa)
    from pallas_kernels.pallas import delta  # noqa: F401  (delta_rule, gated_delta_rule)

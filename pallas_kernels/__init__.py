"""chunkwise ops: linear-recurrent attention in [B, T, H, D] layout, with reference, chunked-XLA
and Pallas paths. See `pallas_kernels.ops` for the notation and each op's recurrence."""

from pallas_kernels.ops import (
    delta_rule,
    gated_delta_rule,
    gla,
    gsa,
    linear_attention,
    resolve_impl,
    simple_gla,
)

OPS = ("linear_attention", "simple_gla", "gla", "delta_rule", "gated_delta_rule", "gsa")

__all__ = [
    "OPS", "delta_rule", "gated_delta_rule", "gla", "gsa", "linear_attention", "resolve_impl",
    "simple_gla",
]

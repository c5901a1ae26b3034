"""chunkwise ops: linear-recurrent attention in [B, T, H, D] layout, with reference, chunked-XLA
and Pallas paths. See `pallas_kernels.ops` for the notation and each op's recurrence, and
`pallas_kernels.spec` for the op table (`OP_SPECS`, `spec(name)`) and how to add an op."""

from pallas_kernels.ops import (
    delta_rule,
    gated_delta_rule,
    gla,
    gsa,
    linear_attention,
    resolve_impl,
    selective_scan,
    simple_gla,
    ttt_linear,
)
from pallas_kernels.sharding import OpSharding
from pallas_kernels.spec import OP_SPECS, OPS, OpSpec, spec

__all__ = [
    "OPS",
    "OP_SPECS",
    "OpSharding",
    "OpSpec",
    "delta_rule",
    "gated_delta_rule",
    "gla",
    "gsa",
    "linear_attention",
    "resolve_impl",
    "selective_scan",
    "simple_gla",
    "spec",
    "ttt_linear",
]

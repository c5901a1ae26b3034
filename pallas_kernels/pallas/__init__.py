"""Pallas kernels behind `impl="pallas"`; which op has which kernel is in the op table.

`get(op)` gives the op's `Kernel`, read from `spec.OP_SPECS[op].kernel`:

- `supports(q, k, v, *gates, chunk_size) -> str | None`: `chunking.supports`, the one rule for
  every op (None when the kernels of the current flavour take the call, else the reason;
  `impl="auto"` then falls back to xla, `impl="pallas"` raises it as a ValueError).
- `fn(q, k, v, *gates, scale, initial_state, segments, chunk_size)`: the problem of `ops._run`
  (any T). It checks `supports`, pads the head dims K and V for the current flavour
  (`chunking.padded_dim`: zero channels are exact), pads T to whole chunks unless the flavour's
  kernels mask a ragged T themselves (`Kernel.ragged` of the table), calls the op's entry (`Kernel.entry`, imported
  on first use: importing Pallas is slow) and slices the output [B, T, H, V] and the final
  state back.

Modules (docs/design.md):
- `_backend`: which flavour the kernels are traced for ("tpu": Mosaic TPU, chunk axis "arbitrary",
  state in VMEM scratch; "triton": the GPU lowering, chunk loop inside the kernel) and how they run
  (compiled, or interpret mode on CPU). `use_backend("tpu" | "triton")` or the environment variable
  `CHUNKWISE_PALLAS_BACKEND` picks it; every stage reads it when traced (`_backend.current()`).
- `_common`: what the kernels share: matmuls, the compute-dtype rule, compiler params and
  `pallas_call` over named optional operands.
- `chunk_state`: the shared inter-chunk state pass (stage 3) with its reverse pass; optional
  delta-rule correction `w`.
- `chunk_output`: the shared intra-chunk scores + output stage (stages 2 and 4) and its backward,
  for a scalar gate, per-key-channel gates and per-value-channel gates.
- `chunk_fused`: the TPU flavour's fused kernels (stages 2 to 5 in one forward and one backward
  kernel, state in VMEM, `[B, T, H, D]` read in place): the gated-linear family forward and
  backward, the delta-rule family (and ttt_linear) forward and backward; a ragged last chunk is
  masked in the kernels.
- `gla_family`: linear_attention, simple_gla, gla, gsa on those stages.
- `wy`, `delta`: delta_rule, gated_delta_rule (the WY stage, then the shared stages).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib

from pallas_kernels import chunking
from pallas_kernels.spec import OP_SPECS, OpSpec


@functools.cache
def _entry(path: str):
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


@dataclasses.dataclass(frozen=True)
class Kernel:
    """The Pallas path of one op (see the module docstring)."""

    spec: OpSpec

    def supports(self, q, k, v, *gates, chunk_size: int) -> str | None:
        return chunking.supports(self.spec, q, k, v, *gates, chunk_size=chunk_size)

    def takes(self, segments, chunk_size: int, **options) -> str | None:
        """The op's own rule on the call's segments and options (`spec.Kernel.takes`), or None."""
        rule = self.spec.kernel.takes if self.spec.kernel is not None else None
        return None if rule is None else _entry(rule)(segments, chunk_size, **options)

    def fn(self, q, k, v, *gates, scale, initial_state, segments, chunk_size, **options):
        from pallas_kernels.pallas import _backend

        spec = self.spec
        reason = self.supports(q, k, v, *gates, chunk_size=chunk_size)
        if reason is None:
            reason = self.takes(segments, chunk_size, **options)
        if reason is not None:
            raise ValueError(f"impl='pallas' cannot run {spec.name} here: {reason}")
        kind = _backend.current().kind
        dims = {"K": q.shape[-1], "V": v.shape[-1]}
        padded = {d: chunking.padded_dim(kind, n) for d, n in dims.items()}
        to = lambda d: padded.get(d)  # noqa: E731  (None: a dim the entry pads itself, e.g. M)
        q, k = (chunking.pad_dim(x, padded["K"]) for x in (q, k))
        v = chunking.pad_dim(v, padded["V"])
        gates = [chunking.pad_dim(x, padded["K"]) if g.kind == "bthk" else x
                 for g, x in zip(spec.gates, gates)]
        states = None if initial_state is None else _leaves(spec, initial_state)
        if states is not None:
            states = [_pad_state(s, to(a), to(b)) for s, (a, b) in zip(states, spec.state)]
        entry = _entry(spec.kernel.entry)
        kw = dict(scale=scale, initial_state=None if states is None else _tree(spec, states),
                  **options)
        if kind in spec.kernel.ragged:
            o, final = entry(q, k, v, *gates, chunk_size=chunk_size, segments=segments, **kw)
        else:
            o, final = chunking.on_whole_chunks(entry, chunk_size, q, k, v, gates,
                                                [g.timed for g in spec.gates],
                                                segments=segments, **kw)
        final = [s[:, :, : dims.get(a, s.shape[2]), : dims.get(b, s.shape[3])]
                 for s, (a, b) in zip(_leaves(spec, final), spec.state)]
        return o[..., : dims["V"]], _tree(spec, final)


def _leaves(spec: OpSpec, state) -> list:
    return list(state) if len(spec.state) > 1 else [state]


def _tree(spec: OpSpec, leaves):
    return tuple(leaves) if len(spec.state) > 1 else leaves[0]


def _pad_state(s, rows: int | None, cols: int | None):
    s = s if rows is None else chunking.pad_dim(s, rows, axis=2)
    return s if cols is None else chunking.pad_dim(s, cols, axis=3)


def get(op: str) -> Kernel:
    """The Pallas path of `op` (a key of `spec.OP_SPECS`)."""
    return Kernel(OP_SPECS[op])


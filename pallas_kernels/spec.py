"""The op table: every fact about an op that more than one place needs, stated once.

`OP_SPECS` maps an op's name to a frozen `OpSpec`: its gates and their shapes, the shape of its
state, its three paths (token-by-token reference, chunked XLA form, Pallas kernel) and what the
kernel supports beyond the shared stages. These read it: argument validation (`_validate`), the
path dispatch (`ops`), the Pallas registry and its `supports` rule (`pallas`, `chunking.supports`),
the float64 test oracle's inputs (tests/pallas_kernels/oracle64.py), `benchmark.make_problem`,
`experiments/bench_kernels.py` and the lowering tests' argument lists.

Notation: B batch, T time, H heads, K key/query head dim, V value head dim, M gsa slots.

Contracts of the three paths (see docs/design.md for the stages):

- `reference(q, k, v, *gates, scale, initial_state, segments) -> (o, final_state)`: the
  unpadded, validated problem; `scale` a float, `initial_state` float32 or None, `segments` a
  `chunking.Segments` or None; `o` float32 [B, T, H, V], `final_state` float32 (a tuple when the
  op has several states).
- `xla(q, k, v, *gates, scale, initial_state, segments, chunk_size)`: the same, with T padded to
  a multiple of `chunk_size` (zero inputs and zero log-gates after the true end change nothing).
- `kernel.entry`, a "module:function" imported on first use (importing Pallas is slow): the
  `xla` contract, and in addition the head dims K and V padded for the current Pallas flavour
  (`chunking.padded_dim`; zero channels change nothing), and T not padded on the flavours the
  kernel lists as `ragged` (they mask the last, partial chunk). The caller
  (`pallas.get(op).fn`) pads and slices; the entry returns o [B, T, H, V'] and the padded state.

Adding an op (e.g. `selective_scan`), four places:

1. here, an entry in `OP_SPECS`::

       "my_op": OpSpec(
           name="my_op",
           gates=(Gate("g", "bth", "log_decay"), Gate("beta", "bth", "strength")),
           state=(("K", "V"),),
           reference=reference.my_op,
           xla=xla.my_op,
           kernel=Kernel("pallas_kernels.pallas.my_module:my_op"),   # or None: no kernel yet
           recurrence="S_t = ...",
       ),

2. `reference.my_op` (a `lax.scan` over tokens, `_scan` does the segment resets) and `xla.my_op`
   (the chunked form on the shared stage 1 of `chunking`: `to_chunks`, `log_decays`,
   `state_pass`, ...);
3. the kernel entry, if any, on the shared Pallas stages (`pallas/chunk_state.py`,
   `pallas/chunk_output.py`) with `pallas/_common.py`'s helpers;
4. tests: the op's recurrence in tests/pallas_kernels/oracle64.py (`_step`), and a Pallas test
   file if it has a kernel. test_ops.py runs every op in `OP_SPECS` against the oracle already.

and its public function in `ops.py` (six lines: the signature with the gates by name, a
docstring, `return _run("my_op", ...)`), exported from `pallas_kernels/__init__.py`. Validation,
the Pallas registry, `supports`, the oracle's and benchmarks' random inputs and `bench_kernels`
follow from the table. A gate whose values need a new kind of random input adds its role to
`ROLES` and to the two generators (oracle64.make_inputs, benchmark.make_problem).

Fields that other layers need (e.g. the kind of state transition for sequence parallelism) are
added to `OpSpec` with a default, so that existing entries stay valid.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from pallas_kernels import reference, xla

GATE_KINDS = {"bth": "[B, T, H]", "bthk": "[B, T, H, K]", "bthm": "[B, T, H, M]",
              "bthv": "[B, T, H, V]", "hvk": "[H, V, K]"}  # hvk: per head, not per token
# How the tests and benchmarks draw a gate: log-decays (<= 0), write strengths in (0, 1) (the delta
# rule's beta), slot write weights in (0, 1) (gsa's s), step sizes > 0 (selective_scan's dt, of
# typical size `decay`), negative rates (selective_scan's A) and small inner learning rates
# (ttt_linear's eta, at most 1/4).
ROLES = ("log_decay", "strength", "weight", "step", "rate", "learning_rate")
DIMS = ("K", "V", "M")


@dataclasses.dataclass(frozen=True)
class Gate:
    """One gate argument: its name (the keyword of the public op), the kind of shape (a key of
    `GATE_KINDS`) and its role (one of `ROLES`)."""

    name: str
    kind: str
    role: str

    def __post_init__(self):
        if self.kind not in GATE_KINDS:
            raise ValueError(f"gate {self.name}: kind must be one of {tuple(GATE_KINDS)}, got {self.kind!r}")
        if self.role not in ROLES:
            raise ValueError(f"gate {self.name}: role must be one of {ROLES}, got {self.role!r}")

    def shape(self, B: int, T: int, H: int, K: int, M: int | None, V: int | None = None) -> tuple[int, ...]:
        """The gate's shape for a problem of these sizes."""
        return {"bth": (B, T, H), "bthk": (B, T, H, K), "bthm": (B, T, H, M),
                "bthv": (B, T, H, V), "hvk": (H, V, K)}[self.kind]

    @property
    def timed(self) -> bool:
        """The gate has a time axis (axis 1), padded with the inputs."""
        return self.kind.startswith("bt")


@dataclasses.dataclass(frozen=True)
class Kernel:
    """An op's Pallas kernel: where its entry lives and what it supports beyond the shared stages.

    Attributes:
      entry: "module:function" of the entry point (imported on first use).
      chunk_sizes: (smallest, largest) chunk size its own stages take, or None for the range of
        the shared stages (`chunking.supports`).
      dtypes: the dtypes q, k, v and the gates may have.
      takes: "module:function" of a rule on the call's segments, chunk size and options,
        `takes(segments, chunk_size, **options) -> str | None` (None: the kernel takes it), for a
        kernel that covers only part of the op (ttt_linear); None: every call.
      ragged: the Pallas flavours ("tpu", "triton") whose kernels take any T (they mask the
        last, partial chunk); on the others `Kernel.fn` pads T to whole chunks before the entry.
    """

    entry: str
    chunk_sizes: tuple[int, int] | None = None
    dtypes: tuple[str, ...] = ("float32", "bfloat16")
    takes: str | None = None
    ragged: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class OpSpec:
    """The facts about one op.

    Attributes:
      name: the public name (`pallas_kernels.<name>`).
      gates: the gate arguments after q, k, v, in order.
      state: the dims after [B, H] of each state array, e.g. (("K", "V"),); an op with several
        states (gsa) takes and returns them as a tuple in this order.
      reference, xla: the two plain-JAX paths (contracts in the module docstring).
      kernel: the Pallas kernel, or None.
      unit_keys: the tests and benchmarks draw L2-normalised keys (the delta rule's stability
        condition).
      recurrence: the state update in one line, for documentation.
      fla, jla: "module:function" of the same op in flash-linear-attention and jla (benchmarks).
      options: static keyword arguments of the op beyond the shared ones, with their defaults
        (e.g. ttt_linear's mini_batch_size); every path takes them as keywords.
    """

    name: str
    gates: tuple[Gate, ...]
    state: tuple[tuple[str, str], ...]
    reference: Callable
    xla: Callable
    kernel: Kernel | None
    unit_keys: bool = False
    recurrence: str = ""
    fla: str | None = None
    jla: str | None = None
    options: tuple[tuple[str, object], ...] = ()

    def __post_init__(self):
        for dims in self.state:
            if len(dims) != 2 or any(d not in DIMS for d in dims):
                raise ValueError(f"{self.name}: state dims must be pairs from {DIMS}, got {self.state}")

    @property
    def gate_names(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.gates)

    @property
    def has_slots(self) -> bool:
        """Some gate or state uses the slot dim M."""
        return any(g.kind == "bthm" for g in self.gates)

    def state_shapes(self, B: int, H: int, K: int, V: int, M: int | None = None):
        """Shapes of the state arrays, one per entry of `state`."""
        size = {"K": K, "V": V, "M": M}
        return tuple((B, H, size[a], size[b]) for a, b in self.state)


def _spec(name, gates, state, kernel, **kw) -> OpSpec:
    return OpSpec(name=name, gates=gates, state=state, reference=getattr(reference, name),
                  xla=getattr(xla, name), kernel=kernel, **kw)


_GLA = "pallas_kernels.pallas.gla_family:"
_DELTA = "pallas_kernels.pallas.delta:"
# The WY stage takes chunks of 16..128 positions, and half-precision inputs.
_TPU = ("tpu",)  # the TPU flavour's fused kernels (pallas/chunk_fused.py) mask a ragged T
_DELTA_LIMITS = dict(chunk_sizes=(16, 128), dtypes=("float32", "bfloat16", "float16"),
                     ragged=_TPU)
_KV = (("K", "V"),)

OP_SPECS: dict[str, OpSpec] = {
    s.name: s
    for s in (
        _spec("linear_attention", (), _KV, Kernel(_GLA + "linear_attention", ragged=_TPU),
              recurrence="S_t = S_{t-1} + k_t v_t^T"),
        _spec("simple_gla", (Gate("g", "bth", "log_decay"),), _KV,
              Kernel(_GLA + "simple_gla", ragged=_TPU),
              recurrence="S_t = exp(g_t) S_{t-1} + k_t v_t^T",
              fla="fla.ops.simple_gla:chunk_simple_gla", jla="simple_gla"),
        _spec("gla", (Gate("g", "bthk", "log_decay"),), _KV, Kernel(_GLA + "gla", ragged=_TPU),
              recurrence="S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T",
              fla="fla.ops.gla:chunk_gla", jla="gla"),
        _spec("delta_rule", (Gate("beta", "bth", "strength"),), _KV,
              Kernel(_DELTA + "delta_rule", **_DELTA_LIMITS), unit_keys=True,
              recurrence="S_t = (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T",
              fla="fla.ops.delta_rule:chunk_delta_rule", jla="deltanet"),
        _spec("gated_delta_rule", (Gate("g", "bth", "log_decay"), Gate("beta", "bth", "strength")),
              _KV, Kernel(_DELTA + "gated_delta_rule", **_DELTA_LIMITS), unit_keys=True,
              recurrence="S_t = exp(g_t)(I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T",
              fla="fla.ops.gated_delta_rule:chunk_gated_delta_rule", jla="gated_deltanet"),
        _spec("gsa", (Gate("s", "bthm", "weight"), Gate("g", "bthm", "log_decay")),
              (("K", "M"), ("M", "V")), Kernel(_GLA + "gsa"),
              recurrence="A_t = A_{t-1} diag(exp(g_t)) + k_t s_t^T; B_t = diag(exp(g_t)) B_{t-1} + s_t v_t^T",
              fla="fla.ops.gsa:chunk_gsa"),
    )
}

# Ops whose paths live in their own modules (not the gated-linear / delta families).
from pallas_kernels import selective as _selective  # noqa: E402
from pallas_kernels import ttt as _ttt  # noqa: E402

OP_SPECS.update({
    "selective_scan": OpSpec(
        name="selective_scan",
        gates=(Gate("dt", "bthv", "step"), Gate("A", "hvk", "rate")),
        state=_KV, reference=_selective.reference, xla=_selective.xla, kernel=None,
        recurrence="S_t[n, p] = exp(dt_t[p] A[p, n]) S_{t-1}[n, p] + k_t[n] dt_t[p] v_t[p]",
        fla=None),
    "ttt_linear": OpSpec(
        name="ttt_linear", gates=(Gate("eta", "bth", "learning_rate"),), state=_KV,
        reference=_ttt.reference, xla=_ttt.xla, unit_keys=True,
        kernel=Kernel("pallas_kernels.pallas.ttt:ttt_linear", takes="pallas_kernels.pallas.ttt:takes",
                      ragged=_TPU),
        recurrence="W_t = W_{t-1} + eta_t k_t (v_t - W^(m)^T k_t)^T, W^(m) the mini-batch's start",
        options=(("mini_batch_size", 16),)),
})

OPS: tuple[str, ...] = tuple(OP_SPECS)


def spec(op: str) -> OpSpec:
    """The `OpSpec` of `op`; a ValueError naming the known ops otherwise."""
    try:
        return OP_SPECS[op]
    except KeyError:
        raise ValueError(f"unknown op {op!r}; the ops are {OPS}") from None

"""HBM traffic of every op on one TPU chip, from compiling ahead of time on a machine with no TPU.

    python -m experiments.bench_tpu_aot                                 # v5e, every op, both paths
    python -m experiments.bench_tpu_aot --topology v6e --ops gla delta_rule --impls xla
    python -m experiments.bench_tpu_aot --shape 8,2048,16,128,128 --write BENCHMARKS.md
    python -m experiments.bench_tpu_aot --peers                        # + tokamax KDA, jla chunked

Each op is compiled by libtpu's compiler (the real Mosaic compiler for the Pallas kernels) for one
chip of `jax.experimental.topologies.get_topology_desc(...)`, forward (`o`) and forward+backward
(the gradient of sum(o) w.r.t. every input), from abstract inputs (bf16 q, k, v, beta and s;
float32 log-gates). Nothing runs. Per op and path it prints:

- `bytes`: every HLO op's operands and results, a Pallas kernel by its inputs and outputs, in GB
  (1e9): the sum of `compiled.cost_analysis()`'s per-operand `bytes accessed{i}{}` and
  `bytes accessedout{}` entries (`accessed_bytes`; its `bytes accessed` total omits the kernels);
- `floor`: the inputs read once plus o written once (forward), or the inputs read once plus every
  gradient written once (forward+backward), and the ratio bytes / floor;
- `temp`: `compiled.memory_analysis().temp_size_in_bytes`, in MiB;
- `saved`: the residuals `jax.vjp` keeps for the backward (the leaves of its vjp function), in
  MiB, and how much of that is the inputs themselves (held by the caller anyway).

`--write PATH` puts the table into PATH's `tpu-aot-<topology>` section (other sections are kept).
`--peers` adds rows, where the packages import (`pip install -e '.[peers]'`; `make bench-tpu`
installs them): tokamax's Mosaic TPU kernel for KDA (a per-channel
gate [B, T, H, K], a harder op than `gated_delta_rule`) and jax-linear-attention's pure-JAX
chunked gated delta rule. `--inverse` adds the delta rule's chunk-local triangular inverse
(`pallas_kernels.xla.unit_lower_inverse`) compiled alone, once per method. The process sets `JAX_PLATFORMS=cpu` and `ALLOW_MULTIPLE_LIBTPU_LOAD=1`
before jax starts; libtpu must be installed (`pip install libtpu`).
"""

from __future__ import annotations

import os

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["ALLOW_MULTIPLE_LIBTPU_LOAD"] = "1"

import argparse  # noqa: E402
import datetime  # noqa: E402
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.extend import core as jex_core  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: E402

import pallas_kernels  # noqa: E402
from pallas_kernels.pallas._backend import use_backend  # noqa: E402
from pallas_kernels.spec import OP_SPECS  # noqa: E402

# One chip of each generation: get_topology_desc needs a whole host's layout; take devices[:1].
TOPOLOGIES = {"v5e": "v5e:2x2", "v6e": "v6e:2x2", "v5p": "v5p:2x2x2"}
DEFAULT_SHAPE = (8, 2048, 16, 128, 128)  # B, T, H, K, V
DEFAULT_SLOTS = 64
IMPLS = ("pallas", "xla")
MIB = 2**20
SECTION = "tpu-aot"


def one_chip_mesh(topology: str) -> Mesh:
    """A 1-device mesh (axis "x") over the first abstract chip of `topology` (a TOPOLOGIES key)."""
    from jax.experimental import topologies

    if topology not in TOPOLOGIES:
        raise ValueError(f"topology must be one of {sorted(TOPOLOGIES)}, got {topology!r}")
    topo = topologies.get_topology_desc(TOPOLOGIES[topology], platform="tpu")
    return Mesh(np.array(topo.devices[:1]), ("x",))


def abstract(shape, dtype, mesh: Mesh) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, PartitionSpec()))


HALF_ROLES = ("strength", "weight")  # gates in bf16 (beta, s); the rest (log-gates) float32
KERNEL_OPS = tuple(op for op, s in OP_SPECS.items() if s.kernel is not None)


def op_inputs(op: str, B: int, T: int, H: int, K: int, V: int, M: int, mesh: Mesh) -> list:
    """Abstract (q, k, v, *gates): bf16 q, k, v, beta and s; float32 log-gates."""
    spec = OP_SPECS[op]
    bf16 = jnp.bfloat16
    args = [abstract((B, T, H, K), bf16, mesh), abstract((B, T, H, K), bf16, mesh),
            abstract((B, T, H, V), bf16, mesh)]
    for gate in spec.gates:
        dtype = bf16 if gate.role in HALF_ROLES else jnp.float32
        try:
            shape = gate.shape(B, T, H, K, M, V=V)
        except TypeError:  # an op table whose gates have no [.., V] kind
            shape = gate.shape(B, T, H, K, M)
        args.append(abstract(shape, dtype, mesh))
    return args


def nbytes(tree) -> int:
    return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def saved_residuals(f: Callable, args: Sequence) -> tuple[int, int]:
    """(bytes of every residual jax.vjp(f) keeps, bytes of those that are inputs of f)."""
    closed = jax.make_jaxpr(lambda *a: jax.vjp(f, *a)[1])(*args)
    jaxpr = closed.jaxpr
    inputs = set(jaxpr.invars)
    total = from_inputs = 0
    seen = set()
    for v in jaxpr.outvars:
        if isinstance(v, jex_core.Literal):
            continue
        if v in seen:
            continue
        seen.add(v)
        size = math.prod(v.aval.shape) * jnp.dtype(v.aval.dtype).itemsize
        total += size
        from_inputs += size if v in inputs else 0
    return total, from_inputs


def accessed_bytes(cost: dict) -> float:
    """Bytes read and written by the compiled program, Pallas kernels included: the sum of the
    cost analysis' per-operand entries (`bytes accessed0{}`, `bytes accessed1{}`, ...) and its
    output entry (`bytes accessedout{}`). Its `bytes accessed` total leaves the Mosaic custom
    calls out (a program that is one kernel has no such total at all); for plain XLA programs the
    two agree within a few percent."""
    parts = [v for k, v in cost.items() if k.startswith("bytes accessed") and k != "bytes accessed"]
    return float(sum(parts)) if parts else float(cost.get("bytes accessed", 0.0))


def _compile(f: Callable, args: Sequence) -> dict:
    t0 = time.perf_counter()
    compiled = jax.jit(f).lower(*args).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    mem = compiled.memory_analysis()
    return {"bytes": accessed_bytes(cost), "temp": int(mem.temp_size_in_bytes),
            "compile_s": time.perf_counter() - t0}


def measure(name: str, f: Callable, args: Sequence, impl: str) -> dict:
    """Forward and forward+backward figures of `f(*args) -> o` (see the module docstring)."""

    def loss(*a):
        return jnp.sum(f(*a).astype(jnp.float32))

    grad = jax.grad(loss, argnums=tuple(range(len(args))))
    o = jax.eval_shape(f, *args)
    rec = {"op": name, "impl": impl, "in_bytes": nbytes(args), "o_bytes": nbytes(o)}
    rec["fwd_floor"] = rec["in_bytes"] + rec["o_bytes"]
    rec["fb_floor"] = 2 * rec["in_bytes"]  # read every input, write its gradient
    rec["saved"], rec["saved_inputs"] = saved_residuals(f, args)  # tracing only: fails fast
    rec.update({f"fwd_{k}": v for k, v in _compile(f, args).items()})
    rec.update({f"fb_{k}": v for k, v in _compile(grad, args).items()})
    return rec


def chunkwise_fn(op: str, impl: str) -> Callable:
    # The unjitted op: a jitted one would keep the Pallas flavour it was first traced with.
    fn = getattr(pallas_kernels, op)
    fn = getattr(fn, "__wrapped__", fn)
    return lambda *a: fn(*a, impl=impl)[0]


def peer_rows(B, T, H, K, V, mesh) -> list[tuple[str, str, Callable, list]]:
    """(name, impl, f, args) of the peers that import: tokamax's Mosaic TPU KDA (layout
    [H, B, T, D], per-channel log-gate [H, B, T, K]) and jla's chunked gated delta rule."""
    rows = []
    bf16 = jnp.bfloat16
    try:
        from tokamax.ops import kimi_delta_attention as kda

        hb = [abstract((H, B, T, K), bf16, mesh), abstract((H, B, T, K), bf16, mesh),
              abstract((H, B, T, V), bf16, mesh), abstract((H, B, T, K), jnp.float32, mesh),
              abstract((H, B, T), bf16, mesh)]
        from tokamax.config import cross_compile

        def tokamax_kda(q, k, v, g, b):
            # No TPU here: skip its device check, and name the chip through the abstract mesh
            # (Pallas' get_tpu_info reads the abstract mesh's device, else the host's: cpu).
            with cross_compile(True), jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
                return kda(q, k, v, g, b, implementation="mosaic")[0]

        rows.append(("tokamax KDA (g [B,T,H,K])", "mosaic", tokamax_kda, hb))
    except ImportError as e:
        print(f"tokamax: skipped ({e})", file=sys.stderr)
    try:
        from jla.ops import linear_attention as jla_op

        bt = [abstract((B, T, H, K), bf16, mesh), abstract((B, T, H, K), bf16, mesh),
              abstract((B, T, H, V), bf16, mesh), abstract((B, T, H), jnp.float32, mesh),
              abstract((B, T, H), bf16, mesh)]
        rows.append(("jla gated_deltanet", "chunked (JAX)",
                     lambda q, k, v, g, b: jla_op("gated_deltanet", q, k, v, g=g, beta=b,
                                                  impl="chunked")[0], bt))
    except ImportError as e:
        print(f"jla: skipped ({e})", file=sys.stderr)
    return rows


def inverse_rows(B, T, H, C, mesh) -> list[tuple[str, str, Callable, list]]:
    """The delta family's chunk-local triangular inverse (`xla.unit_lower_inverse`) alone, on
    float32 [B, H, T/C, C, C], once per method it offers."""
    import inspect

    from pallas_kernels import xla

    lower = [abstract((B, H, T // C, C, C), jnp.float32, mesh)]
    params = inspect.signature(xla.unit_lower_inverse).parameters
    methods = xla.INVERSE_METHODS if "method" in params else ("default",)
    rows = []
    for m in methods:
        f = xla.unit_lower_inverse if m == "default" else (
            lambda x, m=m: xla.unit_lower_inverse(x, method=m))
        rows.append((f"unit_lower_inverse C={C}", m, f, lower))
    return rows


COLUMNS = ["op", "impl", "fwd GB", "floor", "ratio", "fwd temp MiB", "saved MiB (inputs)",
           "f+b GB", "floor", "ratio", "f+b temp MiB"]


def _gb(x: float) -> str:
    return f"{x / 1e9:.3g}"


def row_cells(r: dict) -> list[str]:
    if "error" in r:
        return [r["op"], r["impl"], "error: " + r["error"][:90].replace("|", "/")] + [""] * 8
    return [r["op"], r["impl"], _gb(r["fwd_bytes"]), _gb(r["fwd_floor"]),
            f"{r['fwd_bytes'] / r['fwd_floor']:.1f}x", f"{r['fwd_temp'] / MIB:.0f}",
            f"{r['saved'] / MIB:.0f} ({r['saved_inputs'] / MIB:.0f})",
            _gb(r["fb_bytes"]), _gb(r["fb_floor"]),
            f"{r['fb_bytes'] / r['fb_floor']:.1f}x", f"{r['fb_temp'] / MIB:.0f}"]


def render(rows: list[dict], head: str, command: str, total: int | None = None) -> str:
    lines = [f"Generated by `{command}`; do not edit by hand.", "", head, ""]
    if total is not None and len(rows) < total:
        lines += [f"**Partial**: {len(rows)} of {total} rows (the run was still going).", ""]
    lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row_cells(r)) + " |" for r in rows]
    lines += ["", "GB = 1e9 bytes accessed (XLA cost analysis of the compiled program, the Pallas "
              "kernels' inputs and outputs included); floor: "
              "inputs read once + o written once (fwd), inputs read once + every gradient "
              "written once (f+b); temp: compiled temporaries; saved: the residuals of jax.vjp "
              "(in brackets: those that are the inputs).", ""]
    return "\n".join(lines)


def write_section(path: str, topology: str, md: str) -> None:
    """Puts `md` into the `tpu-aot-<topology>` section of the markdown file at `path`."""
    from research.sweep.report import update_report

    name = f"{SECTION}-{topology}"
    block = (f"<!-- sweep:{name} -->\n## HBM traffic on one {topology} chip, compiled ahead of "
             f"time (`experiments/bench_tpu_aot.py`)\n\n{md.rstrip()}\n<!-- /sweep:{name} -->")
    update_report(path, block, name, header="# Kernel benchmarks\n")


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(x) for x in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 5 or min(shape) < 1:
        raise ValueError(f"--shape takes B,T,H,K,V (positive integers), got {text!r}")
    return shape


def main(argv: Sequence[str] | None = None) -> list[dict]:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--topology", default="v5e", choices=sorted(TOPOLOGIES))
    p.add_argument("--ops", nargs="+", default=list(KERNEL_OPS), choices=list(OP_SPECS),
                   help="default: the ops with a Pallas kernel")
    p.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    p.add_argument("--shape", default=",".join(map(str, DEFAULT_SHAPE)), help="B,T,H,K,V")
    p.add_argument("--slots", type=int, default=DEFAULT_SLOTS, help="gsa's M")
    p.add_argument("--peers", action="store_true", help="add tokamax KDA and jla chunked rows")
    p.add_argument("--inverse", action="store_true",
                   help="add rows for the delta rule's chunk-local triangular inverse alone")
    p.add_argument("--write", default=None, help="put the table into this markdown file")
    p.add_argument("--json", default=None, help="also write the rows as JSON to this path")
    args = p.parse_args(argv)
    B, T, H, K, V = parse_shape(args.shape)
    mesh = one_chip_mesh(args.topology)
    try:
        libtpu = importlib.metadata.version("libtpu")
    except importlib.metadata.PackageNotFoundError:
        libtpu = "?"
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    head = (f"{stamp}; one {args.topology} chip ({mesh.devices.flat[0].device_kind}); jax "
            f"{jax.__version__}, libtpu {libtpu}; B={B} T={T} H={H} K={K} V={V} (gsa M="
            f"{args.slots}); bf16 q/k/v/beta/s, float32 log-gates, chunk 64")
    print(head)
    print(" | ".join(COLUMNS), flush=True)
    jobs = [(op, impl, chunkwise_fn(op, impl),
             op_inputs(op, B, T, H, K, V, args.slots, mesh))
            for op in args.ops for impl in args.impls]
    if args.peers:
        jobs += peer_rows(B, T, H, K, V, mesh)
    if args.inverse:
        jobs += inverse_rows(B, T, H, 64, mesh)
    rows = []
    for name, impl, f, fargs in jobs:
        try:
            if impl == "pallas":  # trace the kernels for Mosaic TPU, compiled (not interpreted)
                with use_backend("tpu", interpret=False):
                    r = measure(name, f, fargs, impl)
            else:
                r = measure(name, f, fargs, impl)
        except Exception as e:  # noqa: BLE001 - one op failing to compile is a result
            r = {"op": name, "impl": impl, "error": f"{type(e).__name__}: {str(e)[:300]}"}
        rows.append(r)
        print(" | ".join(row_cells(r)), flush=True)
        # written after every row, so that a long run that is stopped keeps what it measured
        if args.json:
            with open(args.json, "w") as fh:
                json.dump({"head": head, "rows": rows, "done": len(rows) == len(jobs)}, fh,
                          indent=1)
        if args.write:
            md = render(rows, head, "python -m experiments.bench_tpu_aot " + " ".join(argv),
                        total=len(jobs))
            write_section(args.write, args.topology, md)
    return rows


if __name__ == "__main__":
    main()

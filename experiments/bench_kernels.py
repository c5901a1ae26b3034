"""GPU check and benchmark of the Pallas kernels (targets: docs/design.md, "Numbers to beat").

For every op and shape: (1) checks impl="pallas" against impl="reference" (outputs and the
gradients of q, k, v and every gate, relative RMS), (2) times the forward and forward+backward of
impl="pallas" and impl="xla" (median ms after compilation) and, when importable, the same shapes
through FLA (torch + Triton, `fla`) and jla (Mosaic GPU, `jla`), and prints one table with the
device, versions and shapes. `--write BENCHMARKS.md` regenerates the results file.

    python -m experiments.bench_kernels                      # on the GPU: the benchmark shapes
    python -m experiments.bench_kernels --write BENCHMARKS.md
    python -m experiments.bench_kernels --small              # CPU smoke run (interpret mode)

On a machine with no GPU only `--small` makes sense: the kernels run in interpret mode, so its
timings say nothing about kernel speed; the written file then says that no GPU run is recorded.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import statistics
import sys
import time

# Leave GPU memory to torch (FLA) as well; must precede the first jax import.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import pallas_kernels  # noqa: E402
from pallas_kernels import pallas as pallas_registry  # noqa: E402
from pallas_kernels.benchmark import make_problem, rel_rms  # noqa: E402

SHAPES = [(8, 2048, 16, 128), (2, 8192, 16, 128)]  # (B, T, H, K = V); gsa: M = 64 slots
SMALL_SHAPES = [(1, 128, 2, 32)]
SLOTS = 64
SMALL_SLOTS = 16
# The ops with a Pallas kernel, and the names of the same ops in the optional libraries: all from
# the op table.
DEFAULT_OPS = tuple(op for op, sp in pallas_kernels.OP_SPECS.items() if sp.kernel is not None)
FLA_OPS = {op: sp.fla for op, sp in pallas_kernels.OP_SPECS.items() if sp.fla}
JLA_OPS = {op: sp.jla for op, sp in pallas_kernels.OP_SPECS.items() if sp.jla}
# Measured anchors (docs/design.md; H100, bf16, B=8 T=2048 H=16 D=128), fwd+bwd ms.
TARGETS = {"gla": "FLA 3.47, jla 2.36", "simple_gla": "jla 1.03", "gsa": "FLA 4.53",
           "delta_rule": "FLA 2.35-3.02, jla 1.21", "gated_delta_rule": "jla 1.27"}


def median_ms(fn, *args, iters: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(iters):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t)
    return 1e3 * statistics.median(ts)


def _jax_fns(op: str, impl: str, chunk: int, n_args: int):
    fn = getattr(pallas_kernels, op)

    def fwd(*args):
        return fn(*args, impl=impl, chunk_size=chunk)[0]

    def loss(*args):
        o = fwd(*args).astype(jnp.float32)
        return jnp.sum(o * o)

    return jax.jit(fwd), jax.jit(jax.grad(loss, argnums=tuple(range(n_args))))


def check(op, args, chunk) -> float:
    """Max relative RMS of pallas vs reference over o and every input gradient (loss sum(o*w))."""
    fn = getattr(pallas_kernels, op)
    w = jax.random.normal(jax.random.PRNGKey(1), args[2].shape[:3] + (args[2].shape[-1],), jnp.float32)

    def loss(impl, *a):
        o = fn(*a, impl=impl, chunk_size=chunk)[0].astype(jnp.float32)
        return jnp.sum(o * w), o

    errs = []
    outs = {}
    for impl in ("pallas", "reference"):
        g, o = jax.jit(jax.grad(lambda *a: loss(impl, *a), argnums=tuple(range(len(args))),  # noqa: B023
                                has_aux=True))(*args)
        outs[impl] = (o, g)
    errs.append(rel_rms(outs["pallas"][0], outs["reference"][0]))
    errs += [rel_rms(a, b) for a, b in zip(outs["pallas"][1], outs["reference"][1])]
    return max(errs)


def _time_jax(op, impl, args, chunk, iters):
    f, fb = _jax_fns(op, impl, chunk, len(args))
    return median_ms(f, *args, iters=iters), median_ms(fb, *args, iters=iters)


def _fla_timer():
    """A function (op, B, T, H, D) -> (fwd ms, fwd+bwd ms) through FLA, or None if unavailable."""
    try:
        import torch
        import torch.nn.functional as F
        from triton.testing import do_bench
    except Exception:  # noqa: BLE001 - optional dependency: any import failure means "absent"
        return None, None
    if not torch.cuda.is_available():
        return None, None

    def run(op, B, T, H, D):
        dev, dt = "cuda", torch.bfloat16
        r = lambda *s: torch.randn(*s, device=dev, dtype=dt)  # noqa: E731
        q, k, v = r(B, T, H, D), r(B, T, H, D), r(B, T, H, D)
        sp = pallas_kernels.spec(op)
        if sp.unit_keys:
            q, k = (F.normalize(x.float(), dim=-1).to(dt) for x in (q, k))
        gates = []
        for gate in sp.gates:
            shape = gate.shape(B, T, H, D, SLOTS, D)
            if gate.role == "log_decay":  # per-channel gates in bf16, per-head ones in float32
                x = F.logsigmoid(torch.randn(*shape, device=dev)).div(16)
                gates.append(x.to(dt) if gate.kind != "bth" else x)
            elif gate.role == "strength":
                gates.append(torch.rand(*shape, device=dev, dtype=dt))
            else:
                gates.append(r(*shape))
        module, name = FLA_OPS[op].split(":")
        f = getattr(importlib.import_module(module), name)
        call = lambda: f(q, k, v, *gates)[0]  # noqa: E731
        ms_f = do_bench(call, warmup=25, rep=100, return_mode="median")
        leaves = [q, k, v, *gates]
        for t in leaves:
            t.requires_grad_(True)
        do = torch.randn_like(call())

        def fb():
            torch.autograd.grad(call(), leaves, do)

        ms_fb = do_bench(fb, warmup=25, rep=100, return_mode="median")
        torch.cuda.empty_cache()
        return ms_f, ms_fb

    import fla

    return run, f"fla {getattr(fla, '__version__', '?')}, torch {torch.__version__}"


def _jla_timer():
    try:
        import jla
        from jla.ops import linear_attention as jla_op
    except Exception:  # noqa: BLE001 - optional dependency
        return None, None

    def run(op, args, iters):
        kind = JLA_OPS[op]
        names = pallas_kernels.spec(op).gate_names
        q, k, v = args[:3]
        gates = list(args[3:])

        def fwd(q, k, v, *g):
            return jla_op(kind, q, k, v, impl="mosaic_gpu", **dict(zip(names, g)))[0]

        def loss(*a):
            return jnp.sum(fwd(*a).astype(jnp.float32) ** 2)

        a = (q, k, v, *gates)
        return (median_ms(jax.jit(fwd), *a, iters=iters),
                median_ms(jax.jit(jax.grad(loss, argnums=tuple(range(len(a))))), *a, iters=iters))

    return run, f"jla {getattr(jla, '__version__', '?')}"


def _fmt(x):
    return "-" if x is None else (x if isinstance(x, str) else f"{x:.3f}")


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ops", nargs="+", default=list(DEFAULT_OPS), choices=pallas_kernels.OPS)
    p.add_argument("--small", action="store_true", help="tiny shapes (CPU smoke run, interpret mode)")
    p.add_argument("--shapes", nargs="+", default=None, metavar="BxTxHxD",
                   help="shapes to run instead of the defaults, e.g. 8x2048x16x128")
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--iters", type=int, default=None, help="timed calls per median (default 20; 1 with --small)")
    p.add_argument("--no-check", action="store_true", help="skip the pallas-vs-reference check")
    p.add_argument("--write", default=None, help="write the results as markdown to this path")
    args = p.parse_args(argv)
    shapes = SMALL_SHAPES if args.small else SHAPES
    if args.shapes:
        try:
            shapes = [tuple(int(x) for x in sh.lower().split("x")) for sh in args.shapes]
        except ValueError:
            shapes = []
        if not shapes or any(len(sh) != 4 for sh in shapes):
            raise ValueError(f"--shapes takes BxTxHxD, got {args.shapes}")
    slots = SMALL_SLOTS if args.small else SLOTS
    iters = args.iters or (1 if args.small else 20)
    dtype = jnp.dtype(args.dtype)
    dev = jax.devices()[0]
    on_gpu = dev.platform == "gpu"
    fla_run, fla_ver = _fla_timer() if on_gpu else (None, None)
    jla_run, jla_ver = _jla_timer() if on_gpu else (None, None)
    versions = f"jax {jax.__version__}" + "".join(f", {v}" for v in (fla_ver, jla_ver) if v)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    head = (f"{stamp}; device: {dev.platform} ({dev.device_kind}); {versions}; {args.dtype} q/k/v, "
            f"float32 gates, chunk {args.chunk}, gsa M={slots}; median ms after compile, "
            f"{iters} timed calls")
    print(head)
    cols = ["op", "B,T,H,D", "check", "pallas fwd", "pallas f+b", "xla fwd", "xla f+b",
            "f+b xla/pallas", "fla fwd", "fla f+b", "jla fwd", "jla f+b"]
    print(" | ".join(cols))
    rows = []
    for (B, T, H, D) in shapes:
        for op in args.ops:
            r = {"op": op, "shape": f"{B},{T},{H},{D}"}
            kernel = pallas_registry.get(op)
            prob = make_problem(op, B, T, H, D, D, M=slots, dtype=dtype)
            if kernel is None:
                r["check"] = "no kernel"
            else:
                reason = kernel.supports(*prob[:3], *prob[3:], chunk_size=args.chunk)
                if reason is not None and on_gpu:
                    r["check"] = f"unsupported: {reason}"
                else:
                    if not args.no_check:
                        try:
                            err = check(op, prob, args.chunk)
                            tol = 2e-2 if dtype == jnp.bfloat16 else 2e-3
                            r["check"] = f"{'ok' if err < tol else 'FAIL'} {err:.1e}"
                        except Exception as e:  # noqa: BLE001 - report the failure in the table
                            r["check"] = f"error {type(e).__name__}: {str(e)[:80]}"
                    try:
                        r["pallas_fwd"], r["pallas_fb"] = _time_jax(op, "pallas", prob, args.chunk, iters)
                    except Exception as e:  # noqa: BLE001
                        r["pallas_fwd"] = f"error {type(e).__name__}: {str(e)[:60]}"
            r["xla_fwd"], r["xla_fb"] = _time_jax(op, "xla", prob, args.chunk, iters)
            if isinstance(r.get("pallas_fb"), float):
                r["ratio"] = f"{r['xla_fb'] / r['pallas_fb']:.2f}x"
            if fla_run is not None and op in FLA_OPS:
                try:
                    r["fla_fwd"], r["fla_fb"] = fla_run(op, B, T, H, D)
                except Exception as e:  # noqa: BLE001
                    r["fla_fwd"] = f"failed: {type(e).__name__}"
            if jla_run is not None and op in JLA_OPS:
                try:
                    r["jla_fwd"], r["jla_fb"] = jla_run(op, prob, iters)
                except Exception as e:  # noqa: BLE001
                    r["jla_fwd"] = f"failed: {type(e).__name__}"
            rows.append(r)
            cells = [r["op"], r["shape"], r.get("check", "-")] + [
                _fmt(r.get(k)) for k in ("pallas_fwd", "pallas_fb", "xla_fwd", "xla_fb", "ratio",
                                         "fla_fwd", "fla_fb", "jla_fwd", "jla_fb")]
            r["cells"] = cells
            print(" | ".join(cells), flush=True)
    if args.write:
        _write(args.write, head, cols, rows, on_gpu, argv if argv is not None else sys.argv[1:])
    return rows


SECTION = "bench-kernels"


def _write(path, head, cols, rows, on_gpu, argv):
    """Replace the `bench-kernels` block of the results file (other sections are kept)."""
    from research.sweep.report import update_report

    lines = [f"<!-- sweep:{SECTION} -->",
             "Generated by `python -m experiments.bench_kernels " + " ".join(argv) + "`; do not edit by hand.", ""]
    if not on_gpu:
        lines += ["**No GPU run has been recorded yet.** The table below is a CPU smoke run: the "
                  "Pallas kernels ran in interpret mode, so its times say nothing about kernel "
                  "speed and are left out here (only the `check` column, pallas vs reference, is kept).", ""]
    keep = len(cols) if on_gpu else 3  # off the GPU only op, shape and check are meaningful
    lines += [head, "", "| " + " | ".join(cols[:keep]) + " |", "|" + "---|" * keep]
    lines += ["| " + " | ".join(r["cells"][:keep]) + " |" for r in rows]
    lines += ["", "Targets at B=8, T=2048, H=16, D=128 on an H100 (docs/design.md, fwd+bwd ms): "
              + "; ".join(f"{op} {t}" for op, t in TARGETS.items())
              + ". Memory floor: about 0.09 ms (simple_gla fwd), 0.13 ms (gla fwd).",
              f"<!-- /sweep:{SECTION} -->"]
    update_report(path, "\n".join(lines), SECTION, header="# Kernel benchmarks\n")
    print(f"wrote the {SECTION} section of {path}")


if __name__ == "__main__":
    main()

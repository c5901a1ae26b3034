"""CPU benchmark of every op: the token-by-token reference vs the chunked XLA path, forward and
forward+backward, at a few sequence lengths. `python -m experiments.bench_ops [--lengths ...]`."""

from __future__ import annotations

import argparse
import platform

import jax

import pallas_kernels
from pallas_kernels.benchmark import forward_and_backward, make_problem, median_ms


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--ops", nargs="+", default=list(pallas_kernels.OPS), choices=pallas_kernels.OPS)
    p.add_argument("--lengths", nargs="+", type=int, default=[256, 2048])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--slots", type=int, default=32, help="gsa slots M")
    args = p.parse_args(argv)
    dev = jax.devices()[0]
    print(f"device: {dev.platform} ({dev.device_kind}), {platform.processor() or platform.machine()}, "
          f"jax {jax.__version__}; B={args.batch} H={args.heads} K=V={args.head_dim} "
          f"M={args.slots} float32, chunk 64; median ms after compile")
    header = f"{'op':<18}{'T':>6}{'ref fwd':>10}{'xla fwd':>10}{'x':>7}{'ref f+b':>10}{'xla f+b':>10}{'x':>7}"
    print(header)
    print("-" * len(header))
    rows = []
    for op in args.ops:
        for T in args.lengths:
            prob = make_problem(op, args.batch, T, args.heads, args.head_dim, args.head_dim,
                                M=args.slots)
            r = {"op": op, "T": T}
            for impl in ("reference", "xla"):
                f, fb = forward_and_backward(op, impl)
                r[f"{impl}_fwd"] = median_ms(f, *prob)
                r[f"{impl}_fwdbwd"] = median_ms(fb, *prob, iters=3)
            r["speedup_fwd"] = r["reference_fwd"] / r["xla_fwd"]
            r["speedup_fwdbwd"] = r["reference_fwdbwd"] / r["xla_fwdbwd"]
            rows.append(r)
            print(f"{op:<18}{T:>6}{r['reference_fwd']:>10.2f}{r['xla_fwd']:>10.2f}"
                  f"{r['speedup_fwd']:>6.1f}x{r['reference_fwdbwd']:>10.2f}{r['xla_fwdbwd']:>10.2f}"
                  f"{r['speedup_fwdbwd']:>6.1f}x", flush=True)
    return rows


if __name__ == "__main__":
    main()

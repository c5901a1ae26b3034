"""Timing helpers shared by the benchmarks: random problems per op and median wall-clock times."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

import pallas_kernels


def make_problem(op: str, B: int, T: int, H: int, K: int, V: int, M: int = 64, dtype=jnp.float32,
                 seed: int = 0):
    """Random inputs (q, k, v, *gates) for `op` with realistic gate ranges, on the default device."""
    rng = np.random.default_rng(seed)
    n = lambda *s: rng.standard_normal(s, dtype=np.float32)  # noqa: E731
    q, k, v = n(B, T, H, K), n(B, T, H, K), n(B, T, H, V)
    if op in ("delta_rule", "gated_delta_rule"):
        k = k / np.linalg.norm(k, axis=-1, keepdims=True)
    gates = {
        "linear_attention": [],
        "simple_gla": [np.log(1 / (1 + np.exp(-n(B, T, H) - 4)))],
        "gla": [np.log(1 / (1 + np.exp(-n(B, T, H, K) - 4))) / 16],
        "delta_rule": [1 / (1 + np.exp(-n(B, T, H)))],
        "gated_delta_rule": [np.log(1 / (1 + np.exp(-n(B, T, H) - 4))), 1 / (1 + np.exp(-n(B, T, H)))],
        "gsa": [1 / (1 + np.exp(-n(B, T, H, M))), np.log(1 / (1 + np.exp(-n(B, T, H, M) - 4)))],
    }[op]
    # gates stay float32 (as the layers pass them); q, k, v take `dtype`
    return [jnp.asarray(x, dtype) for x in (q, k, v)] + [jnp.asarray(g) for g in gates]


def forward_and_backward(op: str, impl: str, chunk_size: int = 64) -> tuple[Callable, Callable]:
    """Jitted forward `f(*args) -> o` and forward+backward `fb(*args) -> grads of sum(o * o)`."""
    fn = getattr(pallas_kernels, op)

    def fwd(*args):
        return fn(*args, impl=impl, chunk_size=chunk_size)[0]

    def loss(*args):
        o = fwd(*args).astype(jnp.float32)
        return jnp.sum(o * o)

    return jax.jit(fwd), jax.jit(jax.grad(loss, argnums=tuple(range(3))))


def median_ms(fn: Callable, *args, warmup: int = 2, iters: int = 5, max_seconds: float = 20.0) -> float:
    """Median milliseconds of `fn(*args)` after `warmup` calls (compilation excluded)."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    start = time.perf_counter()
    for _ in range(iters):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > max_seconds:
            break
    return 1e3 * statistics.median(times)

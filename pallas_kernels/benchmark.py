"""Timing helpers shared by the benchmarks: random problems per op and median wall-clock times."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

import pallas_kernels

# How each gate role of the op table is drawn from standard normals x, at realistic ranges.
_ROLE_DRAWS = {
    "log_decay": lambda x: np.log(1 / (1 + np.exp(-x - 4))),  # log_sigmoid(x + 4): mild decay
    "strength": lambda x: 1 / (1 + np.exp(-x)),  # sigmoid(x)
    "weight": lambda x: 1 / (1 + np.exp(-x)),
    "step": lambda x: np.logaddexp(0.0, x - 4),  # softplus(x - 4): small steps
    "rate": lambda x: -np.exp(0.5 * x),  # negative rates around -1
    "learning_rate": lambda x: 0.25 / (1 + np.exp(-x)),
}


def make_problem(op: str, B: int, T: int, H: int, K: int, V: int, M: int = 64, dtype=jnp.float32,
                 seed: int = 0):
    """Random inputs (q, k, v, *gates) for `op` with realistic gate ranges, on the default device.

    Shapes and roles of the gates come from the op table; per-key-channel log-decays are 16 times
    weaker than per-head ones (K channels decay at once, as FLA's benchmarks draw them). Keys are
    L2-normalised for the ops whose spec asks for unit keys."""
    sp = pallas_kernels.spec(op)
    rng = np.random.default_rng(seed)
    n = lambda *s: rng.standard_normal(s, dtype=np.float32)  # noqa: E731
    q, k, v = n(B, T, H, K), n(B, T, H, K), n(B, T, H, V)
    if sp.unit_keys:
        k = k / np.linalg.norm(k, axis=-1, keepdims=True)
    gates = []
    for gate in sp.gates:
        x = _ROLE_DRAWS[gate.role](n(*gate.shape(B, T, H, K, M, V)))
        gates.append(x / 16 if gate.role == "log_decay" and gate.kind == "bthk" else x)
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


def rel_rms(a, b) -> float:
    """Relative RMS error ||a - b|| / ||b|| in float64 (0-safe)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


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

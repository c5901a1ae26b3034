"""An independent float64 implementation of the ops' recurrences (docs/design.md), for the tests.

`run(op, inputs, h0, segment_ids, scale)` returns (o, final_state) in float64; it must be called
inside `jax.enable_x64(True)`. `make_inputs` builds fresh random problems from the op table
(`pallas_kernels.OP_SPECS`: gate shapes and roles, state shapes); `compare` measures relative RMS
errors of outputs, final states and every gradient against it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from conftest import rel_rms

import pallas_kernels


def gate_names(op) -> tuple[str, ...]:
    return pallas_kernels.spec(op).gate_names


def _step(op, S, x, scale, const=()):
    """One token of the recurrence; S is a state (tuple for gsa), x a tuple of per-token inputs,
    `const` the gates without a time axis (selective_scan's A)."""
    q, k, v = x[:3]
    if op == "selective_scan":  # S[n, p] = exp(dt[p] A[p, n]) S[n, p] + k[n] dt[p] v[p]
        dt, (A,) = x[3], const
        S = jnp.exp(dt[..., None, :] * jnp.swapaxes(A, -1, -2)) * S + jnp.einsum(
            "bhk,bhv->bhkv", k, dt * v)
        return S, jnp.einsum("bhkv,bhk->bhv", S, scale * q)
    if op == "ttt_linear":  # S = (W at the mini-batch start, W); x ends with the start flag
        eta, start = x[3], x[4]
        W0, W = S
        W0 = jnp.where(start[:, None, None, None], W, W0)
        err = v - jnp.einsum("bhk,bhkv->bhv", k, W0)
        W = W + jnp.einsum("bhk,bhv->bhkv", eta[..., None] * k, err)
        return (W0, W), jnp.einsum("bhkv,bhk->bhv", W, scale * q)
    if op == "gsa":
        s, g = x[3:]
        A, Bm = S
        A = A * jnp.exp(g)[:, :, None, :] + jnp.einsum("bhk,bhm->bhkm", k, s)
        Bm = Bm * jnp.exp(g)[:, :, :, None] + jnp.einsum("bhm,bhv->bhmv", s, v)
        p = jax.nn.softmax(jnp.einsum("bhkm,bhk->bhm", A, scale * q), axis=-1)
        return (A, Bm), jnp.einsum("bhmv,bhm->bhv", Bm, p)
    if op in ("delta_rule", "gated_delta_rule"):
        beta = x[-1]
        if op == "gated_delta_rule":
            S = jnp.exp(x[3])[:, :, None, None] * S
        kk = jnp.einsum("bhk,bhj->bhkj", k, k)
        eye = jnp.eye(k.shape[-1], dtype=k.dtype)
        S = jnp.einsum("bhkj,bhjv->bhkv", eye - beta[:, :, None, None] * kk, S) + beta[
            :, :, None, None
        ] * jnp.einsum("bhk,bhv->bhkv", k, v)
    else:
        if op == "simple_gla":
            S = jnp.exp(x[3])[:, :, None, None] * S
        elif op == "gla":
            S = jnp.exp(x[3])[:, :, :, None] * S
        S = S + jnp.einsum("bhk,bhv->bhkv", k, v)
    return S, jnp.einsum("bhkv,bhk->bhv", S, scale * q)


def mini_batch_starts(seg, mini_batch_size):
    """bool [B, T] (numpy): t starts a ttt_linear mini-batch (its position in its segment is a
    multiple of the mini-batch size)."""
    B, T = seg.shape
    start = np.zeros((B, T), bool)
    for b in range(B):
        r = 0
        for t in range(T):
            r = 0 if t == 0 or seg[b, t] != seg[b, t - 1] else r + 1
            start[b, t] = r % mini_batch_size == 0
    return start


def run(op, inputs, h0, segment_ids, scale, mini_batch_size=16):
    """inputs: (q, k, v, *gates) float64 [B, T, ...]; h0 float64 state or tuple; -> (o, state).
    `mini_batch_size`: ttt_linear's (the op's default)."""
    B, T = inputs[0].shape[:2]
    seg = np.zeros((B, T), np.int64) if segment_ids is None else np.asarray(segment_ids)
    reset = np.concatenate([np.zeros((B, 1), bool), seg[:, 1:] != seg[:, :-1]], axis=1)
    gates = pallas_kernels.spec(op).gates
    timed = list(inputs[:3]) + [x for g, x in zip(gates, inputs[3:]) if g.timed]
    const = tuple(x for g, x in zip(gates, inputs[3:]) if not g.timed)
    if op == "ttt_linear":
        timed.append(jnp.asarray(mini_batch_starts(seg, mini_batch_size)))
        h0 = (h0, h0)
    xs = tuple(jnp.swapaxes(x, 0, 1) for x in timed)

    def body(S, xr):
        x, r = xr
        S = jax.tree.map(lambda a: jnp.where(r.reshape(-1, *([1] * (a.ndim - 1))), 0.0, a), S)
        return _step(op, S, x, scale, const)

    S, o = jax.lax.scan(body, h0, (xs, jnp.asarray(reset.T)))
    if op == "ttt_linear":
        S = S[1]
    return jnp.swapaxes(o, 0, 1), S


def make_inputs(op, *, B=2, T=63, H=2, K=16, V=32, M=8, decay=1.0, seed=0, segments=True,
                initial_state=True, key_norm="l2"):
    """Fresh random float32 inputs (q, k, v, *gates), initial state (or None) and segment ids (or
    None), shaped by the op table; log-decay gates have typical size `decay`. Keys: L2-normalised
    for the ops whose spec asks for unit keys (or of moderate norm with key_norm="raw"), scaled
    by K ** -0.5 for ops without a decay."""
    spec = pallas_kernels.spec(op)
    rng = np.random.default_rng(seed)
    n = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    q, k, v = n(B, T, H, K), n(B, T, H, K), n(B, T, H, V)
    if spec.unit_keys:
        if key_norm == "l2":
            k = k / np.linalg.norm(k, axis=-1, keepdims=True)
        else:  # un-normalised keys of moderate norm
            k = k * (0.7 / np.sqrt(K))
    elif not any(g.role == "log_decay" for g in spec.gates):
        k = k / np.sqrt(K)
    gates = []
    for gate in spec.gates:
        x = n(*gate.shape(B, T, H, K, M, V))
        gates.append({"log_decay": lambda x: -decay * np.abs(x),
                      "strength": lambda x: 1.0 / (1.0 + np.exp(-2 * x)),
                      "weight": lambda x: 1.0 / (1.0 + np.exp(-x)),
                      "step": lambda x: decay * np.logaddexp(0.0, x),
                      "rate": lambda x: -np.exp(0.5 * x),
                      "learning_rate": lambda x: 0.25 / (1.0 + np.exp(-2 * x))}[gate.role](x))
    h0 = tuple(0.5 * n(*shape) for shape in spec.state_shapes(B, H, K, V, M))
    h0 = h0 if len(h0) > 1 else h0[0]
    seg = None
    if segments:
        seg = np.sort(rng.integers(0, max(2, T // 16), (B, T)), axis=1).astype(np.int32)
    return (q, k, v, *gates), (h0 if initial_state else None), seg


def compare(op, inputs, h0, seg, *, impl, dtype=jnp.float32, chunk_size=16, scale=None,
            options=None):
    """Relative RMS errors of `impl` against the float64 oracle: outputs, final state, and the
    gradients of a random linear functional of (o, final_state) in every input. `options`: the
    op's own keywords (e.g. {"mini_batch_size": 4} for ttt_linear)."""
    options = dict(options or {})
    fn = getattr(pallas_kernels, op)
    rng = np.random.default_rng(1)
    cast = [jnp.asarray(x, dtype) for x in inputs]
    h0c = None if h0 is None else jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), h0)
    segj = None if seg is None else jnp.asarray(seg)

    def loss(xs, h, wo, ws):
        o, s = fn(*xs, initial_state=h, output_final_state=True, segment_ids=segj,
                  chunk_size=chunk_size, impl=impl, scale=scale, **options)
        return jnp.sum(o.astype(jnp.float32) * wo) + sum(
            jnp.sum(a * b) for a, b in zip(jax.tree.leaves(s), jax.tree.leaves(ws))
        ), (o, s)

    o_shape = inputs[2].shape
    wo = rng.standard_normal(o_shape)
    ws = jax.tree.map(lambda a: rng.standard_normal(np.shape(a)), h0 if h0 is not None else
                      _zero_state(op, inputs))
    argn = (0, 1) if h0 is not None else (0,)
    # One jitted computation: eager ops interleaved with interpret-mode kernels (whose callbacks
    # dispatch ops of their own) can deadlock the CPU client.
    (_, (o, s)), grads = jax.jit(jax.value_and_grad(loss, argnums=argn, has_aux=True))(
        cast, h0c, jnp.asarray(wo, jnp.float32), jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), ws))
    jax.block_until_ready(grads)
    got = {"o": o, "state": s}
    got.update({f"d{n}": g for n, g in zip(("q", "k", "v", *gate_names(op)), grads[0])})
    if h0 is not None:
        got["dh0"] = grads[1]

    with jax.enable_x64(True):
        xs64 = [jnp.asarray(np.asarray(c, np.float32), jnp.float64) for c in cast]  # same rounding
        h64 = None if h0 is None else jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), h0)
        K = inputs[0].shape[-1]
        sc = K**-0.5 if scale is None else scale

        def loss64(xs, h):
            h = h if h is not None else jax.tree.map(jnp.zeros_like, _zero_state(op, xs, jnp.float64))
            o, s = run(op, xs, h, seg, sc, **options)
            return jnp.sum(o * wo) + sum(
                jnp.sum(a * b) for a, b in zip(jax.tree.leaves(s), jax.tree.leaves(ws))
            ), (o, s)

        (_, (o64, s64)), g64 = jax.jit(jax.value_and_grad(loss64, argnums=argn, has_aux=True))(
            xs64, h64)
        want = {"o": o64, "state": s64}
        want.update({f"d{n}": g for n, g in zip(("q", "k", "v", *gate_names(op)), g64[0])})
        if h0 is not None:
            want["dh0"] = g64[1]
        errs = {}
        for name in want:
            a, b = jax.tree.leaves(got[name]), jax.tree.leaves(want[name])
            errs[name] = max(rel_rms(x, y) for x, y in zip(a, b))
            assert all(np.all(np.isfinite(np.asarray(x, np.float64))) for x in a), name
    return errs


def _zero_state(op, inputs, dtype=np.float32):
    q, _, v = inputs[:3]
    B, _, H, K = q.shape
    spec = pallas_kernels.spec(op)
    M = next((x.shape[-1] for g, x in zip(spec.gates, inputs[3:]) if g.kind == "bthm"), None)
    zeros = tuple(np.zeros(shape, dtype) for shape in spec.state_shapes(B, H, K, v.shape[-1], M))
    return zeros if len(zeros) > 1 else zeros[0]

"""The ops under `OpSharding`: equal to the unsharded op on 8 host CPU devices (batch, heads and
LASP-2 sequence splits; outputs, final states, every gradient), argument errors, and the kernels
compiled for a TPU slice (v5p:2x2x2) through libtpu with no TPU.

The 8-device checks need `--xla_force_host_platform_device_count=8` before jax starts, so each
group runs once in a subprocess (this file run as a script) that prints one JSON line.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
OPS = ("linear_attention", "simple_gla", "gla", "delta_rule", "gated_delta_rule", "gsa")
# f32 relative RMS bounds per path (issue 10).
TOL = {"xla": 1e-5, "pallas": 1e-4}

B, T, H, K, V, M, CHUNK = 2, 160, 4, 16, 16, 16, 16  # T/4 = 40 and T/8 = 20: ragged vs C = 16


def _inputs(op: str, seed: int = 0):
    """Random f32 inputs for `op` with segments crossing shard boundaries, an initial state and
    random cotangents for o and the final state."""
    import jax
    import jax.numpy as jnp

    keys = iter(jax.random.split(jax.random.key(seed), 16))
    rnd = lambda *shape: jax.random.normal(next(keys), shape, jnp.float32)  # noqa: E731
    q, k, v = rnd(B, T, H, K), rnd(B, T, H, K), rnd(B, T, H, V)
    if op in ("delta_rule", "gated_delta_rule"):
        k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
    gates = {
        "linear_attention": (),
        "simple_gla": (jax.nn.log_sigmoid(rnd(B, T, H) + 2.0),),
        "gla": (jax.nn.log_sigmoid(rnd(B, T, H, K) + 2.0),),
        "delta_rule": (jax.nn.sigmoid(rnd(B, T, H)),),
        "gated_delta_rule": (jax.nn.log_sigmoid(rnd(B, T, H) + 2.0), jax.nn.sigmoid(rnd(B, T, H))),
        "gsa": (jax.nn.sigmoid(rnd(B, T, H, M)), jax.nn.log_sigmoid(rnd(B, T, H, M) + 2.0)),
    }[op]
    if op == "linear_attention":
        q, k = 0.3 * q, 0.3 * k
    # Row 0: resets at 40 (a shard's first token for 4 shards), 55 and 120 (first token for 4 and
    # 8); an id that comes back (1, 2, 1). Row 1: resets at 20 (first token for 8 shards) and 97.
    ids = np.zeros((B, T), np.int32)
    ids[0, 40:], ids[0, 55:], ids[0, 120:] = 1, 2, 1
    ids[1, 20:], ids[1, 97:] = 3, 4
    if op == "gsa":
        init = (0.5 * rnd(B, H, K, M), 0.5 * rnd(B, H, M, V))
        cot_state = (rnd(B, H, K, M), rnd(B, H, M, V))
    else:
        init = 0.5 * rnd(B, H, K, V)
        cot_state = rnd(B, H, K, V)
    return (q, k, v, gates), jnp.asarray(ids), init, rnd(B, T, H, V), cot_state


def _rel_rms(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.sqrt(np.mean((a - b) ** 2)) / max(np.sqrt(np.mean(b**2)), 1e-30))


def check_equal(groups: list[str]) -> dict:
    """Runs in the 8-device subprocess: {case: max rel RMS over o, state, every gradient}.
    Each group is "op:impl" (every mesh below) or "op:impl:mesh,mesh"."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh

    import pallas_kernels as pk

    devices = np.array(jax.devices())
    assert devices.size == 8, devices
    meshes = {
        "data2_seq4": pk.OpSharding(Mesh(devices.reshape(2, 4), ("data", "sequence")),
                                    batch="data", sequence="sequence"),
        "data1_seq8": pk.OpSharding(Mesh(devices.reshape(1, 8), ("data", "sequence")),
                                    batch="data", sequence="sequence"),
        "data2_heads4": pk.OpSharding(Mesh(devices.reshape(2, 4), ("data", "tensor")),
                                      batch="data", heads="tensor"),
    }
    out = {}
    for group in groups:
        op, impl, names = (group + ":" + ",".join(meshes)).split(":")[:3]
        args, ids, init, cot_o, cot_s = _inputs(op)
        fn = getattr(pk, op)

        def loss(args, init, sharding, fn=fn, impl=impl, ids=ids, cot_o=cot_o, cot_s=cot_s):
            q, k, v, gates = args
            o, s = fn(q, k, v, *gates, initial_state=init, output_final_state=True,
                      segment_ids=ids, chunk_size=CHUNK, impl=impl, sharding=sharding)
            total = jnp.sum(o * cot_o) + sum(jnp.sum(a * b) for a, b in
                                            zip(jax.tree.leaves(s), jax.tree.leaves(cot_s)))
            return total, (o, s)

        def run(sharding, loss=loss, args=args, init=init):
            grad = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True), static_argnums=2)
            (g_args, g_init), (o, s) = grad(args, init, sharding)
            return jax.tree.leaves((o, s, g_args, g_init))

        want = run(None)
        for name in names.split(","):
            got = run(meshes[name])
            errs = [_rel_rms(a, b) for a, b in zip(got, want)]
            out[f"{op}:{impl}:{name}"] = {"max": max(errs), "n": len(errs),
                                          "finite": bool(all(np.isfinite(e) for e in errs))}
    return out


def check_tpu_compile(ops: list[str]) -> dict:
    """Runs in a subprocess: each op's impl="auto" path (which must be the Mosaic kernels) on an
    abstract v5p:2x2x2 slice, mesh data=2 x sequence=4, forward and backward, compiled by libtpu;
    and the same call with no sharding, which XLA cannot partition."""
    import jax
    import jax.numpy as jnp
    from jax.experimental import topologies
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    import pallas_kernels as pk
    from pallas_kernels.pallas._backend import use_backend

    topo = topologies.get_topology_desc("v5p:2x2x2", platform="tpu")
    mesh = Mesh(np.array(topo.devices).reshape(2, 4), ("data", "sequence"))
    sh = pk.OpSharding(mesh, batch="data", sequence="sequence")
    Bt, Tt, Ht, D = 2, 1024, 2, 128
    out = {}
    for op in ops:
        n_gates = {"linear_attention": 0, "delta_rule": 1, "gated_delta_rule": 2, "gsa": 2}.get(op, 1)
        gate_dims = {"gla": (D,), "gsa": (64,)}.get(op, ())

        def arg(shape, dtype):
            spec = P("data", "sequence", *([None] * (len(shape) - 2)))
            return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, spec))

        qkv = [arg((Bt, Tt, Ht, D), jnp.bfloat16) for _ in range(3)]
        gates = [arg((Bt, Tt, Ht, *gate_dims), jnp.float32) for _ in range(n_gates)]

        def loss(qkv, gates, sharding, op=op):
            impl = "auto" if sharding is not None else "pallas"
            o, s = getattr(pk, op)(*qkv, *gates, output_final_state=True, impl=impl,
                                   sharding=sharding)
            return jnp.sum(o.astype(jnp.float32)) + sum(jnp.sum(x) for x in jax.tree.leaves(s))

        res = {}
        for name, fn in (("fwd", loss), ("fwd_bwd", jax.grad(loss, argnums=(0, 1)))):
            compiled = jax.jit(fn, static_argnums=2).lower(qkv, gates, sh).compile()
            mem = compiled.memory_analysis()
            res[name] = {"kernels": compiled.as_text().count("tpu_custom_call"),
                         "temp_bytes": int(mem.temp_size_in_bytes)}
        try:  # the kernels on sharded inputs with no OpSharding: XLA cannot partition them
            with use_backend("tpu", interpret=False):
                jax.jit(loss, static_argnums=2).lower(qkv, gates, None).compile()
            res["unsharded"] = "compiled"
        except Exception as e:  # noqa: BLE001 - the message is the result
            res["unsharded"] = f"{type(e).__name__}: {str(e)[:200]}"
        res["platform"] = sh.platform
        out[op] = res
    return out


def _subprocess(mode: str, *args: str, timeout: int = 900) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["ALLOW_MULTIPLE_LIBTPU_LOAD"] = "1"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, __file__, mode, *args], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=timeout, check=False)
    assert res.returncode == 0, res.stderr[-6000:]
    return json.loads(res.stdout.split("RESULT", 1)[1])


# Default suite: every kind of split and every family, on both paths; the full product is slow.
QUICK = ("gla:pallas:data2_seq4,data2_heads4", "gated_delta_rule:xla:data1_seq8", "gsa:xla:data2_seq4")


def _assert_close(out: dict) -> None:
    bad = {case: r for case, r in out.items()
           if not r["finite"] or r["max"] >= TOL[case.split(":")[1]]}
    assert not bad, bad


def test_sharded_equals_unsharded():
    out = _subprocess("equal", *QUICK)
    assert len(out) == 4, out
    _assert_close(out)


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["xla", "pallas"])
def test_every_op_every_split_equals_unsharded(impl):
    out = _subprocess("equal", *(f"{op}:{impl}" for op in OPS), timeout=3600)
    assert len(out) == 3 * len(OPS), out
    _assert_close(out)


def _check_tpu(out: dict) -> None:
    for op, res in out.items():
        assert res["platform"] == "tpu", res
        for name in ("fwd", "fwd_bwd"):
            assert res[name]["kernels"] > 0, (op, res)  # impl="auto" chose the Mosaic kernels
        assert "cannot be automatically partitioned" in res["unsharded"], (op, res)


def test_tpu_slice_compiles_with_sharding():
    """The real Mosaic compiler (libtpu), 8 abstract v5p chips: data=2 x sequence=4."""
    pytest.importorskip("libtpu")
    _check_tpu(_subprocess("tpu", "gla"))


@pytest.mark.slow
def test_tpu_slice_compiles_every_op():
    pytest.importorskip("libtpu")
    _check_tpu(_subprocess("tpu", *OPS, timeout=3600))


# ---- in-process: argument errors, a one-device mesh ------------------------------------------

def _mesh(names=("data", "sequence")):
    import jax
    from jax.sharding import Mesh

    return Mesh(np.array(jax.devices()[:1]).reshape((1,) * len(names)), names)


def _abstract_mesh(sizes=(2, 4), names=("data", "sequence")):
    from jax.sharding import AbstractMesh

    return AbstractMesh(sizes, names)


def test_axes_the_mesh_lacks_are_errors():
    import pallas_kernels as pk

    mesh = _mesh()
    with pytest.raises(ValueError, match=r"OpSharding.batch names mesh axis 'fsdp'.*\('data', 'sequence'\)"):
        pk.OpSharding(mesh)  # the default batch=("data", "fsdp")
    with pytest.raises(ValueError, match="OpSharding.heads names mesh axis 'tensor'"):
        pk.OpSharding(mesh, batch="data", heads="tensor")
    with pytest.raises(ValueError, match="used by both OpSharding.batch and .sequence"):
        pk.OpSharding(mesh, batch="data", sequence=("data",))
    with pytest.raises(ValueError, match="OpSharding.sequence must be a mesh axis name"):
        pk.OpSharding(mesh, batch="data", sequence=3)
    sh = pk.OpSharding.from_mesh(mesh)  # keeps data and sequence, drops fsdp and tensor
    assert (sh.batch, sh.heads, sh.sequence) == (("data",), (), ("sequence",))
    assert pk.OpSharding.from_mesh(_mesh(("fsdp",)), sequence=None).batch == ("fsdp",)


def test_dimensions_the_axes_do_not_divide_are_errors():
    import jax
    import jax.numpy as jnp

    import pallas_kernels as pk

    sh = pk.OpSharding(_abstract_mesh((2, 4, 2), ("data", "sequence", "tensor")), batch="data",
                       heads="tensor", sequence="sequence")
    x = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)  # noqa: E731
    cases = {"B=3": (3, 8, 2), "T=10": (2, 10, 2), "H=3": (2, 8, 3)}
    for msg, (b, t, h) in cases.items():
        with pytest.raises(ValueError, match=f"q: {msg} is not divisible by the"):
            jax.eval_shape(lambda q: pk.linear_attention(q, q, q, impl="xla", sharding=sh),
                           x(b, t, h, 16))
    with pytest.raises(ValueError, match="sharding must be a pallas_kernels.OpSharding"):
        jax.eval_shape(lambda q: pk.linear_attention(q, q, q, sharding="data"), x(2, 8, 2, 16))
    # the op's own checks still name the argument
    with pytest.raises(ValueError, match="initial_state must have shape"):
        jax.eval_shape(lambda q: pk.linear_attention(q, q, q, initial_state=q, sharding=sh),
                       x(2, 8, 2, 16))


def test_one_device_mesh_equals_unsharded():
    """The LASP-2 code path with P = 1, in-process."""
    import jax

    import pallas_kernels as pk

    sh = pk.OpSharding(_mesh(), batch="data", sequence="sequence")
    for op in ("gla",):
        (q, k, v, gates), ids, init, _, _ = _inputs(op)
        kw = dict(initial_state=init, output_final_state=True, segment_ids=ids, chunk_size=CHUNK,
                  impl="xla")
        want = jax.tree.leaves(getattr(pk, op)(q, k, v, *gates, **kw))
        got = jax.tree.leaves(getattr(pk, op)(q, k, v, *gates, sharding=sh, **kw))
        for a, b in zip(got, want):
            assert _rel_rms(a, b) < 1e-6


def test_module_docstring_example_runs():
    import doctest

    from pallas_kernels import sharding

    res = doctest.testmod(sharding, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert res.attempted > 0 and res.failed == 0, res


def main(argv: list[str]) -> None:
    mode, rest = argv[0], argv[1:]
    out = {"equal": check_equal, "tpu": check_tpu_compile}[mode](rest)
    print("RESULT" + json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])

"""8 host devices: training on a data x fsdp mesh and on a data x sequence mesh (LASP-2 in the
ops, the short conv's halo by ppermute, attention's K/V all-gather) gives the single-device losses;
parameters really sharded; every mixer's loss and gradients on a data x sequence and an
fsdp x sequence x tensor mesh equal the unsharded ones. Each check runs in a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=8."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

import research

ROOT = pathlib.Path(__file__).resolve().parents[3]

SCRIPT = textwrap.dedent("""
    import json, sys
    import jax
    import numpy as np
    import research.train as rt
    from research.train.trainer import _setup
    from research.train.sharding import make_mesh, describe_sharding
    out = {"devices": jax.device_count()}
    workdir = sys.argv[1]
    for name, mesh in (("single", ("1", "1")), ("mesh2x4", ("2", "4"))):
        cfg = rt.get_preset("test-tiny").override(
            "train.steps=20", "checkpoint.every=10", f"mesh.data={mesh[0]}",
            f"mesh.fsdp={mesh[1]}", "data.batch_size=16", "optimizer.grad_accum=1")
        rt.run(cfg, f"{workdir}/{name}", verbose=False)
        out[name] = [r["train/loss"] for r in rt.read_metrics(f"{workdir}/{name}")
                     if "train/loss" in r]
    cfg = rt.get_preset("test-tiny").override("mesh.data=2", "mesh.fsdp=4")
    mesh = make_mesh(2, 4)
    with jax.set_mesh(mesh):
        setup = _setup(cfg, mesh)
        state = setup.init_state()
    placed = {}
    for part in ("params", "opt_state"):
        for path, leaf in jax.tree_util.tree_leaves_with_path(state[part]):
            shard = leaf.addressable_shards[0].data.shape
            if shard != leaf.shape:
                placed.setdefault(part, []).append(
                    [jax.tree_util.keystr(path), list(leaf.shape), list(shard),
                     str(leaf.sharding.spec)])
    out["sharded"] = placed
    out["n_params"] = len(jax.tree.leaves(state["params"]))
    print("RESULT" + json.dumps(out))
""")

# mqar-tiny (T=64: 16 tokens per sequence shard, the conv's halo is 3) for 20 steps on one device
# and on data=2 x sequence=4, with the mixers named in argv[2] (comma-separated).
SEQUENCE_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax
    import research.train as rt
    out = {"devices": jax.device_count()}
    workdir = sys.argv[1]
    for mixer in sys.argv[2].split(","):
        for name, mesh in (("single", ("mesh.data=1",)),
                           ("data2_seq4", ("mesh.data=2", "mesh.sequence=4"))):
            cfg = rt.get_preset("mqar-tiny").override(
                f"model.mixer={mixer}", "train.steps=20", "train.eval_batches=1",
                "train.progress=false", "train.log_every=1", "checkpoint.every=20",
                "data.batch_size=16", *mesh)
            rt.run(cfg, f"{workdir}/{mixer}-{name}", verbose=False)
            out[f"{mixer}/{name}"] = [r["train/loss"] for r in
                                      rt.read_metrics(f"{workdir}/{mixer}-{name}")
                                      if "train/loss" in r]
    print("RESULT" + json.dumps(out))
""")

# A tiny model's loss and every gradient, unsharded vs under jax.set_mesh: packed rows whose
# segment boundary (t=13) falls inside a sequence shard, and a second one right at a shard start.
LAYER_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp
    from flax import nnx
    import research
    from research.train.sharding import make_mesh
    out = {}
    B, T = 4, 32
    tok = jax.random.randint(jax.random.key(1), (B, T), 0, 256)
    t = jnp.arange(T)[None]
    seg = (t >= 13).astype(jnp.int32) + (t >= 24).astype(jnp.int32)
    seg = jnp.broadcast_to(seg, (B, T))
    meshes = {"data2_seq4": make_mesh(2, 1, sequence=4),
              "fsdp2_seq2_tensor2": make_mesh(1, 2, sequence=2, tensor=2)}
    for mixer in sys.argv[1].split(","):
        cfg = research.get_preset(f"tiny-{mixer}").replace(chunk_size=8, impl="xla")
        model = research.LanguageModel(cfg, rngs=nnx.Rngs(0))
        graphdef, params = nnx.split(model, nnx.Param)

        def loss(p):
            logits = nnx.merge(graphdef, p)(tok, segment_ids=seg)
            return (logits ** 2).mean()

        ref_l, ref_g = jax.jit(jax.value_and_grad(loss))(params)
        for name, mesh in meshes.items():
            with jax.set_mesh(mesh):
                step = jax.jit(jax.value_and_grad(loss))
                l, g = step(params)
                hlo = step.lower(params).as_text()
            rel = [float(jnp.linalg.norm(a - b) / (jnp.linalg.norm(a) + 1e-30))
                   for a, b in zip(jax.tree.leaves(ref_g), jax.tree.leaves(g))]
            out[f"{mixer}/{name}"] = {"loss": abs(float(l - ref_l)) / abs(float(ref_l)),
                                      "grad": max(rel), "manual": "manual" in hlo}
    print("RESULT" + json.dumps(out))
""")


def _run(script, *args, timeout=1500):
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        " --xla_force_host_platform_device_count=8").strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, "-c", script, *map(str, args)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=timeout, check=False)
    assert res.returncode == 0, res.stderr[-4000:]
    return json.loads(res.stdout.split("RESULT", 1)[1])


def test_data2_fsdp4_equals_single_device_and_shards_params(tmp_path):
    out = _run(SCRIPT, tmp_path)
    assert out["devices"] == 8
    single, sharded = out["single"], out["mesh2x4"]
    assert len(single) == len(sharded) == 20
    for a, b in zip(single, sharded):
        assert abs(a - b) / abs(a) < 1e-5, (single, sharded)
    # parameters and Adam moments are split over fsdp (each device holds a quarter)
    assert len(out["sharded"]["params"]) >= out["n_params"] // 2
    assert len(out["sharded"]["opt_state"]) >= out["n_params"]
    for _, shape, shard, spec in out["sharded"]["params"]:
        assert "fsdp" in spec and sorted(shape) != sorted(shard)


@pytest.mark.parametrize("mixer", ["gla", "deltanet"])
def test_sequence_parallel_training_equals_single_device(tmp_path, mixer):
    """mqar-tiny, 20 steps, mesh.data=2 mesh.sequence=4 vs one device, gla and deltanet (one
    subprocess each, so that the two halves of this ~2 min check can run on different workers)."""
    out = _run(SEQUENCE_SCRIPT, tmp_path, mixer)
    assert out["devices"] == 8
    single, split = out[f"{mixer}/single"], out[f"{mixer}/data2_seq4"]
    assert len(single) == len(split) == 20
    for a, b in zip(single, split):
        assert abs(a - b) / abs(a) < 1e-5, (mixer, single, split)


def _check_layers(out, mixers):
    for mixer in mixers:
        for mesh in ("data2_seq4", "fsdp2_seq2_tensor2"):
            r = out[f"{mixer}/{mesh}"]
            assert r["loss"] < 1e-5 and r["grad"] < 1e-4, (mixer, mesh, r)
            assert r["manual"], (mixer, mesh)  # the layers ran shard_map under the mesh


def test_layers_on_sequence_and_tensor_meshes():
    """The short conv (halo) and softmax attention (K/V all-gather, a window reaching across
    shards) on a data x sequence and an fsdp x sequence x tensor mesh (the recurrent mixers:
    the training test above, and every mixer under -m slow)."""
    mixers = ["sliding_window_attention"]
    _check_layers(_run(LAYER_SCRIPT, ",".join(mixers)), mixers)


@pytest.mark.slow
def test_every_mixer_on_sequence_and_tensor_meshes():
    _check_layers(_run(LAYER_SCRIPT, ",".join(research.MIXERS), timeout=3600), research.MIXERS)

"""8 host devices, mesh data=2 x fsdp=4: same losses as one device, parameters really sharded."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

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
    setup = _setup(cfg, make_mesh(2, 4))
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


def test_data2_fsdp4_equals_single_device_and_shards_params(tmp_path):
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        " --xla_force_host_platform_device_count=8").strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900, check=False)
    assert res.returncode == 0, res.stderr[-4000:]
    out = json.loads(res.stdout.split("RESULT", 1)[1])
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

"""Two processes on localhost through jax.distributed (CPU collectives) train like one process with
the same global batch."""

import os
import pathlib
import socket
import subprocess
import sys

import pytest

import research.train as rt

ROOT = pathlib.Path(__file__).resolve().parents[2]
OVERRIDES = ["train.steps=6", "checkpoint.every=3", "data.batch_size=8", "mesh.data=-1",
             "mesh.fsdp=1"]


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["JAX_PLATFORMS"] = "cpu"
    env.pop("XLA_FLAGS", None)
    port = _free_port()
    procs = []
    for pid in range(2):
        cmd = [sys.executable, "-m", "experiments.train", "--preset", "test-tiny", "--workdir",
               str(tmp_path / "multi"), *OVERRIDES, "--coordinator-address", f"localhost:{port}",
               "--num-processes", "2", "--process-id", str(pid)]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (_out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-4000:]
    assert "2 process(es)" in outs[0][1]
    single = rt.run(rt.get_preset("test-tiny").override(*OVERRIDES), tmp_path / "single",
                    verbose=False)
    multi = [r["train/loss"] for r in rt.read_metrics(tmp_path / "multi") if "train/loss" in r]
    one = [r["train/loss"] for r in rt.read_metrics(tmp_path / "single") if "train/loss" in r]
    assert len(multi) == len(one) == 6
    for a, b in zip(multi, one):
        assert abs(a - b) / abs(b) < 1e-5, (multi, one)
    assert single["step"] == 6

"""The demo (`make demo`): mqar-tiny trains a small GLA to MQAR eval accuracy >= 0.9 on CPU."""

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_mqar_tiny_reaches_the_target(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["JAX_PLATFORMS"] = "cpu"
    start = time.time()
    res = subprocess.run([sys.executable, "-m", "experiments.train", "--preset", "mqar-tiny",
                          "--workdir", str(tmp_path / "demo")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=1800, check=False)
    elapsed = time.time() - start
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["eval/accuracy"] >= 0.9, summary
    assert "reached the target 0.9" in res.stdout
    print(f"mqar-tiny: eval accuracy {summary['eval/accuracy']:.3f} in {elapsed:.0f} s")

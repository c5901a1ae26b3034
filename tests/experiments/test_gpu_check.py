"""The prepared GPU run (experiments.gpu_check), dry-run on CPU: every part runs end to end at tiny
shapes with the kernels in interpret mode, the peers are reported as skipped, and the tables land
in their BENCHMARKS.md section."""

import json
import os
import pathlib
import subprocess
import sys

from experiments import gpu_check

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_dry_run_end_to_end(tmp_path):
    out, md = tmp_path / "out", tmp_path / "BENCHMARKS.md"
    md.write_text("# Kernel benchmarks\n\n<!-- sweep:other -->\nkept\n<!-- /sweep:other -->\n")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "experiments.gpu_check", "--dry-run", "--out", str(out),
           "--ops", "linear_attention", "--wheels", str(tmp_path / "no-wheels"),
           "--threads", "2", "--write", str(md)]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                         check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    parts = results["parts"]
    for name in ("env", "check", "time", "train:gla-340m", "train:transformer-340m"):
        assert parts[name]["status"] == "ok", (name, parts[name], (out / "log").iterdir())
    assert parts["jla"]["status"].startswith("skipped")
    recs = results["records"]
    (check,) = [r for r in recs if r["kind"] == "check"]
    assert check["ok"], check
    assert check["o"] < 2e-2 and check["final_state"] < 2e-2 and len(check["grads"]) == 4
    times = {(r["tool"], r["mode"]) for r in recs if r["kind"] == "time" and "ms" in r}
    assert times == {(t, m) for t in ("chunkwise-pallas", "chunkwise-xla") for m in ("fwd", "fb")}
    trains = [r for r in recs if r["kind"] == "train"]
    assert [r["model"] for r in trains] == ["gla-340m", "transformer-340m"]
    assert all(r["step_ms"] > 0 for r in trains)
    text = md.read_text()
    assert "<!-- sweep:other -->\nkept" in text  # other sections are kept
    assert "<!-- sweep:gpu-check -->" in text and "A CPU dry run" in text
    assert "| linear_attention | 1,128,2,32 |" in text
    assert (out / "gpu_check.md").read_text().strip() in text
    # the results folder renders again on any machine
    again = subprocess.run([sys.executable, "-m", "experiments.gpu_check", "--render", str(out)],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
                           check=False)
    assert again.returncode == 0 and "GPU check" in again.stdout


def test_missing_wheels_are_reported(tmp_path, monkeypatch):
    req = tmp_path / "req.txt"
    req.write_text("# comment\nnumpy\nchunkwise-no-such-dist==1.0  # not installed\n")
    monkeypatch.setattr(gpu_check, "REQUIREMENTS", req)
    assert gpu_check._missing_requirements() == ["chunkwise-no-such-dist==1.0"]
    with open(tmp_path / "log", "w") as log:
        rec = gpu_check.install_wheels(tmp_path / "absent", tmp_path / "site", log)
    assert rec["status"].startswith("skipped: no wheel folder")
    (tmp_path / "wheels").mkdir()
    with open(tmp_path / "log", "w") as log:
        rec = gpu_check.install_wheels(tmp_path / "wheels", tmp_path / "site", log)
    assert rec["status"].startswith("pip failed") and rec["installed"] == []


def test_shipped_requirements_parse():
    lines = [ln.split("#")[0].strip() for ln in gpu_check.REQUIREMENTS.read_text().splitlines()]
    reqs = [ln for ln in lines if ln]
    assert "flash-linear-attention==0.6.0" in reqs and "jax-linear-attention==0.1.0" in reqs
    assert "fla-core==0.6.0" in reqs and any(r.startswith("grain") for r in reqs)

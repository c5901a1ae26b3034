"""`python -m experiments.train`: errors, outputs, SIGKILL resume, SIGTERM save (subprocesses).
The trainings share one persistent XLA compilation cache (the in-process reference fills it, the
subprocesses read it), so each subprocess traces but does not compile its programs."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
from conftest import xla_cache_env

import research.train as rt

ROOT = pathlib.Path(__file__).resolve().parents[2]
# long enough that a kill lands mid-run, short enough for the default suite
STEPS = ["train.steps=300", "checkpoint.every=4", "train.log_every=5"]


def _env(cache=None):
    """The subprocess's environment: this checkout importable, JAX on the CPU and, with `cache`
    (the `xla_cache` folder), the persistent compilation cache."""
    env = dict(os.environ, **(xla_cache_env(cache) if cache else {}))
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("JAX_PLATFORMS", "cpu")
    return env


def _cmd(workdir, *overrides):
    return [sys.executable, "-m", "experiments.train", "--preset", "test-tiny", "--workdir",
            str(workdir), *overrides]


def _start_and_wait_for_checkpoint(workdir, cache, timeout=300):
    proc = subprocess.Popen(_cmd(workdir, *STEPS), cwd=ROOT, env=_env(cache),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = pathlib.Path(workdir) / "checkpoints" / "4"
    deadline = time.time() + timeout
    while not first.is_dir():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"training exited early ({proc.returncode}):\n{out}\n{err[-3000:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail("no checkpoint appeared in time")
        time.sleep(0.05)
    return proc


def _final_loss(workdir):
    return json.loads((pathlib.Path(workdir) / "summary.json").read_text())["final_loss"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, xla_cache):
    """An uninterrupted in-process run of the same config, checkpointed only at its end (saving
    changes no number; 75 saves cost ~25 s). Compiles the programs into `xla_cache`."""
    cfg = rt.get_preset("test-tiny").override(*STEPS, "checkpoint.every=300")
    return rt.run(cfg, tmp_path_factory.mktemp("ref") / "run", verbose=False)


def test_bad_key_and_bad_value_are_errors():
    for override, expect in (("train.stepz=3", "valid keys:"),
                             ("mesh.fsdp=0", "mesh.fsdp must be >= 1")):
        res = subprocess.run(_cmd("/nonexistent", override), cwd=ROOT, env=_env(),
                             capture_output=True, text=True, timeout=300, check=False)
        assert res.returncode == 2
        assert expect in res.stderr
    res = subprocess.run([sys.executable, "-m", "experiments.train", "--preset", "nope"],
                         cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300,
                         check=False)
    assert res.returncode == 2 and "mqar-tiny" in res.stderr


def test_sigkill_after_first_checkpoint_then_rerun_matches(tmp_path, reference, xla_cache):
    wd = tmp_path / "run"
    proc = _start_and_wait_for_checkpoint(wd, xla_cache)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not (wd / "summary.json").exists()
    res = subprocess.run(_cmd(wd, *STEPS), cwd=ROOT, env=_env(xla_cache), capture_output=True,
                         text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming from step" in res.stderr
    assert "outputs:" in res.stdout and str(wd) in res.stdout
    loss = _final_loss(wd)
    assert abs(loss - reference["final_loss"]) / abs(reference["final_loss"]) < 1e-6
    steps = [r["step"] for r in rt.read_metrics(wd) if "train/loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 300


def test_sigterm_saves_a_checkpoint_then_exits_cleanly(tmp_path, reference, xla_cache):
    wd = tmp_path / "run"
    proc = _start_and_wait_for_checkpoint(wd, xla_cache)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "stopped by SIGTERM at step" in out
    stopped_at = int(out.split("stopped by SIGTERM at step ")[1].split("/")[0])
    assert stopped_at < 300
    assert stopped_at in rt.Checkpointer(wd / "checkpoints").all_steps()
    res = subprocess.run(_cmd(wd, *STEPS), cwd=ROOT, env=_env(xla_cache), capture_output=True,
                         text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resuming from step {stopped_at}" in res.stderr
    assert abs(_final_loss(wd) - reference["final_loss"]) / abs(reference["final_loss"]) < 1e-6

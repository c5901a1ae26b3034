"""A workdir belongs to one run: a second run (in-process, the CLI, a second sweep process) on a
held workdir fails at once naming the workdir and the holder's pid; a SIGKILLed holder's stale
lock does not block a rerun."""

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import research.train as rt
from research.sweep import load_sweep
from research.sweep import runner as sweep_runner

ROOT = pathlib.Path(__file__).resolve().parents[3]

HOLD = textwrap.dedent("""
    import sys, time
    from research.train.workdir import hold_workdir
    with hold_workdir(sys.argv[1]):
        print("held", flush=True)
        time.sleep(600)
""")


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("JAX_PLATFORMS", "cpu")
    return env


@pytest.fixture
def holder(tmp_path):
    """Start a process that holds `tmp_path / "run"`; yields (workdir, process)."""
    workdir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(workdir)], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield workdir, proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_a_held_workdir_refuses_a_second_run_at_once(holder):
    workdir, proc = holder
    t0 = time.time()
    with pytest.raises(rt.WorkdirBusy, match=rf"workdir {workdir} is in use .*pid {proc.pid} on"):
        rt.run(rt.get_preset("test-tiny"), workdir, verbose=False)
    assert time.time() - t0 < 10
    assert not (workdir / "config.json").exists()  # nothing of the holder's run was touched


def test_the_cli_exits_at_once_naming_the_workdir_and_pid(holder):
    workdir, proc = holder
    res = subprocess.run([sys.executable, "-m", "experiments.train", "--preset", "test-tiny",
                          "--workdir", str(workdir)], cwd=ROOT, env=_env(), capture_output=True,
                         text=True, timeout=300, check=False)
    assert res.returncode == 3, res.stderr[-2000:]
    assert f"workdir {workdir}" in res.stderr and f"pid {proc.pid}" in res.stderr


def test_a_killed_holders_lock_does_not_block(holder):
    workdir, proc = holder
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (workdir / ".lock").exists()  # the stale file stays; the kernel dropped the lock
    with rt.hold_workdir(workdir) as held:
        assert held == workdir
        assert f"pid={os.getpid()}" in (workdir / ".lock").read_text()


def test_the_lock_is_reentrant_in_one_process_and_released_after(tmp_path):
    with rt.hold_workdir(tmp_path / "w"):
        with rt.hold_workdir(tmp_path / "w"):
            pass
        res = subprocess.run([sys.executable, "-c", HOLD.replace("time.sleep(600)", "pass"),
                              str(tmp_path / "w")], cwd=ROOT, env=_env(), capture_output=True,
                             text=True, timeout=120, check=False)
        assert res.returncode != 0 and "WorkdirBusy" in res.stderr
    res = subprocess.run([sys.executable, "-c", HOLD.replace("time.sleep(600)", "pass"),
                          str(tmp_path / "w")], cwd=ROOT, env=_env(), capture_output=True,
                         text=True, timeout=120, check=False)
    assert res.returncode == 0 and "held" in res.stdout


SWEEP = textwrap.dedent("""
    from research import ModelConfig
    from research.sweep import Figure, Run, task_config
    M = ModelConfig(mixer="gla", vocab_size=32, d_model=16, n_layers=1, n_heads=2, d_ff=32)
    CFG = task_config(M, "MQAR", {"vocab_size": 32, "seq_len": 16, "num_kv_pairs": 2},
                      steps=2, batch_size=8, train_examples=64, eval_examples=16,
                      eval_batches=1, checkpoint_every=2)
    RUNS = [Run("a", CFG, {"k": 1}), Run("b", CFG, {"k": 2})]
    FIGURES = [Figure("f", x="k", y="eval/accuracy")]
""")


def test_a_second_sweep_process_skips_the_runs_the_first_holds(tmp_path):
    """Another sweep process holds run "a" (as while training it): this one skips "a" as busy,
    naming the holder's pid, and trains "b"."""
    path = tmp_path / "s.py"
    path.write_text(SWEEP)
    sweep = load_sweep(path)
    workdir = tmp_path / "w"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(workdir / "runs" / "a")], cwd=ROOT,
                            env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        rows = {r["name"]: r for r in sweep_runner.run_sweep(sweep, workdir, verbose=False)}
        assert rows["a"]["status"] == "busy" and f"pid {proc.pid}" in rows["a"]["error"]
        assert rows["b"]["status"] == "done"
        assert not (workdir / "runs" / "a" / "config.json").exists()
    finally:
        proc.kill()
        proc.wait()

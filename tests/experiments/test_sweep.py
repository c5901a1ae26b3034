"""The sweep runner: sweep-file loading and validation, the results table, and the two tiny
sweeps end to end through `python -m experiments.sweep` (results.csv, results.md, PNGs; a rerun
skips finished runs)."""

import json
import pathlib
import textwrap

import pytest

from experiments import sweep as sweep_cli
from research.sweep import Figure, Run, load_sweep, markdown_table, read_csv
from research.sweep.results import best_rows, columns

ROOT = pathlib.Path(__file__).resolve().parents[2]
SWEEPS = ROOT / "experiments" / "sweeps"

TINY_RUN = textwrap.dedent("""
    from research import ModelConfig
    from research.sweep import Figure, Run, task_config
    M = ModelConfig(mixer="gla", vocab_size=32, d_model=16, n_layers=1, n_heads=2, d_ff=32)
    CFG = task_config(M, "MQAR", {"vocab_size": 32, "seq_len": 16, "num_kv_pairs": 2},
                      steps=STEPS, batch_size=8, train_examples=256, eval_examples=16,
                      eval_batches=1, checkpoint_every=CKPT)
""")


def _write(tmp_path, body, name="s.py"):
    p = tmp_path / name
    p.write_text(body)
    return p


def test_load_sweep_validates(tmp_path):
    with pytest.raises(ValueError, match="RUNS"):
        load_sweep(_write(tmp_path, "X = 1\n"))
    with pytest.raises(ValueError, match="does not exist"):
        load_sweep(tmp_path / "missing.py")
    dup = TINY_RUN.replace("STEPS", "4").replace("CKPT", "4") + \
        "RUNS = [Run('a', CFG), Run('a', CFG)]\n"
    with pytest.raises(ValueError, match="unique"):
        load_sweep(_write(tmp_path, dup))
    with pytest.raises(ValueError, match="name"):
        Run("bad name/x", None)
    with pytest.raises(ValueError, match="config"):
        Run("ok", {"model": 1})
    with pytest.raises(ValueError, match="name"):
        Figure("a/b", x="x", y="y")
    sweep = load_sweep(SWEEPS / "state_size.py")
    assert len(sweep.runs) >= 40 and sweep.figures[0].best_over == ("lr",)
    assert {r.tags["mixer"] for r in sweep.runs} == {
        "gla", "deltanet", "gated_deltanet", "gsa", "mamba2", "retnet", "attention"}
    decay = load_sweep(SWEEPS / "decay.py")
    assert {r.tags["decay"] for r in decay.runs} == {"none", "fixed", "scalar", "vector"}
    assert {r.tags["task"] for r in decay.runs} == {"forgetting_mqar", "dfa"}
    assert decay.eval_examples > 0


def test_results_helpers(tmp_path):
    rows = [
        {"name": "a", "mixer": "gla", "lr": 1e-3, "eval/accuracy": 0.5, "state_size": 10,
         "status": "done", "probe/x": 1.0},
        {"name": "b", "mixer": "gla", "lr": 3e-3, "eval/accuracy": 0.7, "state_size": 10,
         "status": "done"},
        {"name": "c", "mixer": "deltanet", "lr": 1e-3, "status": "failed", "error": "boom|x"},
    ]
    cols = columns(rows, ["mixer", "lr"])
    assert cols == ["name", "mixer", "lr", "state_size", "eval/accuracy", "probe/x", "status",
                    "error"]
    best = best_rows(rows, "eval/accuracy", ("lr",), ["mixer", "lr"])
    assert [r["name"] for r in best] == ["b"]
    md = markdown_table(rows, cols)
    assert md.count("\n") == 4 and "boom\\|x" in md
    from research.sweep.results import write_csv
    back = read_csv(write_csv(rows, cols, tmp_path / "r.csv"))
    assert back[1]["eval/accuracy"] == 0.7 and back[0]["state_size"] == 10
    assert back[2]["eval/accuracy"] is None


def _run_cli(args, capsys):
    code = sweep_cli.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_state_size_tiny_end_to_end_and_rerun_skips(tmp_path, capsys):
    workdir = tmp_path / "ss"
    code, out, _ = _run_cli([SWEEPS / "state_size_tiny.py", "--workdir", workdir, "--dry-run"],
                            capsys)
    assert code == 0 and "todo" in out and not (workdir / "results.csv").exists()
    code, out, err = _run_cli([SWEEPS / "state_size_tiny.py", "--workdir", workdir], capsys)
    assert code == 0, err
    rows = read_csv(workdir / "results.csv")
    assert [r["name"] for r in rows] == ["gla-d16", "gla-d32", "deltanet-d16", "deltanet-d32"]
    for r in rows:
        assert r["status"] == "done" and r["step"] == 10
        assert 0.0 <= r["eval/accuracy"] <= 1.0 and r["state_size"] > 0
    # state size grows with width for both mixers
    by = {r["name"]: r["state_size"] for r in rows}
    assert by["gla-d32"] > by["gla-d16"] and by["deltanet-d32"] > by["deltanet-d16"]
    md = (workdir / "results.md").read_text()
    assert "accuracy_vs_state_size.png" in md and "| gla-d16 |" in md
    assert (workdir / "accuracy_vs_state_size.png").stat().st_size > 5000
    stamps = {p: p.stat().st_mtime for p in workdir.glob("runs/*/result.json")}
    code, out, err = _run_cli([SWEEPS / "state_size_tiny.py", "--workdir", workdir], capsys)
    assert code == 0 and err.count("finished before, skipped") == 4
    assert stamps == {p: p.stat().st_mtime for p in workdir.glob("runs/*/result.json")}
    code, out, _ = _run_cli([SWEEPS / "state_size_tiny.py", "--workdir", workdir, "--dry-run"],
                            capsys)
    assert out.count("| done |") == 4
    # --report writes the sweep's section (figures beside the sweep file: use a copy here)
    copy = tmp_path / "sweeps" / "state_size_tiny.py"
    copy.parent.mkdir()
    copy.write_text((SWEEPS / "state_size_tiny.py").read_text())
    report = tmp_path / "EXP.md"
    report.write_text("# Experiments\n\nintro\n")
    code, _, err = _run_cli([copy, "--workdir", workdir, "--report", report], capsys)
    assert code == 0 and err.count("skipped") == 4
    text = report.read_text()
    assert text.startswith("# Experiments\n\nintro") and "<!-- sweep:state_size_tiny -->" in text
    assert "--report" in text and "| gla-d16 |" in text
    assert (copy.parent / "figures" / "state_size_tiny_accuracy_vs_state_size.png").exists()


@pytest.mark.slow  # 5 runs, ~3 min on 2 cores; the default suite checks it loads (--dry-run)
def test_decay_tiny_end_to_end(tmp_path, capsys):
    workdir = tmp_path / "decay"
    code, _, err = _run_cli([SWEEPS / "decay_tiny.py", "--workdir", workdir], capsys)
    assert code == 0, err
    rows = {r["name"]: r for r in read_csv(workdir / "results.csv")}
    assert len(rows) == 5
    for name, r in rows.items():
        assert r["status"] == "done"
        assert 0.0 <= r["probe/accuracy"] <= 1.0
        if name.startswith("forgetting"):
            assert 0.0 <= r["probe/stale_rate"] <= 1.0
    assert 0.0 <= rows["dfa-vector"]["probe/dfa_accuracy"] <= 1.0
    assert 0.0 <= rows["dfa-vector"]["probe/dfa_tvd"] <= 1.0
    for fig in ("ladder_forgetting_mqar", "ladder_stale_rate"):
        assert (workdir / f"{fig}.png").stat().st_size > 5000


def test_bad_arguments(tmp_path, capsys):
    code, _, err = _run_cli([tmp_path / "nope.py"], capsys)
    assert code == 2 and "does not exist" in err
    code, _, err = _run_cli([SWEEPS / "state_size_tiny.py", "--jobs", "0"], capsys)
    assert code == 2 and "--jobs" in err


@pytest.mark.slow
def test_interrupted_run_resumes_and_jobs(tmp_path, capsys):
    """A run with checkpoints but no result resumes from its newest checkpoint; two jobs."""
    from research.train.trainer import run as train
    body = TINY_RUN.replace("STEPS", "16").replace("CKPT", "8") + textwrap.dedent("""
        RUNS = [Run("a", CFG, {"k": 1}), Run("b", CFG.replace(train=CFG.train.__class__(
            steps=16, seed=1, eval_every=0, eval_batches=1, progress=False)), {"k": 2})]
        FIGURES = [Figure("f", x="k", y="eval/accuracy")]
    """)
    path = _write(tmp_path, body, "resume.py")
    sweep = load_sweep(path)
    workdir = tmp_path / "w"
    first = sweep.runs[0].config
    half = first.replace(train=first.train.__class__(steps=8, eval_every=0, eval_batches=1,
                                                     progress=False))
    train(half, workdir / "runs" / "a", verbose=False)
    code, _, err = _run_cli([path, "--workdir", workdir, "--jobs", "2"], capsys)
    assert code == 0, err
    summary = json.loads((workdir / "runs" / "a" / "summary.json").read_text())
    assert summary["resumed_from"] == 8 and summary["step"] == 16
    assert [r["step"] for r in read_csv(workdir / "results.csv")] == [16, 16]


def test_report_sections_and_comparison(tmp_path):
    from research.sweep.report import ordering_table, recall_comparison, update_report
    rows = [
        {"mixer": "deltanet", "state_size": 1024, "eval/accuracy": 0.9},
        {"mixer": "gla", "state_size": 1024, "eval/accuracy": 0.7},
        {"mixer": "gla", "state_size": 1024, "eval/accuracy": 0.8},   # best over lrs counts
        {"mixer": "retnet", "state_size": 1024, "eval/accuracy": 0.85},
        {"mixer": "deltanet", "state_size": 4096, "eval/accuracy": 0.95},
        {"mixer": "attention", "state_size": 8192, "eval/accuracy": 0.99},
    ]
    # one seed per point: nothing is resolved (see tests/research/sweep/test_report.py)
    table = ordering_table(rows, ("deltanet", "gla", "retnet"), chance=0.01, by="state_size")
    assert "| 1024 | 0.900 | 0.800 | 0.850 | not resolved | only 1 seed" in table
    assert "| 4096 | 0.950 |  |  | not resolved | no run of gla, retnet;" in table
    text = recall_comparison(rows, ("deltanet", "gla"), chance=0.01)
    assert "| 1024 | 0.900 | 0.800 | not resolved |" in text and "near 1.0, as published" in text
    path = tmp_path / "R.md"
    update_report(path, "<!-- sweep:a -->\nA1\n<!-- /sweep:a -->", "a")
    update_report(path, "<!-- sweep:b -->\nB1\n<!-- /sweep:b -->", "b")
    update_report(path, "<!-- sweep:a -->\nA2\n<!-- /sweep:a -->", "a")
    body = path.read_text()
    assert body.startswith("# Experiments") and "A2" in body and "A1" not in body
    assert body.index("A2") < body.index("B1")


def test_only_filters_runs(tmp_path, capsys):
    code, out, _ = _run_cli([SWEEPS / "decay_tiny.py", "--workdir", tmp_path, "--dry-run",
                             "--only", "dfa", "--only=-none"], capsys)
    assert code == 0 and "2 runs" in out and "dfa-vector" in out and "-fixed" not in out
    code, _, err = _run_cli([SWEEPS / "decay_tiny.py", "--only", "nothing-matches"], capsys)
    assert code == 2 and "no run name" in err


def test_state_size_cpu_tiny_reports_seeds_honestly(tmp_path, capsys, xla_cache):
    """Two seeds per point, and a report whose comparison of untrained models is "not
    resolved" (never "holds") with the reason."""
    sweeps = tmp_path / "sweeps"
    sweeps.mkdir()
    for name in ("state_size_cpu.py", "state_size_cpu_tiny.py"):
        (sweeps / name).write_text((SWEEPS / name).read_text())
    report = tmp_path / "EXP.md"
    code, _, err = _run_cli([sweeps / "state_size_cpu_tiny.py", "--workdir", tmp_path / "w",
                             "--report", report], capsys)
    assert code == 0, err
    rows = read_csv(tmp_path / "w" / "results.csv")
    assert sorted((r["mixer"], r["seed"]) for r in rows) == [
        (m, s) for m in ("gla", "retnet") for s in (0, 1)]
    text = report.read_text()
    assert "| not resolved | at chance:" in text and "| holds |" not in text
    assert "on every seed" in text


@pytest.mark.parametrize("name", ["state_size", "decay", "demo", "state_size_tiny", "decay_tiny",
                                  "state_size_cpu", "state_size_cpu_tiny", "slots_cpu",
                                  "copying_cpu_tiny", "jrt_cpu_tiny", "icll_cpu_tiny",
                                  "state_collapse_cpu_tiny"])
def test_every_shipped_sweep_builds_its_models(name, tmp_path):
    """Each sweep file loads and every run's model builds (abstractly) with a state size."""
    from research.sweep import describe
    sweep = load_sweep(SWEEPS / f"{name}.py")
    rows = describe(sweep, tmp_path)
    assert len(rows) == len(sweep.runs)
    assert all(r["state_size"] > 0 and r["num_params"] > 0 and r["status"] == "todo"
               for r in rows)
    if name.endswith("_tiny"):
        assert all(r.config.train.steps <= 50 for r in sweep.runs)


def test_a_signal_stops_the_whole_sweep(tmp_path, monkeypatch):
    """SIGTERM during one run (the trainer saves and reports it interrupted) stops the sweep: the
    runs after it are not started."""
    from research.sweep import runner

    body = TINY_RUN.replace("STEPS", "4").replace("CKPT", "4") + textwrap.dedent("""
        RUNS = [Run("a", CFG, {"k": 1}), Run("b", CFG, {"k": 2})]
        FIGURES = [Figure("f", x="k", y="eval/accuracy")]
    """)
    started = []

    def fake_train(run, run_dir, eval_examples):
        started.append(run.name)
        return {"name": run.name, **run.tags, "status": "interrupted", "error": "stopped by SIGTERM"}

    monkeypatch.setattr(runner, "_safe_train", fake_train)
    rows = runner.run_sweep(load_sweep(_write(tmp_path, body, "stop.py")), tmp_path / "w",
                            verbose=False)
    assert started == ["a"]
    assert [r["status"] for r in rows] == ["interrupted", "not started"]
    assert (tmp_path / "w" / "results.csv").exists()

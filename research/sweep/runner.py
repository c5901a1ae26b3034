"""Run a sweep: train every run through `research.train.trainer.run`, skip finished runs, resume
interrupted ones, then write the results table and the figures.

    sweep = load_sweep("experiments/sweeps/state_size_tiny.py")
    rows = run_sweep(sweep, "runs/sweeps/state_size_tiny", jobs=1)

Layout of WORKDIR:
    runs/<name>/          the trainer's run folder (config.json, metrics.jsonl, checkpoints/, ...)
    runs/<name>/result.json   this run's row, written once it is trained (and evaluated)
    results.csv, results.md, <figure>.png

A run is finished when its result.json exists and records the same config; a run with
checkpoints but no result is resumed by the trainer from its newest checkpoint; a run that fails
(e.g. diverges) is reported in the table with its error and retried on the next invocation.

A run folder is never trained twice at once: the sweep holds `runs/<name>` (its `.lock`, see
`research.train.workdir`) while it trains and evaluates that run. A second sweep process over
the same WORKDIR skips the runs another process holds (status "busy", naming that process's pid)
and trains the others; rerun it once the first has finished to fill in the table.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import pathlib
import sys
import time
import traceback
from typing import Any

from flax import nnx

from research.config import ModelConfig
from research.model import LanguageModel, count_params
from research.sweep.results import write_results
from research.sweep.spec import Run, Sweep
from research.train.config import Config, config_from_dict, config_to_dict
from research.train.metrics import read_metrics
from research.train.trainer import restore_model
from research.train.trainer import run as train
from research.train.workdir import WorkdirBusy, hold_workdir
from research.validation import check_int


def _config_dict(config: Config) -> dict:
    return config_to_dict(config)


def _same_config(saved: Any, config: Config) -> bool:
    """Whether a saved config dict is `config`, its missing keys taking their defaults (so a
    field added to the configs later does not make every finished run look unfinished)."""
    if not isinstance(saved, dict):
        return False
    try:
        return _config_dict(config_from_dict(saved)) == _config_dict(config)
    except ValueError:  # a key the configs no longer have, or a value they refuse
        return False


def _for_sweep(config: Config) -> Config:
    """The config a sweep trains: no per-run progress bar (the sweep prints one line per run)."""
    return config.replace(train=dataclasses.replace(config.train, progress=False))


def model_stats(config: Config) -> dict[str, int]:
    """{"state_size": recurrent state floats per sequence at the task's length (attention counts
    its key/value cache), "num_params"} of `config.model`, from abstract shapes (no memory)."""
    model_cfg: ModelConfig = config.model
    seq_len = config.data.task_args.get("seq_len") if config.data.source == "task" else None
    if seq_len is None:
        seq_len = config.data.seq_len
    abstract = nnx.eval_shape(lambda: LanguageModel(model_cfg, rngs=nnx.Rngs(0)))
    return {"state_size": int(abstract.state_size(seq_len)),
            "num_params": int(count_params(model_cfg))}


def run_status(run: Run, run_dir: pathlib.Path) -> str:
    """"done" (result.json with this config), "partial" (checkpoints, no result) or "todo"."""
    result = run_dir / "result.json"
    if result.exists():
        try:
            saved = json.loads(result.read_text())
            if _same_config(saved.get("config"), _for_sweep(run.config)):
                return "done"
        except json.JSONDecodeError:
            pass
    ckpts = run_dir / "checkpoints"
    if ckpts.exists() and any(p.name.isdigit() for p in ckpts.iterdir()):
        return "partial"
    return "todo"


def train_and_evaluate(run: Run, run_dir: str, eval_examples: int) -> dict[str, Any]:
    """Train one run (resuming if it has checkpoints), evaluate it, write and return its row.

    The row holds the run's name and tags, the trainer's summary numbers (step, train/loss,
    eval/loss, eval/accuracy, wall_time_s), state_size, num_params, and with `eval_examples`
    the `evaluate_task` metrics of the trained model as "probe/<metric>".
    """
    run_dir = pathlib.Path(run_dir)
    config = _for_sweep(run.config)
    old_summary = {}
    if (run_dir / "summary.json").exists():
        try:
            old_summary = json.loads((run_dir / "summary.json").read_text())
        except json.JSONDecodeError:
            pass
    summary = train(config, run_dir, verbose=False)
    row: dict[str, Any] = {"name": run.name, **run.tags}
    if summary.get("interrupted"):
        row.update(status="interrupted", error=f"stopped by {summary['interrupted']}")
        return row
    row.update(model_stats(config))
    row["step"] = summary.get("step")
    # The newest value of each metric in metrics.jsonl: right for fresh, resumed and already
    # finished runs alike (a finished run trains no step and its summary carries no metrics).
    last: dict[str, Any] = {}
    for rec in read_metrics(run_dir / "metrics.jsonl"):
        last.update(rec)
    for key in ("train/loss", "train/accuracy", "eval/loss", "eval/accuracy"):
        row[key] = last.get(key)
    wall = summary.get("wall_time_s")
    if summary.get("resumed_from") is not None:
        wall = (wall or 0.0) + (old_summary.get("wall_time_s") or 0.0)
    row["wall_time_s"] = wall
    if eval_examples:
        from research.probes.evaluate import evaluate_task
        from research.probes.runner import eval_task_of
        task = eval_task_of(config)
        if task is not None:
            model, _, _ = restore_model(run_dir)
            metrics = evaluate_task(model, task, num_examples=eval_examples)
            row.update({f"probe/{k}": v for k, v in metrics.items()
                        if k not in ("num_examples", "num_positions")})
    row["status"] = "done"
    (run_dir / "result.json").write_text(
        json.dumps({"row": row, "config": _config_dict(config)}, indent=2) + "\n")
    return row


def _safe_train(run: Run, run_dir: str, eval_examples: int) -> dict[str, Any]:
    """Hold the run's folder, then train and evaluate it; a run another process holds is
    skipped ("busy"), one that another process finished meanwhile is read back."""
    try:
        with hold_workdir(run_dir):
            if run_status(run, pathlib.Path(run_dir)) == "done":
                return _read_row(run, pathlib.Path(run_dir))
            return train_and_evaluate(run, run_dir, eval_examples)
    except WorkdirBusy as e:
        print(f"[sweep] run {run.name} skipped: {e}", file=sys.stderr)
        return {"name": run.name, **run.tags, "status": "busy", "error": str(e)}
    except Exception as e:  # noqa: BLE001  (a failed run is reported, the others go on)
        tb = traceback.format_exc(limit=3)
        print(f"[sweep] run {run.name} failed: {type(e).__name__}: {e}\n{tb}", file=sys.stderr)
        return {"name": run.name, **run.tags, "status": "failed",
                "error": f"{type(e).__name__}: {e}"}


def _read_row(run: Run, run_dir: pathlib.Path) -> dict[str, Any]:
    return json.loads((run_dir / "result.json").read_text())["row"]


def describe(sweep: Sweep, workdir: str | pathlib.Path) -> list[dict[str, Any]]:
    """The dry-run table: each run's name, tags, state size, parameters and status."""
    workdir = pathlib.Path(workdir)
    rows = []
    for run in sweep.runs:
        rows.append({"name": run.name, **run.tags, **model_stats(run.config),
                     "steps": run.config.train.steps,
                     "status": run_status(run, workdir / "runs" / run.name)})
    return rows


def run_sweep(sweep: Sweep, workdir: str | pathlib.Path, jobs: int = 1,
              verbose: bool = True, command: str | None = None) -> list[dict[str, Any]]:
    """Train every unfinished run of `sweep` under `workdir` (in `jobs` processes), then write
    results.csv, results.md and the figures. Returns the rows in the sweep's run order.

    Args:
      sweep: from `load_sweep`.
      workdir: the sweep's folder.
      jobs: runs trained at once (separate processes when > 1).
      verbose: print one line per run.
      command: the command line recorded in results.md (how to regenerate it).
    """
    check_int("jobs", jobs, 1)
    workdir = pathlib.Path(workdir).absolute()
    (workdir / "runs").mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict] = {}
    todo = []
    for run in sweep.runs:
        run_dir = workdir / "runs" / run.name
        if run_status(run, run_dir) == "done":
            rows[run.name] = _read_row(run, run_dir)
            if verbose:
                print(f"[sweep] {run.name}: finished before, skipped", file=sys.stderr)
        else:
            todo.append(run)

    def report(run, row, t0):
        rows[run.name] = row
        if verbose:
            acc = row.get("eval/accuracy")
            acc = f"eval/accuracy {acc:.4f}" if isinstance(acc, float) else row.get("error", "")
            print(f"[sweep] {run.name}: {row.get('status')} {acc} ({time.time() - t0:.0f} s)",
                  file=sys.stderr, flush=True)

    if jobs == 1 or len(todo) <= 1:
        for run in todo:
            t0 = time.time()
            row = _safe_train(run, str(workdir / "runs" / run.name), sweep.eval_examples)
            report(run, row, t0)
            if row.get("status") == "interrupted":  # SIGTERM / Ctrl-C stops the sweep, not one run
                print(f"[sweep] stopped at {run.name} ({row.get('error')}); rerun the same command "
                      "to resume", file=sys.stderr, flush=True)
                break
    else:
        # Several processes share the accelerator: none may grab most of its memory up front.
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            t0 = time.time()
            futures = {pool.submit(_safe_train, run, str(workdir / "runs" / run.name),
                                   sweep.eval_examples): run for run in todo}
            for fut in concurrent.futures.as_completed(futures):
                report(futures[fut], fut.result(), t0)
    ordered = [rows.get(r.name, {"name": r.name, **r.tags, "status": "not started"})
               for r in sweep.runs]
    write_results(sweep, workdir, ordered, command=command)
    return ordered

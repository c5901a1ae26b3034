"""Ablation sweeps: a sweep file declares `RUNS` (named training configs with tags) and `FIGURES`;
`run_sweep` trains them through `research.train` (skipping finished runs, resuming interrupted
ones) and writes results.csv, results.md and the plots. The library behind
`python -m experiments.sweep`."""

from research.sweep.configs import task_config
from research.sweep.results import markdown_table, read_csv, write_results
from research.sweep.runner import describe, model_stats, run_status, run_sweep
from research.sweep.spec import Figure, Run, Sweep, grid, load_sweep, with_seeds

__all__ = [
    "Figure", "Run", "Sweep", "describe", "grid", "load_sweep", "markdown_table", "model_stats",
    "read_csv", "run_status", "run_sweep", "task_config", "with_seeds", "write_results",
]

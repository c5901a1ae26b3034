"""Evaluations and probes of trained models: per-task metrics, length extrapolation, recall vs
kv pairs, passkey grids, per-head decay half-lives and state norms; `run_probes` writes them as
JSON and PNG (the library behind `python -m experiments.probe`)."""

from research.probes.capacity import length_extrapolation, passkey_sweep, recall_vs_kv_pairs
from research.probes.dynamics import decay_statistics, half_life, state_norms
from research.probes.evaluate import evaluate_task, forward_fn, predict_logits
from research.probes.runner import PROBES, ProbeSettings, applicable_probes, run_probes

__all__ = [
    "PROBES", "ProbeSettings", "applicable_probes", "decay_statistics", "evaluate_task",
    "forward_fn", "half_life", "length_extrapolation", "passkey_sweep", "predict_logits",
    "recall_vs_kv_pairs", "run_probes", "state_norms",
]

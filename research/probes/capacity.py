"""Probes that sweep a task knob at evaluation time: length extrapolation, recall vs the number
of kv pairs (state capacity), and the passkey length x depth grid.

Each returns a list of rows (dicts) ready for a table, JSON or `research.probes.plots`.
"""

from __future__ import annotations

from collections.abc import Sequence

from research.probes.evaluate import evaluate_task
from research.tasks import MQAR, ForgettingMQAR, Passkey


def length_extrapolation(model, task, factors: Sequence[float] = (1, 2, 4, 8, 16),
                         num_examples: int = 128, batch_size: int = 16) -> list[dict]:
    """Evaluate `task` at `seq_len * factor` for each factor (training length = factor 1).

    Everything else about the task is kept (for MQAR the number of kv pairs stays, so the queries
    spread over a longer gap). Returns rows {"factor", "seq_len", **evaluate_task metrics}, or
    {"factor", "seq_len", "skipped": reason} where the task cannot be built at that length.
    """
    rows = []
    for f in factors:
        if not f > 0:
            raise ValueError(f"factors must be > 0, got {f!r}")
        seq_len = round(task.seq_len * f)
        if isinstance(task, (MQAR, ForgettingMQAR)) and seq_len % 2:
            seq_len += 1
        try:
            t = task.with_(seq_len=seq_len)
        except ValueError as e:  # e.g. set disjointness runs out of distinct elements
            rows.append({"factor": float(f), "seq_len": seq_len, "skipped": str(e)})
            continue
        rows.append({"factor": float(f), "seq_len": seq_len,
                     **evaluate_task(model, t, num_examples, batch_size)})
    return rows


def recall_vs_kv_pairs(model, task, kv_pairs: Sequence[int] | None = None,
                       num_examples: int = 128, batch_size: int = 16) -> list[dict]:
    """MQAR accuracy as the number of kv pairs grows at a fixed length (state capacity).

    `kv_pairs` defaults to powers of two up to the most that fit (`4 N <= L`).
    Returns rows {"num_kv_pairs", **evaluate_task metrics}.
    """
    if not isinstance(task, (MQAR, ForgettingMQAR)):
        raise ValueError(f"task must be MQAR or ForgettingMQAR, got {type(task).__name__}")
    if kv_pairs is None:
        limit = min(task.seq_len // 4, task.vocab_size // 2 - 1)
        kv_pairs = [2**i for i in range(limit.bit_length()) if 2**i <= limit]
    rows = []
    for n in kv_pairs:
        changes = {"num_kv_pairs": int(n)}
        if isinstance(task, ForgettingMQAR):
            changes["num_updates"] = min(task.num_updates, max(0, (task.seq_len - 4 * int(n)) // 2))
        t = task.with_(**changes)
        rows.append({"num_kv_pairs": int(n), **evaluate_task(model, t, num_examples, batch_size)})
    return rows


def passkey_sweep(model, lengths: Sequence[int], depths: Sequence[float], vocab_size: int,
                  num_examples: int = 32, batch_size: int = 16, **task_fields) -> list[dict]:
    """Passkey accuracy on the `lengths` x `depths` grid.

    Returns rows {"seq_len", "depth", **evaluate_task metrics}.
    """
    rows = []
    for n in lengths:
        for d in depths:
            t = Passkey(vocab_size=vocab_size, seq_len=int(n), depth=float(d), **task_fields)
            rows.append({"seq_len": int(n), "depth": float(d),
                         **evaluate_task(model, t, num_examples, batch_size)})
    return rows

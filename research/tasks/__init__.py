"""Synthetic task sources (grain RandomAccessDataSources).

Every task is a frozen dataclass with `vocab_size`, `seq_len`, `seed` and `num_examples`;
`task[i]` is {"tokens": int32[L], "targets": int32[L], "loss_mask": bool[L]} (see
`research.tasks.base`). `TASKS` maps the names used by configs and sweeps to the classes, and
`make_task(name, **fields)` builds one.
"""

from research.tasks.base import Task, masked_accuracy, stack
from research.tasks.copying import Copying
from research.tasks.forgetting_mqar import ForgettingMQAR
from research.tasks.induction_heads import InductionHeads
from research.tasks.mqar import MQAR, power_law_gap_probs
from research.tasks.passkey import Passkey, passkey_grid
from research.tasks.regular_languages import DFA, RegularLanguages, dfa_metrics, sample_dfa
from research.tasks.selective_copying import SelectiveCopying
from research.tasks.set_disjointness import SetDisjointness

TASKS = {
    "mqar": MQAR,
    "forgetting_mqar": ForgettingMQAR,
    "regular_languages": RegularLanguages,
    "passkey": Passkey,
    "selective_copying": SelectiveCopying,
    "induction_heads": InductionHeads,
    "set_disjointness": SetDisjointness,
    "copying": Copying,
}


def make_task(name: str, **fields) -> Task:
    """Build task `name` (a key of TASKS) with the given dataclass fields."""
    if name not in TASKS:
        raise ValueError(f"task name must be one of {sorted(TASKS)}, got {name!r}")
    return TASKS[name](**fields)


__all__ = [
    "DFA", "MQAR", "TASKS", "Copying", "ForgettingMQAR", "InductionHeads", "Passkey",
    "RegularLanguages", "SelectiveCopying", "SetDisjointness", "Task", "dfa_metrics",
    "make_task", "masked_accuracy", "passkey_grid", "power_law_gap_probs", "sample_dfa", "stack",
]

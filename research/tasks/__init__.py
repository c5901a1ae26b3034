"""Synthetic task sources (grain RandomAccessDataSources); see `research.tasks.base` for the
example format shared by every task."""

from research.tasks.base import Task, masked_accuracy, stack
from research.tasks.mqar import MQAR, power_law_gap_probs

__all__ = ["MQAR", "Task", "masked_accuracy", "power_law_gap_probs", "stack"]

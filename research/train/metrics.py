"""Metrics to `metrics.jsonl` (one JSON object per event, with "step") and TensorBoard."""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any


def truncate_metrics(path: str | pathlib.Path, max_step: int) -> None:
    """Drop records with step > `max_step` (a resumed run re-logs the steps after its checkpoint).
    """
    path = pathlib.Path(path)
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
        if int(rec.get("step", 0)) <= max_step:
            keep.append(line)
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(s + "\n" for s in keep))
    tmp.replace(path)


def read_metrics(path: str | pathlib.Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl (a run folder or the file), in order."""
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


class MetricsWriter:
    """Appends `{"step": s, name: value, ...}` records to `metrics.jsonl` and scalars to
    TensorBoard (`tensorboard/`). Only the writing process (process 0) should create one with
    `enabled=True`; others pass `enabled=False` and every call is a no-op."""

    def __init__(self, workdir: str | pathlib.Path, enabled: bool = True,
                 tensorboard: bool = True):
        self.enabled = enabled
        self.path = pathlib.Path(workdir) / "metrics.jsonl"
        self.tb_dir = pathlib.Path(workdir) / "tensorboard"
        self._file = None
        self._tb = None
        if not enabled:
            return
        self._file = open(self.path, "a", buffering=1)  # noqa: SIM115 - open for the whole run
        if tensorboard:
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(str(self.tb_dir))

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        """Record `metrics` (names like "train/loss", "eval/accuracy") at `step`."""
        if not self.enabled:
            return
        rec = {"step": int(step)}
        for k, v in metrics.items():
            if hasattr(v, "item"):
                v = v.item()
            if isinstance(v, float) and not math.isfinite(v):
                v = str(v)  # JSON has no nan/inf; keep it readable
            rec[k] = v
        self._file.write(json.dumps(rec) + "\n")
        if self._tb is not None:
            for k, v in rec.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, int(step))

    def flush(self) -> None:
        """Flush both sinks."""
        if self._file is not None:
            self._file.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        """Flush and close."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

"""What a sweep file declares: its runs, its figures and what to evaluate after training.

A sweep is a Python file (see `experiments/sweeps/`) that defines, at module level:

    RUNS: list[Run]          the training runs (unique names; each a full research.train Config)
    FIGURES: list[Figure]    the plots made from the results table (x, y, one line per group)
    EVAL_EXAMPLES: int       optional (default 0): after training, score this many held-out
                             examples with `research.probes.evaluate_task`, adding "probe/..."
                             columns (e.g. probe/dfa_accuracy, probe/stale_rate)
    TITLE: str               optional: a heading for results.md (default: the file name)
    compare(rows) -> str     optional: Markdown comparing the results with published findings
                             (used by `--report`, see `research.sweep.report`)

and a module docstring saying what it measures; `load_sweep(path)` reads it into a `Sweep`.
"""

from __future__ import annotations

import dataclasses
import itertools
import pathlib
import re
import runpy
from collections.abc import Mapping, Sequence
from typing import Any

from research.train.config import Config
from research.validation import check_int

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=+-]*$")


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run of a sweep.

    Attributes:
      name: unique within the sweep; the run's folder is WORKDIR/runs/<name> (letters, digits and
        `_ . = + -`).
      config: a `research.train.Config`.
      tags: the values this run varies (columns of the results table and plot groups), e.g.
        {"mixer": "gla", "d_model": 64}.
    """

    name: str
    config: Config
    tags: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(f"name must be letters, digits and _ . = + - (a folder name), "
                             f"got {self.name!r}")
        if not isinstance(self.config, Config):
            raise ValueError(f"config of run {self.name!r} must be a research.train.Config, "
                             f"got {type(self.config).__name__}")
        object.__setattr__(self, "tags", dict(self.tags))


@dataclasses.dataclass(frozen=True)
class Figure:
    """A plot drawn from the results table: `y` against `x`, one line per value of `group`.

    Attributes:
      name: file name stem (WORKDIR/<name>.png).
      x, y: column names (e.g. "state_size", "eval/accuracy").
      group: column whose values make separate lines (None: one line).
      logx: log-scale x axis.
      title: plot title.
      where: only rows whose columns equal these values (e.g. {"task": "mqar"}).
      best_over: tag columns to maximise `y` over (e.g. ("lr",): one point per configuration,
        its best learning rate, as Zoology reports).
    """

    name: str
    x: str
    y: str
    group: str | None = None
    logx: bool = False
    title: str | None = None
    where: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    best_over: tuple[str, ...] = ()

    def __post_init__(self):
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(f"name must be a file name stem, got {self.name!r}")
        object.__setattr__(self, "where", dict(self.where))
        object.__setattr__(self, "best_over", tuple(self.best_over))


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A loaded sweep file (see the module docstring)."""

    name: str
    path: str
    runs: tuple[Run, ...]
    figures: tuple[Figure, ...]
    eval_examples: int = 0
    title: str = ""
    description: str = ""
    compare: Any = None

    def __post_init__(self):
        if not self.runs:
            raise ValueError(f"RUNS of sweep {self.path} must hold at least one Run")
        names = [r.name for r in self.runs]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"RUNS of sweep {self.path} must have unique names; repeated: {dup}")
        check_int("EVAL_EXAMPLES", self.eval_examples, 0)


def load_sweep(path: str | pathlib.Path) -> Sweep:
    """Execute sweep file `path` and collect RUNS, FIGURES, EVAL_EXAMPLES, TITLE, docstring."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"sweep file {str(path)!r} does not exist")
    ns = runpy.run_path(str(path), run_name=f"sweep_{path.stem}")
    if "RUNS" not in ns:
        raise ValueError(f"sweep file {path} must define RUNS (a list of research.sweep.Run)")
    runs, figures = ns["RUNS"], ns.get("FIGURES", [])
    for r in runs:
        if not isinstance(r, Run):
            raise ValueError(f"RUNS in {path} must hold research.sweep.Run, got {type(r).__name__}")
    for f in figures:
        if not isinstance(f, Figure):
            raise ValueError(f"FIGURES in {path} must hold research.sweep.Figure, got "
                             f"{type(f).__name__}")
    return Sweep(name=path.stem, path=str(path), runs=tuple(runs), figures=tuple(figures),
                 eval_examples=ns.get("EVAL_EXAMPLES", 0), title=ns.get("TITLE", path.stem),
                 description=(ns.get("__doc__") or "").strip(), compare=ns.get("compare"))


def with_seeds(runs: Sequence[Run], seeds: Sequence[int]) -> list[Run]:
    """Each run once per seed: named `<name>-s<seed>`, tagged {"seed": seed}, trained with
    `train.seed = seed` (parameter init, training RNG and, unless `data.seed` is set, the data).

    Repeating a point over seeds is what lets a report tell a gap from seed noise (see
    `research.sweep.report.judge_order`).
    """
    seeds = list(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise ValueError(f"seeds must be a non-empty list of ints >= 0, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds!r}")
    out = []
    for run in runs:
        for s in seeds:
            cfg = run.config.replace(train=dataclasses.replace(run.config.train, seed=s))
            out.append(Run(name=f"{run.name}-s{s}", config=cfg, tags={**run.tags, "seed": s}))
    return out


def grid(**axes: Sequence[Any]) -> list[dict[str, Any]]:
    """The product of named value lists, as dicts: grid(a=[1, 2], b="xy") -> 4 dicts."""
    keys = list(axes)
    return [dict(zip(keys, values)) for values in itertools.product(*axes.values())]

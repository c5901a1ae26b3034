"""Results of a sweep: the CSV table, the Markdown report and the figures.

Columns: name, the runs' tags (in first-seen order), then state_size, num_params, step,
train/loss, train/accuracy, eval/loss, eval/accuracy, probe/... columns, wall_time_s, status and
error (where any run failed).
"""

from __future__ import annotations

import csv
import math
import pathlib
from collections.abc import Sequence
from typing import Any

from research.probes import plots

_METRIC_ORDER = ("state_size", "num_params", "step", "train/loss", "train/accuracy",
                 "eval/loss", "eval/accuracy")
_LAST = ("wall_time_s", "status", "error")


def columns(rows: Sequence[dict[str, Any]], tag_names: Sequence[str] = ()) -> list[str]:
    """The table's column order for `rows` (see the module docstring)."""
    seen: list[str] = []
    for r in rows:
        for k in r:
            if k not in seen:
                seen.append(k)
    special = {"name", *_METRIC_ORDER, *_LAST}
    cols = ["name"] + [t for t in dict.fromkeys(tag_names) if t in seen and t not in special]
    cols += [k for k in seen if k not in cols and k not in _METRIC_ORDER and k not in _LAST
             and not k.startswith("probe/")]
    cols += [k for k in _METRIC_ORDER if k in seen]
    cols += [k for k in seen if k.startswith("probe/")]
    cols += [k for k in _LAST if k in seen]
    return cols


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10_000 else str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.1f}" if abs(v) >= 100 else f"{v:.4f}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[dict[str, Any]], cols: Sequence[str]) -> str:
    """A GitHub Markdown table of `rows` over `cols`."""
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    return "\n".join(lines)


def write_csv(rows: Sequence[dict[str, Any]], cols: Sequence[str], path) -> pathlib.Path:
    """Write `rows` as CSV with header `cols`."""
    path = pathlib.Path(path)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(cols), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c) for c in cols})
    return path


def read_csv(path) -> list[dict[str, Any]]:
    """Read a results.csv back, converting numeric cells to int / float."""
    out = []
    with pathlib.Path(path).open(newline="") as f:
        for r in csv.DictReader(f):
            row = {}
            for k, v in r.items():
                if v == "":
                    row[k] = None
                    continue
                try:
                    row[k] = int(v)
                except ValueError:
                    try:
                        row[k] = float(v)
                    except ValueError:
                        row[k] = v
            out.append(row)
    return out


def tag_names(sweep) -> list[str]:
    """Every tag name of the sweep's runs, in first-seen order."""
    return list(dict.fromkeys(t for run in sweep.runs for t in run.tags))


def best_rows(rows: Sequence[dict[str, Any]], y: str, over: Sequence[str],
              tags: Sequence[str]) -> list[dict[str, Any]]:
    """One row per combination of the `tags` not in `over`: the one with the largest `y`
    (rows without a finite y are dropped)."""
    best: dict[tuple, dict] = {}
    for r in rows:
        v = r.get(y)
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            continue
        key = tuple((t, r.get(t)) for t in tags if t not in over)
        if key not in best or v > best[key][y]:
            best[key] = r
    return list(best.values())


def mean_over(rows: Sequence[dict[str, Any]], y: str, over: str,
              tags: Sequence[str]) -> list[dict[str, Any]]:
    """One row per combination of the `tags` other than `over` (e.g. "seed"): the first such
    row with `y` replaced by the mean of its finite values over `over` (rows without a finite
    y are dropped)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        v = r.get(y)
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            continue
        groups.setdefault(tuple((t, r.get(t)) for t in tags if t != over), []).append(r)
    return [{**rs[0], y: sum(r[y] for r in rs) / len(rs)} for rs in groups.values()]


def make_figures(sweep, workdir, rows: Sequence[dict[str, Any]]) -> list[pathlib.Path]:
    """Draw every figure of the sweep from `rows` into WORKDIR/<figure>.png. With a "seed" tag,
    each point is the mean over seeds (of each seed's best run when the figure has
    `best_over`)."""
    paths = []
    tags = tag_names(sweep)
    for fig in sweep.figures:
        sel = [r for r in rows if all(r.get(k) == v for k, v in fig.where.items())]
        if fig.best_over:
            sel = best_rows(sel, fig.y, fig.best_over, tags)
        if "seed" in tags:
            sel = mean_over(sel, fig.y, "seed", [t for t in tags if t not in fig.best_over])
        is_acc = "accuracy" in fig.y
        paths.append(plots.plot_lines(sel, fig.x, fig.y, pathlib.Path(workdir) / f"{fig.name}.png",
                                      group=fig.group, logx=fig.logx,
                                      title=fig.title or sweep.title,
                                      ylim=(0, 1.02) if is_acc else None))
    return paths


def write_results(sweep, workdir, rows: Sequence[dict[str, Any]],
                  command: str | None = None) -> dict[str, pathlib.Path]:
    """Write WORKDIR/results.csv, WORKDIR/results.md and the figures; returns their paths."""
    workdir = pathlib.Path(workdir)
    cols = columns(rows, tag_names(sweep))
    csv_path = write_csv(rows, cols, workdir / "results.csv")
    figs = make_figures(sweep, workdir, rows)
    md = [f"# {sweep.title}", ""]
    if sweep.description:
        md += [sweep.description, ""]
    md += [f"Sweep file: `{sweep.path}`" + (f"; regenerate with `{command}`" if command else ""),
           ""]
    md += [markdown_table(rows, cols), ""]
    for p in figs:
        md += [f"![{p.stem}]({p.name})", ""]
    md_path = workdir / "results.md"
    md_path.write_text("\n".join(md))
    return {"csv": csv_path, "md": md_path, **{p.stem: p for p in figs}}

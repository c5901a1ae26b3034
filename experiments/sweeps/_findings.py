"""Shared pieces of the CPU-scale reproductions of the seeds' findings (copying_cpu, jrt_cpu,
icll_cpu, state_collapse_cpu and their `_tiny` variants). Not a sweep file: it defines no RUNS.

- `model` / `config`: the `state_size_cpu` recipe (2 layers, 2 heads, d_ff = d_model, width-4
  short conv, GLA and RetNet without their output gate, GLA's gates starting slow; AdamW at a
  constant lr after a short warmup, evaluation every `eval_every` steps, stop at a target eval
  accuracy) for any task in `research.tasks`.
- `judge_pairs`: one honest verdict (`research.sweep.report.judge_order`) per pair and key.
- `falls_table`: whether a score falls along an axis (e.g. the copy length), by the same rule.
- `find_workdir`: the sweep folder of the `--report` call that is running `compare(rows)`
  (for comparisons that read probes written beside the runs).

Load it with `runpy.run_path(pathlib.Path(__file__).with_name("_findings.py"))`.
"""

import dataclasses
import inspect
import pathlib

from research import ModelConfig
from research.sweep import task_config
from research.sweep.report import chance_threshold, judge_order, seed_values

# GLA / RetNet as `state_size_cpu` trains them (their swish output gate held them at chance).
EXTRA = {"gla": {"expand_k": 1.0, "init_half_life": 1024.0, "use_output_gate": False},
         "retnet": {"expand_v": 1.0, "use_output_gate": False}}


def model(mixer, d_model, vocab_size, n_layers=2, **fields):
    """A ModelConfig of the CPU recipe: `mixer` at width `d_model` (`fields` override)."""
    return ModelConfig(**{"mixer": mixer, "vocab_size": vocab_size, "d_model": d_model,
                          "n_layers": n_layers, "n_heads": 2, "d_ff": d_model, "conv_size": 4,
                          **EXTRA.get(mixer, {}), **fields})


def config(model_cfg, task, task_args, *, steps, batch_size=32, lr=3e-3, target=0.95,
           eval_every=100, eval_batches=4, **kw):
    """The training config: constant lr after min(50, steps / 4) warmup steps, evaluation every
    `eval_every` steps on `eval_batches` batches, stop once eval accuracy reaches `target` (None: train every step)."""
    cfg = task_config(model_cfg, task, task_args, steps=steps, batch_size=batch_size, lr=lr,
                      warmup_steps=min(50, max(1, steps // 4)), checkpoint_every=steps,
                      eval_batches=eval_batches, **kw)
    train = dataclasses.replace(cfg.train, eval_every=min(eval_every, steps))
    if target is not None:
        train = dataclasses.replace(train, target_accuracy=target, stop_at_target=True)
    return cfg.replace(optimizer=dataclasses.replace(cfg.optimizer, schedule="constant"),
                       train=train)


def _fmt(values):
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.3f}"
    return f"{mean:.3f} ({min(values):.3f}-{max(values):.3f})"


def judge_pairs(rows, pairs, *, chance, y="eval/accuracy", group="mixer", by=None,
                label=None):
    """A Markdown table with one row per (key of `by`, pair (a, b) of `pairs`): the claim
    "a > b" judged by `judge_order` (every seed of both above `chance_threshold(chance)`, >= 2
    seeds, gap beyond the seed spread), cells the seed mean (range). `by` None: one key."""
    thr = chance_threshold(chance)
    key = by or "_all"
    rows = [{**r, "_all": "all"} for r in rows]
    points = seed_values(rows, group, key, y)
    head = f"| {label or by or ''} | claim | higher | lower | verdict | why |"
    lines = [head, "|---|---|---|---|---|---|"]
    for k in sorted(points, key=lambda v: (str(type(v)), v)):
        cell = points[k]
        for a, b in pairs:
            verdict, reasons = judge_order(cell, (a, b), thr)
            lines.append(f"| {k} | {a} > {b} | {_fmt(cell[a]) if cell.get(a) else ''} | "
                         f"{_fmt(cell[b]) if cell.get(b) else ''} | {verdict} | "
                         f"{'; '.join(reasons).replace('|', '/')} |")
    return "\n".join(lines)


def falls_table(rows, axis, *, chance, y="eval/accuracy", group="mixer", models=None):
    """Whether `y` falls as `axis` grows, per model: the claim "y(axis_1) > y(axis_2) > ...",
    judged by `judge_order` over the axis values as if they were models (so each value needs
    >= 2 seeds above chance and each step down must exceed the seed spread). Returns a Markdown
    table, one row per model."""
    thr = chance_threshold(chance)
    values = sorted({r[axis] for r in rows if r.get(axis) is not None})
    names = [str(v) for v in values]
    lines = [f"| {group} | " + " | ".join(f"{axis} {v}" for v in names) +
             f" | falls with {axis} | why |",
             "|" + "---|" * (len(names) + 3)]
    models = models or list(dict.fromkeys(r.get(group) for r in rows))
    for m in models:
        sub = [{**r, axis: str(r[axis])} for r in rows
               if r.get(group) == m and r.get(axis) is not None]
        points = seed_values(sub, axis, group, y).get(m, {})
        if len(names) < 2:
            verdict, reasons = "not resolved", [f"fewer than two values of {axis}"]
        else:
            verdict, reasons = judge_order(points, names, thr)
        cells = [_fmt(points[n]) if points.get(n) else "" for n in names]
        lines.append(f"| {m} | " + " | ".join(cells) +
                     f" | {verdict} | {'; '.join(reasons).replace('|', '/')} |")
    return "\n".join(lines)


def floor_check(rows, model_name, floor, *, axis, y="eval/accuracy", group="mixer"):
    """Whether `model_name` stays >= `floor` at every value of `axis` (e.g. attention at every
    copy length). "holds": >= 2 seeds at every value and every run >= `floor`; "fails": every
    seed >= `floor` at the smallest value (it learned the task) but some larger value has a
    seed mean below `floor` by more than its seed spread; otherwise "not resolved" (too few
    seeds, or the model never reached `floor`, so no fall can be told from not learning).
    Returns (verdict, text)."""
    by = {}
    for r in rows:
        v = r.get(y)
        if r.get(group) == model_name and isinstance(v, float) and r.get(axis) is not None:
            by.setdefault(r[axis], []).append(v)
    if not by:
        return "not resolved", f"no finished run of {model_name}"
    allv = [v for vs in by.values() for v in vs]
    text = (f"{model_name}: `{y}` from {min(allv):.3f} to {max(allv):.3f} over {len(allv)} "
            f"runs")
    few = sorted(k for k, vs in by.items() if len(vs) < 2)
    if few:
        return "not resolved", f"{text}; fewer than 2 seeds at {axis} {few}"
    if min(allv) >= floor:
        return "holds", f"{text} (every run >= {floor})"
    first = min(by)
    if min(by[first]) < floor:
        return "not resolved", (f"{text}; below {floor} already at {axis} {first}, so a fall "
                                "cannot be told from not learning")
    fell = [k for k, vs in by.items()
            if floor - sum(vs) / len(vs) > max(vs) - min(vs)]
    if fell:
        return "fails", f"{text}; falls below {floor} at {axis} {sorted(fell)}"
    return "not resolved", f"{text}; some run below {floor}, within the seed spread"


def find_workdir(default):
    """The sweep folder of the running `--report` call: the `workdir` argument of
    `research.sweep.report.section` (which calls `compare(rows)`), found on the call stack;
    `default` when `compare` is called some other way. (A stopgap: `section` passes only the
    rows to `compare`.)"""
    frame = inspect.currentframe()
    while frame is not None:
        wd = frame.f_locals.get("workdir")
        if wd is not None and (pathlib.Path(wd) / "runs").is_dir():
            return pathlib.Path(wd)
        frame = frame.f_back
    return pathlib.Path(default)


def find_report_dir():
    """The folder of the report being written (the `report_path` argument of `section`), or
    the working directory."""
    frame = inspect.currentframe()
    while frame is not None:
        rp = frame.f_locals.get("report_path")
        if rp is not None:
            return pathlib.Path(rp).absolute().parent
        frame = frame.f_back
    return pathlib.Path.cwd()

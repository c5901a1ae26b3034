"""Run an ablation sweep: `python -m experiments.sweep experiments/sweeps/NAME.py [--workdir DIR]
[--dry-run] [--jobs N]`.

    python -m experiments.sweep experiments/sweeps/state_size_tiny.py
    python -m experiments.sweep experiments/sweeps/decay.py --workdir runs/decay --jobs 2
    python -m experiments.sweep experiments/sweeps/state_size.py --dry-run   # list the runs
    python -m experiments.sweep experiments/sweeps/state_size.py --only gla- --only attention
    python -m experiments.sweep experiments/sweeps/demo.py --report EXPERIMENTS.md

A sweep file defines RUNS (named training configs with tags) and FIGURES (see
`research.sweep.spec`). Every run trains in DIR/runs/<name> (default DIR: runs/sweeps/<NAME>);
finished runs are skipped and interrupted ones resume from their last checkpoint, so rerunning
the same command completes a sweep. At the end it writes DIR/results.csv, DIR/results.md and one
PNG per figure, and prints the table. With --report PATH it also writes the sweep's section of
that Markdown report (table, figures, comparison with published findings; see
`research.sweep.report`), replacing the section an earlier run wrote.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import shlex
import sys


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.sweep",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", help="path of a sweep file, e.g. experiments/sweeps/decay.py")
    p.add_argument("--workdir", default=None, help="sweep folder (default: runs/sweeps/<NAME>)")
    p.add_argument("--dry-run", action="store_true",
                   help="list the runs, their state sizes and status; train nothing")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once (default 1)")
    p.add_argument("--only", action="append", default=None, metavar="SUBSTRING",
                   help="run only the runs whose name contains SUBSTRING (repeatable)")
    p.add_argument("--report", default=None, metavar="PATH",
                   help="also write this sweep's section of a Markdown report, e.g. EXPERIMENTS.md")
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (0 when every run finished)."""
    args = _parser().parse_args(argv)
    from research.sweep import describe, load_sweep, markdown_table, run_sweep
    from research.sweep.results import columns
    try:
        sweep = load_sweep(args.sweep)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.only:
        runs = tuple(r for r in sweep.runs if any(o in r.name for o in args.only))
        if not runs:
            print(f"error: no run name contains any of {args.only}; runs: "
                  f"{[r.name for r in sweep.runs]}", file=sys.stderr)
            return 2
        sweep = dataclasses.replace(sweep, runs=runs)
    if args.jobs < 1:
        print(f"error: --jobs must be >= 1, got {args.jobs}", file=sys.stderr)
        return 2
    workdir = pathlib.Path(args.workdir or f"runs/sweeps/{sweep.name}")
    if args.dry_run:
        rows = describe(sweep, workdir)
        print(f"sweep {sweep.name}: {len(rows)} runs -> {workdir}")
        tags = [t for r in sweep.runs for t in r.tags]
        print(markdown_table(rows, columns(rows, tags)))
        return 0
    parts = [args.sweep] + (["--workdir", args.workdir] if args.workdir else [])
    for o in args.only or []:
        parts += ["--only", o]
    command = "python -m experiments.sweep " + " ".join(shlex.quote(a) for a in parts)
    rows = run_sweep(sweep, workdir, jobs=args.jobs, command=command)
    if args.report:
        from research.sweep.report import section, update_report
        report_cmd = f"{command} --report {shlex.quote(args.report)}"
        update_report(args.report, section(sweep, workdir, rows, args.report, report_cmd,
                                           sweep.compare), sweep.name)
        print(f"updated {args.report} (section {sweep.name})")
    tags = [t for r in sweep.runs for t in r.tags]
    print(markdown_table(rows, columns(rows, list(dict.fromkeys(tags)))))
    print(f"\nwrote {workdir / 'results.csv'}, {workdir / 'results.md'} and "
          f"{', '.join(str(workdir / (f.name + '.png')) for f in sweep.figures)}")
    failed = [r["name"] for r in rows if r.get("status") != "done"]
    if failed:
        print(f"unfinished runs: {failed}; rerun the same command to retry them",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Probe a trained run: `python -m experiments.probe --workdir RUN [--probe NAME ...]`.

    python -m experiments.probe --workdir runs/mqar-tiny
    python -m experiments.probe --workdir runs/mqar-tiny --probe length --probe decay
    python -m experiments.probe --workdir runs/mqar-tiny --factors 1,2,4 --num-examples 64

Loads the newest readable checkpoint of RUN (or --step), evaluates the probes (default: all that
apply to the run's task; see `research.probes.runner`) on held-out examples and writes
RUN/probes/<probe>.json, RUN/probes/<probe>.png and RUN/probes/summary.json.
Probes: task, length, kv_pairs, passkey, decay, state_norm.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.probe",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="the run's folder (holds config.json)")
    p.add_argument("--probe", action="append", default=None, metavar="NAME",
                   help="probe to run (repeatable); default: every applicable probe")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
    p.add_argument("--out", default=None, help="output folder (default: RUN/probes)")
    p.add_argument("--num-examples", type=int, default=128, help="examples per evaluation point")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--factors", default="1,2,4,8,16",
                   help="length-extrapolation factors, comma-separated (default 1,2,4,8,16)")
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    workdir = pathlib.Path(args.workdir)
    if not (workdir / "config.json").exists():
        print(f"error: --workdir {workdir} holds no config.json (not a training run)",
              file=sys.stderr)
        return 2
    from research.probes import PROBES, ProbeSettings, run_probes
    from research.train.trainer import restore_model
    try:
        factors = tuple(float(f) for f in args.factors.split(",") if f)
        settings = ProbeSettings(num_examples=args.num_examples, batch_size=args.batch_size,
                                 factors=factors)
        for name in args.probe or []:
            if name not in PROBES:
                raise ValueError(f"--probe must be one of {PROBES}, got {name!r}")
        model, config, step = restore_model(workdir, args.step)
        out = pathlib.Path(args.out) if args.out else workdir / "probes"
        results = run_probes(model, config, out, names=args.probe, settings=settings)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = json.loads((out / "summary.json").read_text())
    print(f"probed {workdir} at step {step}: {', '.join(results)}")
    for k, v in summary.items():
        print(f"  {k}: {v:.4f}" if isinstance(v, float) else f"  {k}: {v}")
    print(f"wrote {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())

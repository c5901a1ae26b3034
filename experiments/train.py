"""Train a model: `python -m experiments.train --preset NAME [--workdir DIR] [key=value ...]`.

    python -m experiments.train --preset mqar-tiny
    python -m experiments.train --preset mqar-tiny model.mixer=deltanet train.steps=2000
    python -m experiments.train --preset shakespeare-byte --workdir runs/bard mesh.fsdp=4
    python -m experiments.train --list-keys --preset mqar-tiny     # every key and its value

Writes DIR/config.json, DIR/metrics.jsonl, DIR/tensorboard/, DIR/checkpoints/ (default DIR:
runs/<preset>); rerunning the same command resumes. The logic lives in `research.train.run`.
Multi-host: pass --coordinator-address/--num-processes/--process-id (or set
JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID), or --distributed on a managed cluster.
"""

from __future__ import annotations

import argparse
import json
import sys


def _parser() -> argparse.ArgumentParser:
    from research.train.config import PRESETS
    p = argparse.ArgumentParser(
        prog="python -m experiments.train", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"presets: {', '.join(sorted(PRESETS))}")
    p.add_argument("--preset", default="mqar-tiny", help="named config (default: mqar-tiny)")
    p.add_argument("--workdir", default=None, help="output folder (default: runs/<preset>)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted config overrides, e.g. model.mixer=deltanet train.steps=500")
    p.add_argument("--list-keys", action="store_true", help="print every key=value and exit")
    p.add_argument("--coordinator-address", default=None, help="host:port of process 0")
    p.add_argument("--num-processes", type=int, default=None)
    p.add_argument("--process-id", type=int, default=None)
    p.add_argument("--distributed", action="store_true",
                   help="call jax.distributed.initialize() with cluster auto-detection")
    return p


def _flatten(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict) and not (prefix.startswith("data.") and k == "task_args"):
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (0: trained or stopped by a signal and saved)."""
    args = _parser().parse_intermixed_args(argv)
    # jax.distributed must start before anything touches a device
    from research.train.distributed import initialize
    try:
        initialize(args.coordinator_address, args.num_processes, args.process_id,
                   auto=args.distributed)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    import jax

    from research.train import TrainingDiverged, config_to_dict, get_preset, run
    try:
        config = get_preset(args.preset).override(*args.overrides)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.list_keys:
        for key, value in _flatten(config_to_dict(config)):
            print(f"{key}={json.dumps(value)}")
        return 0
    workdir = args.workdir or f"runs/{args.preset}"
    try:
        summary = run(config, workdir, preset=args.preset)
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if jax.process_index() != 0:
        return 0
    if summary["interrupted"]:
        print(f"stopped by {summary['interrupted']} at step {summary['step']}/"
              f"{summary['steps']}; checkpoint saved in {summary['checkpoints']}; rerun the same "
              "command to resume.")
        return 0
    acc, loss = summary["eval/accuracy"], summary["eval/loss"]
    final = summary["final_loss"]
    print(f"done: {summary['step']} steps in {summary['wall_time_s']:.0f} s; final train loss "
          f"{'n/a' if final is None else f'{final:.4f}'}; eval loss {loss:.4f}, eval accuracy "
          f"{acc:.4f}")
    if summary["target_accuracy"] is not None:
        verdict = "reached" if summary["reached_target"] else "did NOT reach"
        print(f"eval accuracy {acc:.4f} {verdict} the target {summary['target_accuracy']}")
    print(f"outputs: config {summary['config']}\n"
          f"         metrics {summary['metrics']}\n"
          f"         tensorboard {summary['tensorboard']}  (tensorboard --logdir "
          f"{summary['tensorboard']})\n"
          f"         checkpoints {summary['checkpoints']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

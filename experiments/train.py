"""Train a model: `python -m experiments.train --preset NAME [--config FILE] [--workdir DIR]
[key=value ...]`.

    python -m experiments.train --preset mqar-tiny
    python -m experiments.train --preset mqar-tiny model.mixer=deltanet train.steps=2000
    python -m experiments.train --preset shakespeare-byte --workdir runs/bard mesh.fsdp=4
    python -m experiments.train --config my.yaml train.seed=1  # a YAML/JSON file over the preset
    python -m experiments.train --list-keys --preset mqar-tiny     # every key and its value

The config is the preset, then the --config file (any subset of the keys), then the
`section.field=value` overrides (OmegaConf dot-list syntax). Writes DIR/config.json,
DIR/metrics.jsonl, DIR/tensorboard/, DIR/checkpoints/ (default DIR: runs/<preset>); rerunning the
same command resumes. One run holds DIR at a time: a second one exits at once naming the holder's
pid. The logic lives in `research.train.run`. Multi-host: pass
--coordinator-address/--num-processes/--process-id (or set
JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID), or --distributed on a managed cluster.

Exit status: 0 trained (or stopped by a signal, saved); 1 the loss diverged; 2 a bad config or
argument; 3 the workdir is in use by another run.
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
    p.add_argument("--config", default=None, metavar="FILE",
                   help="YAML or JSON config file merged over the preset (e.g. a run's "
                        "config.json)")
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

    from research.train import (
        TrainingDiverged,
        WorkdirBusy,
        config_items,
        get_preset,
        load_config,
        run,
    )
    try:
        config = get_preset(args.preset)
        if args.config is not None:
            config = load_config(args.config, base=config)
        config = config.override(*args.overrides)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.list_keys:
        for key, value in config_items(config):
            print(f"{key}={json.dumps(value)}")
        return 0
    workdir = args.workdir or f"runs/{args.preset}"
    try:
        summary = run(config, workdir, preset=args.preset)
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except WorkdirBusy as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
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

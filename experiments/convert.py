"""Transformer-to-RNN conversion (T2R; the finetuning setting of the GSA paper): start a recurrent
run from a trained attention run.

    python -m experiments.convert --from runs/attn --to-mixer gsa --workdir runs/attn2gsa
    python -m experiments.convert --from runs/attn --to-mixer gla --workdir runs/attn2gla \\
        train.steps=2000 optimizer.lr=1e-4                 # any overrides of the new run's config
    python -m experiments.train --config runs/attn2gsa/config.json --workdir runs/attn2gsa

The new model is the source model with every attention layer (`attention`,
`sliding_window_attention`, `attention_layers`) replaced by `--to-mixer`. Its parameters:

- everything outside the replaced mixers (embedding, norms, MLPs, head, the other layers' mixers)
  is copied bit-exactly from the source checkpoint;
- inside a replaced mixer, every parameter whose name and shape match the attention layer's
  (q_proj, k_proj, v_proj, o_proj, g_proj, the short conv over q|k|v) is copied; the rest (gates,
  output norms, ...) keeps the new mixer's initialisation.

NEW gets `config.json` and a step-0 checkpoint (parameters, a fresh optimizer state and data
iterator), so `experiments.train --config NEW/config.json --workdir NEW` trains it like any run
(and resumes it), plus `convert.json` listing what was copied and what was initialised.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
from typing import Any

ATTENTION = ("attention", "sliding_window_attention")


def converted_model_config(model_cfg, to_mixer: str):
    """The source ModelConfig with every attention layer replaced by `to_mixer`; also returns the
    indices of the replaced layers."""
    from research import MIXERS
    if to_mixer not in MIXERS or to_mixer in ATTENTION:
        raise ValueError(f"--to-mixer must be a recurrent mixer, one of "
                         f"{[m for m in MIXERS if m not in ATTENTION]}, got {to_mixer!r}")
    layers = model_cfg.layer_mixers()
    replaced = [i for i, m in enumerate(layers) if m in ATTENTION]
    if not replaced:
        raise ValueError(f"the source model has no attention layer to convert (layers {layers})")
    pattern = model_cfg.layer_pattern
    if pattern is not None:
        pattern = tuple(to_mixer if m in ATTENTION else m for m in pattern)
    mixer = to_mixer if model_cfg.mixer in ATTENTION else model_cfg.mixer
    new = model_cfg.replace(mixer=mixer, layer_pattern=pattern, attention_layers=())
    assert all(new.layer_mixers()[i] == to_mixer for i in replaced)
    return new, replaced


def convert_params(src: dict, dst: dict, replaced: list[int]) -> tuple[dict, list[str], list[str]]:
    """Copy the source parameters (pure dicts, as `nnx.to_pure_dict` gives) into the new model's.

    Returns (params, copied paths, initialised paths). Raises ValueError when a parameter outside
    the replaced mixers has no source of the same shape (e.g. an override changed d_model).
    """
    import numpy as np
    from flax import traverse_util

    flat_src = traverse_util.flatten_dict(src)
    flat_dst = traverse_util.flatten_dict(dst)
    out, copied, fresh = {}, [], []
    for path, value in flat_dst.items():
        name = ".".join(map(str, path))
        in_replaced = len(path) > 2 and path[0] == "blocks" and int(path[1]) in replaced \
            and path[2] == "mixer"
        old = flat_src.get(path)
        if old is not None and tuple(np.shape(old)) == tuple(np.shape(value)):
            out[path] = old
            copied.append(name)
        elif in_replaced:
            out[path] = value
            fresh.append(name)
        else:
            raise ValueError(f"parameter {name} {tuple(np.shape(value))} has no source of that "
                             f"shape ({'missing' if old is None else tuple(np.shape(old))}); "
                             "convert keeps every size outside the attention layers")
    return traverse_util.unflatten_dict(out), copied, fresh


def convert(source: str | pathlib.Path, to_mixer: str, workdir: str | pathlib.Path,
            overrides: tuple[str, ...] = (), step: int | None = None) -> dict[str, Any]:
    """Write the converted run into `workdir` (see the module docstring); returns the record
    also written to `workdir/convert.json`."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    import research
    from research.data.loader import train_dataset
    from research.data.sources import build_sources
    from research.train import Checkpointer, make_mesh, restore_model, save_config
    from research.train import trainer as tr

    workdir = pathlib.Path(workdir)
    ckpts = workdir / "checkpoints"
    if ckpts.exists() and any(ckpts.iterdir()):
        raise ValueError(f"--workdir {workdir} already holds checkpoints; converting would "
                         "overwrite a run (use a new folder, or train it with experiments.train)")
    src_model, src_cfg, src_step = restore_model(source, step)
    new_model_cfg, replaced = converted_model_config(src_cfg.model, to_mixer)
    cfg = dataclasses.replace(src_cfg, model=new_model_cfg).override(*overrides)
    src_params = nnx.to_pure_dict(nnx.state(src_model, nnx.Param))
    new_model = research.LanguageModel(cfg.model, rngs=nnx.Rngs(cfg.train.seed))
    init_params = nnx.to_pure_dict(nnx.state(new_model, nnx.Param))
    params, copied, fresh = convert_params(src_params, init_params, replaced)

    mesh = make_mesh(1, 1)
    with jax.set_mesh(mesh):
        setup = tr._setup(cfg.replace(mesh=dataclasses.replace(cfg.mesh, data=1, fsdp=1)), mesh)
        state = setup.init_state()
        template = state["params"]
        params = jax.tree.map(lambda t, p: jnp.asarray(p, t.dtype), template, params)
        state = {**state, "params": params, "opt_state": setup.optimizer.init(params)}
        state = jax.tree.unflatten(jax.tree.structure(setup.abstract_state),
                                   jax.tree.leaves(state))

    data_seed = cfg.data.seed if cfg.data.seed is not None else cfg.train.seed
    train_source, _ = build_sources(cfg.data, data_seed)
    data_state = iter(train_dataset(train_source, batch_size=cfg.data.batch_size, seed=data_seed,
                                    shuffle=cfg.data.shuffle)).get_state()
    workdir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, workdir / "config.json")
    ckpt = Checkpointer(ckpts, keep=cfg.checkpoint.keep, async_save=False)
    try:
        ckpt.save(0, state, data_state, {"step": 0, "converted_from": str(source)}, wait=True)
    finally:
        ckpt.close()
    record = {"from": str(pathlib.Path(source).absolute()), "from_step": src_step,
              "to_mixer": to_mixer, "replaced_layers": replaced, "copied": copied,
              "initialised": fresh, "overrides": list(overrides)}
    (workdir / "convert.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (0 converted, 2 a bad argument)."""
    p = argparse.ArgumentParser(prog="python -m experiments.convert",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="source", required=True, help="the trained attention run")
    p.add_argument("--to-mixer", required=True, help="recurrent mixer replacing attention")
    p.add_argument("--workdir", required=True, help="the new run's folder")
    p.add_argument("--step", type=int, default=None, help="source checkpoint (default: newest)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="overrides of the new run's config, e.g. train.steps=2000")
    args = p.parse_intermixed_args(argv)
    try:
        rec = convert(args.source, args.to_mixer, args.workdir, tuple(args.overrides), args.step)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"converted {rec['from']} (step {rec['from_step']}) -> {args.workdir}: layers "
          f"{rec['replaced_layers']} are {args.to_mixer}; {len(rec['copied'])} parameters copied, "
          f"{len(rec['initialised'])} initialised ({', '.join(rec['initialised']) or 'none'})\n"
          f"train it: python -m experiments.train --config {args.workdir}/config.json "
          f"--workdir {args.workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

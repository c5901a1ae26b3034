"""Ahead-of-time compilation of the trainer's step for a TPU slice, on a machine with no TPU.

    python -m experiments.aot_compile --topology v5p-8 --preset gla-340m --seq-len 2048 \\
        --per-chip-batch 4 --mesh fsdp=8 [model.remat=true model.impl=pallas ...]

Like MaxText's `train_compile`: the step is `research.train.trainer`'s own train step (built by
its `_setup` and `_make_steps`, not a copy), lowered from abstract shapes
(`jax.ShapeDtypeStruct` with shardings over the abstract chips of
`jax.experimental.topologies.get_topology_desc`) and compiled by libtpu's compiler (the real Mosaic
compiler for the Pallas kernels). Nothing is executed. It prints the per-chip memory (arguments,
temporaries, outputs), whether it fits the chip's HBM, and the FLOPs per step, writes a JSON
record (`--out`) and, with `--write BENCHMARKS.md`, puts the row into that file's AOT section
(between its begin/end markers; the rest of the file is kept).

Needs libtpu (`pip install -e '.[tpu-aot]'`). The process sets `JAX_PLATFORMS=cpu` and
`ALLOW_MULTIPLE_LIBTPU_LOAD=1` itself before jax starts (without the second, libtpu holds a
lockfile across processes).

Defaults: bf16 compute (`model.dtype=bfloat16`, `train.compute_dtype=bfloat16`), AdamW, the
batch [per-chip-batch x chips, seq-len] int32 tokens / targets, bool loss mask and int32 segment
ids (as the packed text pipeline gives; `--no-segment-ids` leaves them out). For the large
presets (`*-340m`, `*-1.3b`) also `LARGE_PRESET_TRAIN`: the chunked cross-entropy
(`train.loss_chunk_size=512`) and `train.remat_policy=save_dots_and_kernels` (the table's remat
column names them). `--topology` takes a
name from `TOPOLOGIES` (e.g. `v5p-8`: 8 chips, `v5p:2x2x2`) or a raw `get_topology_desc` string
such as `v5p:2x2x4` or `v5e:2x2`. `--mesh` names the mesh axes `data`, `fsdp`, `sequence`,
`tensor` (`fsdp=2,sequence=4`); `data` defaults to the chips left over.
"""

from __future__ import annotations

import os

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["ALLOW_MULTIPLE_LIBTPU_LOAD"] = "1"

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import pathlib  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from typing import Any  # noqa: E402

GIB = 1024 ** 3
# HBM per chip (GiB).
HBM_GIB = {"v4": 32.0, "v5e": 16.0, "v5p": 95.0, "v6e": 32.0}
# Slice names -> get_topology_desc layouts (the chip count is the product of the layout).
TOPOLOGIES = {
    "v4-8": "v4:2x2x2", "v4-16": "v4:2x2x4", "v4-32": "v4:2x4x4",
    "v5p-8": "v5p:2x2x2", "v5p-16": "v5p:2x2x4", "v5p-32": "v5p:2x4x4", "v5p-64": "v5p:4x4x4",
    "v5e-1": "v5e:2x2/1", "v5e-4": "v5e:2x2", "v5e-8": "v5e:2x4", "v5e-16": "v5e:4x4",
    "v6e-1": "v6e:2x2/1", "v6e-4": "v6e:2x2", "v6e-8": "v6e:2x4", "v6e-16": "v6e:4x4",
}
MESH_KEYS = ("data", "fsdp", "sequence", "tensor")
SECTION_BEGIN = "<!-- aot_compile:begin -->"
SECTION_END = "<!-- aot_compile:end -->"
TABLE_HEADER = ("| model | topology | mesh | tokens/chip | impl | remat | args GiB | temps GiB | "
                "outputs GiB | total GiB | fits | TFLOP/chip/step | compile s | command |\n"
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def resolve_topology(name: str) -> tuple[str, str, int | None]:
    """(get_topology_desc string, chip generation, chips to use or None for all) for `name`.

    A raw layout may end in `/N` to take the first N chips (one v5e chip: `v5e:2x2/1`)."""
    raw = TOPOLOGIES.get(name, name)
    m = re.fullmatch(r"(v4|v5e|v5p|v6e):(\d+(?:x\d+)+)(?:/(\d+))?", raw)
    if m is None:
        raise ValueError(f"topology must be one of {sorted(TOPOLOGIES)} or a layout like "
                         f"'v5p:2x2x2' (generations {sorted(HBM_GIB)}), got {name!r}")
    take = int(m.group(3)) if m.group(3) else None
    return f"{m.group(1)}:{m.group(2)}", m.group(1), take


def parse_mesh(text: str) -> dict[str, int]:
    """'fsdp=2,sequence=4' -> {"data": -1, "fsdp": 2, "sequence": 4, "tensor": 1}."""
    out = {"data": -1, "fsdp": 1, "sequence": 1, "tensor": 1}
    for item in filter(None, (p.strip() for p in text.replace(" ", ",").split(","))):
        key, _, value = item.partition("=")
        if key not in MESH_KEYS or not value.lstrip("-").isdigit():
            raise ValueError(f"--mesh items must look like AXIS=INT with AXIS in {MESH_KEYS}, got "
                             f"{item!r}")
        out[key] = int(value)
    return out


# Memory settings of the trainer for the large model presets (research.PRESETS names ending in
# these): the cross-entropy over chunks of 512 positions (the [B, T, vocab] float32 logits are
# the largest buffers otherwise) and blocks that keep only matmul and Pallas-kernel outputs for
# the backward. Overrides (`train.loss_chunk_size=0 train.remat_policy=none`) turn them off.
LARGE_PRESET_SUFFIXES = ("-340m", "-1.3b")
LARGE_PRESET_TRAIN = {"loss_chunk_size": 512, "remat_policy": "save_dots_and_kernels"}


def build_config(preset: str, seq_len: int, batch_size: int, overrides: Sequence[str],
                 mesh_shape: dict[str, int]):
    """The training Config: model preset `preset` (research.PRESETS) in bf16, the batch, the mesh
    sizes (with `LARGE_PRESET_TRAIN` for the large presets), then `overrides`
    (section.field=value)."""
    import dataclasses

    import research
    from research.train.config import Config, DataConfig, MeshConfig, TrainConfig
    model = research.get_preset(preset).replace(dtype="bfloat16")
    fields = {f.name for f in dataclasses.fields(MeshConfig)}
    mesh_kw = {k: v for k, v in mesh_shape.items() if k in fields}
    large = LARGE_PRESET_TRAIN if preset.endswith(LARGE_PRESET_SUFFIXES) else {}
    cfg = Config(model=model, data=DataConfig(seq_len=seq_len, batch_size=batch_size),
                 train=TrainConfig(steps=1000, compute_dtype="bfloat16", progress=False, **large),
                 mesh=MeshConfig(**mesh_kw))
    return cfg.override(*overrides) if overrides else cfg


def abstract_batch(batch_size: int, seq_len: int, segment_ids: bool = True) -> dict[str, Any]:
    """ShapeDtypeStructs of one training batch [B, L] (the loader's dtypes)."""
    import jax
    import jax.numpy as jnp
    batch = {"tokens": jax.ShapeDtypeStruct((batch_size, seq_len), jnp.int32),
             "targets": jax.ShapeDtypeStruct((batch_size, seq_len), jnp.int32),
             "loss_mask": jax.ShapeDtypeStruct((batch_size, seq_len), jnp.bool_)}
    if segment_ids:
        batch["segment_ids"] = jax.ShapeDtypeStruct((batch_size, seq_len), jnp.int32)
    return batch


def compile_train_step(config, mesh, batch: dict[str, Any]):
    """Lower and compile the trainer's train step for `config` on `mesh` (any devices, abstract
    TPU chips included) from abstract shapes; returns the `jax.stages.Compiled`."""
    import jax

    from research.train import trainer
    from research.train.sharding import batch_sharding
    with jax.set_mesh(mesh):
        setup = trainer._setup(config, mesh)
        train_jit, _ = trainer._make_steps(config, setup, batch)
        sharded = {k: jax.ShapeDtypeStruct(v.shape, v.dtype,
                                           sharding=batch_sharding(mesh, len(v.shape)))
                   for k, v in batch.items()}
        abstract_rest = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
            setup.rest)
        lowered = train_jit.lower(setup.abstract_state, abstract_rest, sharded)
    return lowered.compile()


def analyse(compiled, n_chips: int, hbm_gib: float) -> dict[str, Any]:
    """Per-chip memory (GiB), whether it fits `hbm_gib`, and FLOPs of the compiled step."""
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    args = mem.argument_size_in_bytes / GIB
    temps = mem.temp_size_in_bytes / GIB
    outs = mem.output_size_in_bytes / GIB
    alias = mem.alias_size_in_bytes / GIB
    total = args + temps + outs - alias
    flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
    try:
        kernels = compiled.as_text().count("tpu_custom_call")
    except Exception:  # noqa: BLE001 - informational only
        kernels = -1
    return {"mosaic_kernel_calls": kernels,
            "arguments_gib": args, "temporaries_gib": temps, "outputs_gib": outs,
            "aliased_gib": alias, "total_gib": total, "hbm_gib": hbm_gib,
            "fits": bool(total <= hbm_gib),
            "generated_code_gib": getattr(mem, "generated_code_size_in_bytes", 0) / GIB,
            "flops_per_chip": flops, "flops_per_step": flops * n_chips, "chips": n_chips}


def table_row(rec: dict[str, Any]) -> str:
    """One markdown row of the AOT table for a JSON record of `main`."""
    mesh = "x".join(f"{k}={v}" for k, v in rec["mesh"].items() if v != 1) or "1 chip"
    remat = str(rec["remat"])
    if not rec["remat"] and rec.get("remat_policy", "none") != "none":
        remat += f"; {rec['remat_policy']}"
    if rec.get("loss_chunk_size"):
        remat += f"; loss chunk {rec['loss_chunk_size']}"
    fits = "yes" if rec["fits"] else "**no**"
    return (f"| {rec['preset']} | {rec['topology']} | {mesh} | "
            f"{rec['per_chip_batch']} x {rec['seq_len']} | {rec['impl']} | {remat} | "
            f"{rec['arguments_gib']:.2f} | {rec['temporaries_gib']:.2f} | "
            f"{rec['outputs_gib']:.2f} | {rec['total_gib']:.2f} | {fits} of {rec['hbm_gib']:g} | "
            f"{rec['flops_per_chip'] / 1e12:.1f} | {rec['compile_s']:.0f} | "
            f"`{rec['command']}` |")


def write_section(path: pathlib.Path, rec: dict[str, Any]) -> None:
    """Add (or replace, for the same command) `rec`'s row in the AOT section of `path`, between
    SECTION_BEGIN and SECTION_END; text outside the markers is left as it is (the section is
    appended to the file when it has none)."""
    text = path.read_text() if path.exists() else ""
    row = table_row(rec)
    key = row.rsplit("| `", 1)[1]
    rows: list[str] = []
    if SECTION_BEGIN in text and SECTION_END in text:
        head, rest = text.split(SECTION_BEGIN, 1)
        body, tail = rest.split(SECTION_END, 1)
        rows = [ln for ln in body.splitlines() if ln.startswith("| ") and "| `" in ln
                and not ln.startswith("| model |")]
    else:
        head, tail = (text.rstrip("\n") + "\n\n" if text else ""), "\n"
    rows = [r for r in rows if r.rsplit("| `", 1)[1] != key] + [row]
    section = (f"{SECTION_BEGIN}\n## Training step memory on TPU slices (ahead-of-time "
               f"compilation)\n\nGenerated by `python -m experiments.aot_compile ... --write "
               f"BENCHMARKS.md` (one row per command; do not edit by hand). Compiled on a CPU "
               f"host for abstract TPU chips (libtpu {rec.get('libtpu', '?')}, jax "
               f"{rec.get('jax', '?')}), nothing executed. Per chip: arguments (parameters, "
               f"AdamW state, batch), temporaries, outputs; total = arguments + temporaries + "
               f"outputs - donated (aliased) buffers, against the chip's HBM. FLOPs: XLA's cost "
               f"analysis per chip (a Pallas kernel counts as its inputs and outputs only, so "
               f"pallas rows undercount, and a loop body, e.g. the chunked loss's scan, counts "
               f"once). Compile s: on 2 busy CPU cores.\n\n"
               f"{TABLE_HEADER}\n" + "\n".join(rows) + f"\n{SECTION_END}")
    path.write_text(head + section + tail)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m experiments.aot_compile",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--topology", required=True, help="slice name (v5p-8) or layout (v5p:2x2x2)")
    p.add_argument("--preset", required=True, help="model preset in research.PRESETS")
    p.add_argument("--seq-len", type=int, required=True)
    p.add_argument("--per-chip-batch", type=int, required=True,
                   help="sequences per chip (global batch = this x chips / sequence x tensor)")
    p.add_argument("--mesh", default="", help="e.g. fsdp=8 or fsdp=2,sequence=4")
    p.add_argument("--no-segment-ids", action="store_true",
                   help="compile without segment_ids in the batch")
    p.add_argument("--out", default=None, help="JSON record (default runs/aot/<name>.json)")
    p.add_argument("--write", default=None, metavar="BENCHMARKS.md",
                   help="put the row into this markdown file's AOT section")
    p.add_argument("overrides", nargs="*", help="config overrides section.field=value")
    args = p.parse_args(argv)
    if args.seq_len < 2 or args.per_chip_batch < 1:
        p.error(f"--seq-len must be >= 2 and --per-chip-batch >= 1, got {args.seq_len}, "
                f"{args.per_chip_batch}")
    topo_name, gen, take = resolve_topology(args.topology)
    mesh_shape = parse_mesh(args.mesh)

    import jax
    from jax.experimental import topologies

    import research  # noqa: F401 - registers the model presets
    from research.train.sharding import make_mesh, resolve_mesh_shape

    if args.preset not in research.PRESETS:
        p.error(f"--preset must be one of {sorted(research.PRESETS)}, got {args.preset!r}")
    topo = topologies.get_topology_desc(topo_name, platform="tpu")
    devices = list(topo.devices)[:take] if take else list(topo.devices)
    n = len(devices)
    data, fsdp = resolve_mesh_shape(mesh_shape["data"], mesh_shape["fsdp"], n,
                                    sequence=mesh_shape["sequence"], tensor=mesh_shape["tensor"])
    mesh_shape["data"] = data
    if math.prod(mesh_shape.values()) != n:
        raise ValueError(f"--mesh {mesh_shape} uses {math.prod(mesh_shape.values())} of the {n} "
                         f"chips of {args.topology}: use them all")
    # a sequence (or tensor) group shares its sequences: the batch is split over data x fsdp
    batch_size = args.per_chip_batch * data * fsdp
    mesh = make_mesh(data, fsdp, sequence=mesh_shape["sequence"], tensor=mesh_shape["tensor"],
                     devices=devices)
    config = build_config(args.preset, args.seq_len, batch_size, args.overrides, mesh_shape)
    batch = abstract_batch(batch_size, args.seq_len, not args.no_segment_ids)
    command = " ".join(["python -m experiments.aot_compile", *(argv if argv is not None
                                                               else sys.argv[1:])])
    command = re.sub(r" --(write|out)[ =]\S+", "", command)
    print(f"aot_compile: {args.preset} on {args.topology} ({topo_name}, {n} chips, "
          f"{devices[0].device_kind}), mesh {dict(mesh.shape)}, batch {batch_size} x "
          f"{args.seq_len}, impl={config.model.impl}, remat={config.model.remat}, "
          f"train.remat_policy={config.train.remat_policy}, "
          f"train.loss_chunk_size={config.train.loss_chunk_size}", flush=True)
    t0 = time.time()
    compiled = compile_train_step(config, mesh, batch)
    compile_s = time.time() - t0
    rec = {"preset": args.preset, "topology": args.topology, "layout": topo_name,
           "mesh": dict(mesh.shape), "seq_len": args.seq_len,
           "per_chip_batch": args.per_chip_batch, "global_batch": batch_size,
           "impl": config.model.impl, "remat": config.model.remat,
           "remat_policy": config.train.remat_policy,
           "loss_chunk_size": config.train.loss_chunk_size,
           "segment_ids": not args.no_segment_ids, "overrides": list(args.overrides),
           "compile_s": compile_s, "command": command, "jax": jax.__version__,
           "libtpu": _libtpu_version(),
           "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")}
    rec.update(analyse(compiled, n, HBM_GIB[gen]))
    print(f"  per chip: arguments {_gib(rec['arguments_gib'])}, temporaries "
          f"{_gib(rec['temporaries_gib'])}, outputs {_gib(rec['outputs_gib'])} (aliased "
          f"{_gib(rec['aliased_gib'])}); total {_gib(rec['total_gib'])} of "
          f"{rec['hbm_gib']:g} GiB HBM: {'fits' if rec['fits'] else 'DOES NOT FIT'}\n"
          f"  FLOPs per step: {rec['flops_per_chip']:.4g} per chip, "
          f"{rec['flops_per_step']:.4g} over {n} chips\n"
          f"  Mosaic kernel calls in the program: {rec['mosaic_kernel_calls']}; compile time "
          f"{compile_s:.0f} s", flush=True)
    out = pathlib.Path(args.out) if args.out else pathlib.Path("runs/aot") / (
        f"{args.preset}-{args.topology.replace(':', '_').replace('/', '_')}-"
        f"{'-'.join(f'{k}{v}' for k, v in mesh.shape.items())}-{args.per_chip_batch}x"
        f"{args.seq_len}-{config.model.impl}-remat{int(config.model.remat)}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rec, indent=2) + "\n")
    print(f"  record: {out.absolute()}", flush=True)
    if args.write:
        write_section(pathlib.Path(args.write), rec)
        print(f"  table row: {pathlib.Path(args.write).absolute()}", flush=True)
    return rec


def _gib(x: float) -> str:
    return f"{x:.2f} GiB" if x >= 0.1 else f"{x * 1024:.2f} MiB"


def _libtpu_version() -> str:
    try:
        from importlib.metadata import version
        return version("libtpu")
    except Exception:  # noqa: BLE001 - informational only
        return "?"


if __name__ == "__main__":
    main()

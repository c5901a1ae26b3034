"""The prepared GPU run: correctness and speed of every op on one GPU, beside FLA and jla.

One command, meant for a GPU machine lent for a few minutes (jax[cuda] and torch already there):

    python -m experiments.gpu_check --out DIR              # or: experiments/gpu_check.sh --out DIR
    python -m experiments.gpu_check --out DIR --only fla   # a rerun of the parts that did not finish
    python -m experiments.gpu_check --render DIR --write BENCHMARKS.md   # later, on any machine
    python -m experiments.gpu_check --dry-run --out DIR    # the same pipeline on CPU, tiny shapes

It runs these parts, each in its own process with a time limit, in this order, and stops starting
new ones when `--budget-s` (default 450 s) is spent:

1. `env`: jax's environment report (devices, driver, CUDA), the versions of torch, triton, fla, jla;
   first installs, from `--wheels` (default `wheels/`, made by `make gpu-wheels`), each
   distribution of `experiments/gpu_requirements.txt` that is missing, into `DIR/site`, which the
   other parts put on their path.
2. `check`: every op's impl="pallas" against impl="reference" at the first benchmark shape
   (bf16 inputs, random float32 initial state): the output, the final state and the gradients of
   every input and of the initial state, as relative RMS errors.
3. `time`: forward and forward+backward medians (ms after compilation; the loss is sum(o * o)) of
   impl="pallas" and impl="xla" at B=8 T=2048 H=16 K=V=128 and B=2 T=8192 H=16 D=128 (gsa: M=64),
   through `experiments.bench_kernels`; all programs are compiled first, in parallel threads.
4. `jla`: jax-linear-attention's Mosaic GPU ops at the same shapes.
5. `fla:OP`: flash-linear-attention, one op per process (it autotunes for minutes on a first
   call), `--fla-timeout-s` each.
6. `train:NAME`: one AdamW training step (bf16 compute) of gla-340m and of a 340M Transformer with
   cuDNN attention at 2 x 8192 tokens: compile time, median step time, tokens/s, peak memory.

Everything lands in DIR: `log/PART.log` (the part's output), `results.json` (every result line of
every part, and the parts' status), `gpu_check.md` (the tables for BENCHMARKS.md; `--write PATH`
also puts them into PATH's `gpu-check` section). A part that fails or runs out of time is recorded
as such and the run goes on. Absent peers (no GPU, or not installed) are reported as skipped.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import shlex
import subprocess
import sys
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / "experiments" / "gpu_requirements.txt"
SECTION = "gpu-check"
MARK = "RESULT "  # prefix of the machine-readable lines a part prints
OPS = ("linear_attention", "simple_gla", "gla", "delta_rule", "gated_delta_rule", "gsa")
FLA_ORDER = ("gla", "gsa", "delta_rule", "simple_gla", "gated_delta_rule")  # refs first
TRAIN = {  # name -> (preset, overrides, batch, length); dry-run variants use tiny presets
    "gla-340m": ("gla-340m", {}, 2, 8192),
    "transformer-340m": ("gla-340m", {"mixer": "attention", "n_heads": 8,
                                      "attention_impl": "cudnn"}, 2, 8192),
}
DRY_TRAIN = {
    "gla-340m": ("tiny-gla", {"n_layers": 1}, 2, 64),
    "transformer-340m": ("tiny-attention", {"n_layers": 1, "attention_impl": "xla"}, 2, 64),
}


# ------------------------------------------------------------------------------- the parts


def _emit(**record) -> None:
    print(MARK + json.dumps(record), flush=True)


def _setup_jax(dry: bool):
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax

    if dry:  # interpret-mode kernels call back into jax; CPU dispatch must be synchronous
        jax.config.update("jax_cpu_enable_async_dispatch", False)
    else:
        jax.config.update("jax_compilation_cache_dir", "/tmp/chunkwise_jax_cache")
    return jax


def _shapes(dry: bool):
    from experiments import bench_kernels

    if dry:
        return [tuple(bench_kernels.SMALL_SHAPES[0])], bench_kernels.SMALL_SLOTS
    return [tuple(s) for s in bench_kernels.SHAPES], bench_kernels.SLOTS


def part_env(args) -> None:
    jax = _setup_jax(args.dry_run)
    import importlib.metadata as md

    jax.print_environment_info()
    dev = jax.devices()[0]
    versions = {}
    for dist in ("jax", "jaxlib", "flax", "torch", "triton", "fla-core", "jax-linear-attention",
                 "grain", "nvidia-cudnn-cu13", "jax-cuda13-plugin"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    driver = ""
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                 "--format=csv,noheader"], capture_output=True, text=True,
                                timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    _emit(kind="env", platform=dev.platform, device=dev.device_kind, n_devices=jax.device_count(),
          nvidia_smi=driver, versions=versions)


def _state_like(op, q, v, slots, key):
    """A random float32 initial state of `op` (a tuple for an op with several states)."""
    import jax
    import jax.numpy as jnp

    from pallas_kernels.spec import OP_SPECS

    B, _, H, K = q.shape
    shapes = OP_SPECS[op].state_shapes(B, H, K, v.shape[-1], slots)
    keys = jax.random.split(key, len(shapes))
    states = tuple(0.1 * jax.random.normal(k, s, jnp.float32) for k, s in zip(keys, shapes))
    return states if len(states) > 1 else states[0]


def _rel(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def part_check(args) -> None:
    """impl="pallas" vs impl="reference": o, final state, grads of every input and of s0."""
    jax = _setup_jax(args.dry_run)
    import concurrent.futures as cf

    import jax.numpy as jnp

    import pallas_kernels
    from pallas_kernels.benchmark import make_problem

    (B, T, H, D), slots = _shapes(args.dry_run)[0][0], _shapes(args.dry_run)[1]
    tol = 2e-2  # bf16 inputs and output
    jobs = {}
    for op in args.ops:
        fn = getattr(pallas_kernels, op)
        prob = make_problem(op, B, T, H, D, D, M=slots, dtype=jnp.bfloat16)
        s0 = _state_like(op, prob[0], prob[2], slots, jax.random.key(2))
        w = jax.random.normal(jax.random.key(1), prob[2].shape, jnp.float32)
        ws = jax.tree.map(lambda s: jnp.ones_like(s) * 0.01, s0)

        def loss(impl, *a, fn=fn, w=w, ws=ws):
            *xs, s = a
            o, sN = fn(*xs, impl=impl, initial_state=s, output_final_state=True)
            o = o.astype(jnp.float32)
            extra = sum(jnp.sum(x * y) for x, y in zip(jax.tree.leaves(sN), jax.tree.leaves(ws)))
            return jnp.sum(o * w) + extra, (o, sN)

        argn = tuple(range(len(prob) + 1))
        for impl in ("pallas", "reference"):
            f = jax.jit(jax.grad(lambda *a, impl=impl, loss=loss: loss(impl, *a), argnums=argn,
                                 has_aux=True))
            jobs[(op, impl)] = (f, (*prob, s0))
    t0 = time.perf_counter()
    lowered = {}
    for (op, impl), (f, a) in jobs.items():  # the oracle at full float32 matmul precision
        try:
            with jax.default_matmul_precision("highest" if impl == "reference" else None):
                lowered[(op, impl)] = f.lower(*a)
        except Exception as e:  # noqa: BLE001 - recorded below
            lowered[(op, impl)] = e
    with cf.ThreadPoolExecutor(args.threads) as pool:
        compiled = {key: pool.submit(_raise, low) if isinstance(low, Exception)
                    else pool.submit(low.compile) for key, low in lowered.items()}
    print(f"compiled {len(jobs)} programs in {time.perf_counter() - t0:.1f} s", flush=True)
    for op in args.ops:
        rec = {"kind": "check", "op": op, "shape": f"{B},{T},{H},{D}", "tol": tol}
        try:
            res = {}
            for impl in ("pallas", "reference"):
                grads, (o, sN) = compiled[(op, impl)].result()(*jobs[(op, impl)][1])
                res[impl] = (o, jax.tree.leaves(sN), grads)
            (op_, sp, gp), (orf, sr, gr) = res["pallas"], res["reference"]
            rec["o"] = _rel(op_, orf)
            rec["final_state"] = max(_rel(a, b) for a, b in zip(sp, sr))
            gerr = [_rel(a, b) for a, b in zip(jax.tree.leaves(gp), jax.tree.leaves(gr))]
            rec["grads"] = gerr
            worst = max([rec["o"], rec["final_state"], *gerr])
            rec["max"] = worst
            rec["ok"] = bool(worst < tol)
        except Exception as e:  # noqa: BLE001 - recorded, the run goes on
            rec["error"] = f"{type(e).__name__}: {str(e)[:400]}"
        _emit(**rec)


def part_time(args) -> None:
    """chunkwise pallas and xla, fwd and fwd+bwd medians, through experiments.bench_kernels."""
    jax = _setup_jax(args.dry_run)
    import concurrent.futures as cf

    import jax.numpy as jnp

    from experiments import bench_kernels
    from pallas_kernels.benchmark import make_problem

    shapes, slots = _shapes(args.dry_run)
    jobs = {}
    for (B, T, H, D) in shapes:
        for op in args.ops:
            prob = make_problem(op, B, T, H, D, D, M=slots, dtype=jnp.bfloat16)
            for impl in ("pallas", "xla"):
                f, fb = bench_kernels._jax_fns(op, impl, 64, len(prob))
                jobs[(B, T, H, D, op, impl, "fwd")] = (f, prob)
                jobs[(B, T, H, D, op, impl, "fb")] = (fb, prob)
    t0 = time.perf_counter()
    lowered = {}
    for key, (f, a) in jobs.items():  # trace here, compile in parallel, then time one by one
        try:
            lowered[key] = f.lower(*a)
        except Exception as e:  # noqa: BLE001 - recorded below
            lowered[key] = e
    with cf.ThreadPoolExecutor(args.threads) as pool:
        futures = {key: pool.submit(_raise, low) if isinstance(low, Exception)
                   else pool.submit(low.compile) for key, low in lowered.items()}
        cf.wait(list(futures.values()))
    print(f"compiled {len(jobs)} programs in {time.perf_counter() - t0:.1f} s", flush=True)
    for key, fut in futures.items():
        B, T, H, D, op, impl, mode = key
        rec = {"kind": "time", "tool": f"chunkwise-{impl}", "op": op, "shape": f"{B},{T},{H},{D}",
               "mode": mode}
        try:
            rec["ms"] = bench_kernels.median_ms(fut.result(), *jobs[key][1], iters=args.iters)
        except Exception as e:  # noqa: BLE001 - recorded, the run goes on
            rec["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        _emit(**rec)
    del jax


def _raise(e: Exception):
    raise e


def part_jla(args) -> None:
    _setup_jax(args.dry_run)
    import jax.numpy as jnp

    from experiments import bench_kernels
    from pallas_kernels.benchmark import make_problem
    from pallas_kernels.spec import OP_SPECS

    run, version = bench_kernels._jla_timer()
    _emit(kind="peer", tool="jla", version=version)
    shapes, slots = _shapes(args.dry_run)
    for (B, T, H, D) in shapes:
        for op in args.ops:
            if OP_SPECS[op].jla is None:  # jla has no such op
                continue
            rec = {"kind": "time", "tool": "jla", "op": op, "shape": f"{B},{T},{H},{D}"}
            try:
                prob = make_problem(op, B, T, H, D, D, M=slots, dtype=jnp.bfloat16)
                fwd, fb = run(op, prob, args.iters)
                _emit(**rec, mode="fwd", ms=fwd)
                _emit(**rec, mode="fb", ms=fb)
            except Exception as e:  # noqa: BLE001
                _emit(**rec, mode="fwd", error=f"{type(e).__name__}: {str(e)[:300]}")


def part_fla(args) -> None:
    from experiments import bench_kernels

    run, version = bench_kernels._fla_timer()
    _emit(kind="peer", tool="fla", version=version)
    shapes, _ = _shapes(args.dry_run)
    (op,) = args.ops
    for (B, T, H, D) in shapes:
        rec = {"kind": "time", "tool": "fla", "op": op, "shape": f"{B},{T},{H},{D}"}
        try:
            fwd, fb = run(op, B, T, H, D)
            _emit(**rec, mode="fwd", ms=fwd)
            _emit(**rec, mode="fb", ms=fb)
        except Exception as e:  # noqa: BLE001
            _emit(**rec, mode="fwd", error=f"{type(e).__name__}: {str(e)[:300]}")


def part_train(args) -> None:
    """One training step of a model of `TRAIN` (bf16, AdamW) after compilation: the trainer's own
    step (`research.train.trainer`). If the model's ops fail with impl="auto", again with "xla"."""
    jax = _setup_jax(args.dry_run)
    import dataclasses

    import numpy as np

    import research
    from experiments import bench_kernels
    from research.train import trainer
    from research.train.config import Config, MeshConfig, TrainConfig

    (name,) = args.models
    preset, overrides, batch, length = (DRY_TRAIN if args.dry_run else TRAIN)[name]
    base = research.get_preset(preset, **overrides)
    if "dtype" in {f.name for f in dataclasses.fields(base)}:
        base = base.replace(dtype="bfloat16")
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, base.vocab_size, (batch, length + 1), dtype=np.int32)
    example = {"tokens": tokens[:, :-1], "targets": tokens[:, 1:],
               "loss_mask": np.ones((batch, length), bool)}
    for impl in ("auto", "xla"):
        model_cfg = base if impl == "auto" else base.replace(impl=impl)
        rec = {"kind": "train", "model": name, "preset": preset, "overrides": overrides,
               "impl": impl, "tokens": batch * length, "batch": f"{batch} x {length}",
               "params": research.count_params(model_cfg)}
        try:
            cfg = Config(model=model_cfg, train=TrainConfig(steps=1000, compute_dtype="bfloat16",
                                                            progress=False),
                         mesh=MeshConfig(data=1, fsdp=1))
            mesh = trainer.build_mesh(cfg.mesh)
            with jax.set_mesh(mesh):
                setup = trainer._setup(cfg, mesh)
                train_jit, _ = trainer._make_steps(cfg, setup, example)
                state = setup.init_state()
                t0 = time.perf_counter()
                exe = train_jit.lower(state, setup.rest, example).compile()
                rec["compile_s"] = time.perf_counter() - t0
                holder = [state]

                def step(exe=exe, setup=setup, holder=holder):
                    holder[0], metrics = exe(holder[0], setup.rest, example)
                    return metrics["loss"]

                rec["step_ms"] = bench_kernels.median_ms(step, iters=min(args.iters, 5))
                rec["loss"] = float(step())
            rec["tokens_per_s"] = rec["tokens"] / (rec["step_ms"] / 1e3)
            stats = jax.devices()[0].memory_stats() or {}
            if "peak_bytes_in_use" in stats:
                rec["peak_gib"] = stats["peak_bytes_in_use"] / 2**30
            _emit(**rec)
            return
        except Exception as e:  # noqa: BLE001 - recorded; then the xla path
            _emit(**rec, error=f"{type(e).__name__}: {str(e)[:400]}")


PARTS = {"env": part_env, "check": part_check, "time": part_time, "jla": part_jla,
         "fla": part_fla, "train": part_train}


# ----------------------------------------------------------------------- the orchestrator


def _missing_requirements() -> list[str]:
    import importlib.metadata as md
    import re

    missing = []
    for line in REQUIREMENTS.read_text().splitlines():
        req = line.split("#", 1)[0].strip()
        if not req:
            continue
        dist = re.split(r"[=<>! ]", req, maxsplit=1)[0]
        try:
            md.version(dist)
        except md.PackageNotFoundError:
            missing.append(req)
    return missing


def install_wheels(wheels: pathlib.Path, site: pathlib.Path, log) -> dict:
    """Installs the missing requirements from `wheels` into `site` (no index, no dependencies)."""
    missing = _missing_requirements()
    rec = {"kind": "install", "missing": missing, "wheels": str(wheels)}
    if not missing:
        rec["status"] = "nothing missing"
    elif not wheels.is_dir():
        rec["status"] = f"skipped: no wheel folder {wheels} (make gpu-wheels)"
    else:
        cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
               "--find-links", str(wheels), "--target", str(site), *missing]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
        log.write(" ".join(map(shlex.quote, cmd)) + "\n" + res.stdout + res.stderr)
        rec["status"] = "installed" if res.returncode == 0 else f"pip failed ({res.returncode})"
        if res.returncode != 0:  # install what can be installed, one at a time
            ok = []
            for req in missing:
                one = subprocess.run([*cmd[:-len(missing)], req], capture_output=True, text=True,
                                     timeout=120, check=False)
                log.write(one.stdout + one.stderr)
                if one.returncode == 0:
                    ok.append(req)
            rec["installed"] = ok
    return rec


def _peer_available(module: str, env: dict) -> bool:
    code = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT,
                          capture_output=True, timeout=60, check=False).returncode == 0


def run_part(name: str, argv: list[str], env: dict, timeout: float, logdir: pathlib.Path):
    """Runs one part as `python -m experiments.gpu_check --part ...`; returns (status, records).

    The records survive a timeout: they are read from the part's output as it is printed."""
    log_path = logdir / (name.replace(":", "_") + ".log")
    cmd = [sys.executable, "-m", "experiments.gpu_check", *argv]
    records: list[dict] = []
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(map(shlex.quote, cmd)) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)

        def reader():
            for line in proc.stdout:
                log.write(line)
                log.flush()
                if line.startswith(MARK):
                    records.append(json.loads(line[len(MARK):]))

        th = threading.Thread(target=reader, daemon=True)
        th.start()
        try:
            rc = proc.wait(timeout=max(timeout, 1.0))
            status = "ok" if rc == 0 else f"failed (exit {rc})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)  # the part's own process group (start_new_session)
            proc.wait()
            status = f"timed out after {timeout:.0f} s"
        th.join(timeout=10)
    return status, records, time.perf_counter() - t0


def orchestrate(args) -> dict:
    out = pathlib.Path(args.out).resolve()
    logdir = out / "log"
    logdir.mkdir(parents=True, exist_ok=True)
    site = out / "site"
    deadline = time.monotonic() + args.budget_s
    started = datetime.datetime.now(datetime.UTC)
    results = {"started": started.strftime("%Y-%m-%d %H:%M UTC"), "dry_run": args.dry_run,
               "command": "python -m experiments.gpu_check " + " ".join(args.argv),
               "parts": {}, "records": []}
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(site), str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    env.setdefault("TRITON_CACHE_AUTOTUNING", "1")  # keep FLA's autotuning for a rerun
    if args.dry_run:
        env["JAX_PLATFORMS"] = "cpu"
    with open(logdir / "install.log", "w") as log:
        results["records"].append(install_wheels(pathlib.Path(args.wheels).resolve(), site, log))
    common = ["--iters", str(args.iters), "--threads", str(args.threads)]
    common += ["--dry-run"] if args.dry_run else []
    ops = ["--ops", *args.ops]
    plan = [("env", ["--part", "env"], 60), ("check", ["--part", "check", *ops], 240),
            ("time", ["--part", "time", *ops], 300), ("jla", ["--part", "jla", *ops], 120)]
    fla = [(f"fla:{op}", ["--part", "fla", "--ops", op], args.fla_timeout_s)
           for op in FLA_ORDER if op in args.ops]
    train = [(f"train:{m}", ["--part", "train", "--models", m], 240) for m in TRAIN]
    plan += fla[:2] + train + fla[2:]  # FLA's gla and gsa (the ops with references) come first
    on_gpu = None
    for name, argv, limit in plan:
        group = name.split(":")[0]
        if args.only and group not in args.only and name not in args.only:
            continue
        if group in ("jla", "fla"):
            module = {"jla": "jla", "fla": "fla.ops"}[group]
            if args.dry_run or on_gpu is False:
                results["parts"][name] = {"status": "skipped: no GPU"}
                continue
            if not _peer_available(module, env):
                results["parts"][name] = {"status": f"skipped: {module} not installed"}
                continue
        left = deadline - time.monotonic()
        if left < 10:
            results["parts"][name] = {"status": "skipped: time budget spent"}
            continue
        print(f"[gpu_check] {name} (limit {min(limit, left):.0f} s)", flush=True)
        status, records, secs = run_part(name, argv + common, env, min(limit, left), logdir)
        results["parts"][name] = {"status": status, "seconds": round(secs, 1)}
        results["records"] += records
        for r in records:
            if r.get("kind") == "env":
                on_gpu = r.get("platform") == "gpu"
        print(f"[gpu_check] {name}: {status} ({secs:.0f} s, {len(records)} results)", flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=1))
    results["seconds"] = round(args.budget_s - (deadline - time.monotonic()), 1)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    md = render(results)
    (out / "gpu_check.md").write_text(md)
    if args.write:
        write_section(args.write, md)
    print(md)
    return results


# ------------------------------------------------------------------------------ the report


def _ms(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def render(results: dict) -> str:
    """The markdown tables of one run (the `gpu-check` section of BENCHMARKS.md)."""
    recs = results["records"]
    env = next((r for r in recs if r.get("kind") == "env"), {})
    vers = env.get("versions", {})
    peers = {r["tool"]: r.get("version") for r in recs if r.get("kind") == "peer"}
    lines = ["## GPU check (`experiments/gpu_check.py`)", "",
             f"Generated by `{results['command']}` ({results['started']}); do not edit by hand.",
             ""]
    if results.get("dry_run") or env.get("platform") != "gpu":
        lines += ["**A CPU dry run** (tiny shapes, Pallas in interpret mode): its times say "
                  "nothing about speed; it only shows the pipeline works.", ""]
    lines += [f"Device: {env.get('device', '?')} ({env.get('platform', '?')}); nvidia-smi: "
              f"{env.get('nvidia_smi') or '-'}; "
              + ", ".join(f"{k} {v}" for k, v in vers.items())
              + "".join(f"; {t}: {v}" for t, v in peers.items() if v), ""]
    lines += ["Parts: " + "; ".join(f"{k} {v['status']}" + (f" ({v['seconds']} s)"
                                                           if "seconds" in v else "")
                                    for k, v in results["parts"].items()), ""]
    checks = [r for r in recs if r.get("kind") == "check"]
    if checks:
        lines += ["Correctness, impl=\"pallas\" vs impl=\"reference\" (relative RMS; bf16 inputs, "
                  f"float32 initial state; tolerance {checks[0]['tol']}):", "",
                  "| op | B,T,H,D | o | final state | worst gradient | verdict |",
                  "|---|---|---|---|---|---|"]
        for r in checks:
            if "error" in r:
                lines.append(f"| {r['op']} | {r['shape']} | - | - | - | error: "
                             f"{r['error'][:120].replace('|', '/')} |")
            else:
                lines.append(f"| {r['op']} | {r['shape']} | {r['o']:.1e} | "
                             f"{r['final_state']:.1e} | {max(r['grads']):.1e} | "
                             f"{'ok' if r['ok'] else 'FAIL'} |")
        lines.append("")
    times = {}
    for r in recs:
        if r.get("kind") == "time":
            times[(r["shape"], r["op"], r["tool"], r["mode"])] = r.get("ms", r.get("error"))
    if times:
        tools = ["chunkwise-pallas", "chunkwise-xla", "fla", "jla"]
        head = ["op", "B,T,H,D"] + [f"{t} {m}" for t in tools for m in ("fwd", "f+b")]
        lines += ["Median ms after compilation (bf16 q/k/v, float32 gates, chunk 64, gsa M=64; "
                  "fwd+bwd is the gradient of sum(o * o) w.r.t. every input):", "",
                  "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        shapes = sorted({k[0] for k in times}, key=lambda s: [int(x) for x in s.split(",")],
                        reverse=True)
        for sh in shapes:
            for op in OPS:
                cells = []
                for t in tools:
                    for m in ("fwd", "fb"):
                        x = times.get((sh, op, t, m))
                        cells.append(_ms(x) if not isinstance(x, str)
                                     else "err: " + x.split(":")[0])
                if any(c != "-" for c in cells):
                    lines.append(f"| {op} | {sh} | " + " | ".join(cells) + " |")
        lines.append("")
    trains = [r for r in recs if r.get("kind") == "train"]
    if trains:
        lines += ["One training step (AdamW, bf16 compute, float32 master weights):", "",
                  "| model | params | batch | compile s | step ms | tokens/s | peak GiB |",
                  "|---|---|---|---|---|---|---|"]
        for r in trains:
            model = (f"{r['model']} ({r['preset']}, impl={r['impl']}"
                     + "".join(f", {k}={v}" for k, v in r["overrides"].items()) + ")")
            if "error" in r:
                lines.append(f"| {model} | {r['params'] / 1e6:.0f}M | {r['batch']} | error: "
                             f"{r['error'][:120].replace('|', '/')} | | | |")
                continue
            lines.append(f"| {model} | {r['params'] / 1e6:.0f}M | {r['batch']} | "
                         f"{r['compile_s']:.1f} | {r['step_ms']:.1f} | {r['tokens_per_s']:.0f} | "
                         f"{r.get('peak_gib', float('nan')):.1f} |")
        lines.append("")
    return "\n".join(lines)


def write_section(path, md: str) -> None:
    """Puts `md` into the `gpu-check` section of the markdown file at `path` (others are kept)."""
    from research.sweep.report import update_report

    block = f"<!-- sweep:{SECTION} -->\n{md.rstrip()}\n<!-- /sweep:{SECTION} -->"
    update_report(path, block, SECTION, header="# Kernel benchmarks\n")


def main(argv=None) -> dict | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", help="folder for every result (created)")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, interpret mode")
    p.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS)
    p.add_argument("--only", nargs="+", default=None, metavar="PART",
                   help="run only these parts (env check time jla fla train, or fla:OP, "
                        "train:NAME)")
    p.add_argument("--budget-s", type=float, default=450.0,
                   help="no part starts after this many seconds (default 450)")
    p.add_argument("--fla-timeout-s", type=float, default=100.0)
    p.add_argument("--iters", type=int, default=None, help="timed calls per median (20; dry: 1)")
    p.add_argument("--threads", type=int, default=min(8, os.cpu_count() or 1),
                   help="parallel compilations")
    p.add_argument("--wheels", default=str(ROOT / "wheels"))
    p.add_argument("--write", default=None, help="also put the tables into this markdown file")
    p.add_argument("--render", default=None, metavar="DIR",
                   help="only render DIR/results.json (with --write: into that file)")
    p.add_argument("--part", choices=sorted(PARTS), help=argparse.SUPPRESS)
    p.add_argument("--models", nargs="+", default=list(TRAIN), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.argv = argv
    if args.iters is None:
        args.iters = 1 if args.dry_run else 20
    if args.part:
        PARTS[args.part](args)
        return None
    if args.render:
        md = render(json.loads((pathlib.Path(args.render) / "results.json").read_text()))
        if args.write:
            write_section(args.write, md)
        print(md)
        return None
    if not args.out:
        p.error("--out DIR is required")
    return orchestrate(args)


if __name__ == "__main__":
    main()

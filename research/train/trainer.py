"""The training loop: `run(config, workdir) -> summary`, the function behind
`python -m experiments.train`, notebooks and sweeps.

One step (jitted once, sharded over the `data x fsdp` mesh):

    batch [B, L] (over data x fsdp) -> micro-batches [k, B/k, L] -> sum of masked token NLL and
    its gradient (scan over micro-batches) -> divide by the number of masked tokens
    -> clip -> AdamW(schedule) -> new params

What `run` writes into WORKDIR: `config.json` (the resolved config), `metrics.jsonl`,
`tensorboard/`, `checkpoints/<step>/`. Rerunning with the same WORKDIR resumes from the newest
readable checkpoint (params, optimizer, step, RNG and the data iterator), so the resumed run
reads the same batches and ends with the same loss as an uninterrupted one.

Notation: B = global batch, L = sequence length, V = vocabulary, k = gradient-accumulation steps.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import signal
import sys
import threading
import time
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from research.data.loader import eval_batches, train_dataset
from research.data.sources import build_sources
from research.train.checkpoint import Checkpointer
from research.train.config import Config, config_to_dict, save_config
from research.train.metrics import MetricsWriter, truncate_metrics
from research.train.optimizer import learning_rate_schedule, make_optimizer
from research.train.sharding import (
    batch_sharding,
    global_batch,
    make_mesh,
    optimizer_shardings,
    param_shardings,
    replicated,
)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


# --------------------------------------------------------------------------------------------
# Model and state construction.


def _model_factory(model_cfg: Any, seed: int):
    import research

    def create():
        return research.LanguageModel(model_cfg, rngs=nnx.Rngs(seed))
    return create


def _no_eager_sharding():
    ctx = getattr(nnx, "use_eager_sharding", None)
    if ctx is None:
        import contextlib
        return contextlib.nullcontext()
    return ctx(False)


def _as_state(template: Any, pure: Any) -> Any:
    """An nnx.State shaped like `template` holding the arrays of the pure dict `pure`."""
    state = jax.tree.map(lambda x: x, template)
    nnx.replace_by_pure_dict(state, pure)
    return state


@dataclasses.dataclass
class _Setup:
    mesh: Any
    graphdef: Any
    abs_params: Any  # nnx.State of abstract Params (template for merging)
    rest: Any  # non-Param model state (constant during training)
    optimizer: Any
    state_shardings: Any
    abstract_state: Any  # pytree of ShapeDtypeStruct with shardings, for restoring
    init_state: Any  # () -> sharded initial train state


def _setup(config: Config, mesh) -> _Setup:
    create = _model_factory(config.model, config.train.seed)
    with _no_eager_sharding():
        abstract_model = nnx.eval_shape(create)
    graphdef, abs_params, abs_rest = nnx.split(abstract_model, nnx.Param, ...)
    p_shard = param_shardings(abs_params, mesh)
    rep = replicated(mesh)
    optimizer = make_optimizer(config.optimizer, config.train.steps)
    abs_pure = nnx.to_pure_dict(abs_params)
    abs_opt = jax.eval_shape(optimizer.init, abs_pure)
    o_shard = optimizer_shardings(optimizer, abs_opt, p_shard, mesh)
    state_shardings = {"params": p_shard, "opt_state": o_shard, "step": rep, "rng": rep}
    rest_shard = jax.tree.map(lambda _: rep, abs_rest)

    def init():
        with _no_eager_sharding():
            model = create()
        _, params, rest = nnx.split(model, nnx.Param, ...)
        pure = nnx.to_pure_dict(params)
        return ({"params": pure, "opt_state": optimizer.init(pure),
                 "step": jnp.zeros((), jnp.int32),
                 "rng": jax.random.key_data(jax.random.key(config.train.seed + 1))}, rest)

    init_jit = jax.jit(init, out_shardings=(state_shardings, rest_shard))
    with _no_eager_sharding():
        abstract_state, _ = jax.eval_shape(init)
    abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state,
        state_shardings)
    rest = jax.jit(lambda: init()[1], out_shardings=rest_shard)()

    def init_state():
        return init_jit()[0]

    return _Setup(mesh=mesh, graphdef=graphdef, abs_params=abs_params, rest=rest,
                  optimizer=optimizer, state_shardings=state_shardings,
                  abstract_state=abstract_state, init_state=init_state)


# --------------------------------------------------------------------------------------------
# Loss and steps.


def _masked_sums(graphdef, abs_params, params, rest, batch, compute_dtype):
    """(sum of masked NLL, number of masked tokens, number correct, aux loss x tokens) for one
    batch; the aux loss is the model's (mom's load balancing, 0 for most models), weighted by
    the batch's masked tokens so that sums over micro-batches divide like the NLL."""
    if compute_dtype != jnp.float32:
        params = jax.tree.map(
            lambda p: p.astype(compute_dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p,
            params)
    model = nnx.merge(graphdef, _as_state(abs_params, params), rest)
    kwargs = {}
    for key in ("segment_ids", "prefix_length"):
        if key in batch:
            kwargs[key] = batch[key]
    logits, aux = model(batch["tokens"], return_aux=True, **kwargs)
    logits = logits.astype(jnp.float32)  # [b, L, V]
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, batch["targets"][..., None], axis=-1)[..., 0]  # [b, L]
    mask = batch["loss_mask"].astype(jnp.float32)
    correct = (jnp.argmax(logits, axis=-1) == batch["targets"]).astype(jnp.float32) * mask
    return (nll * mask).sum(), mask.sum(), correct.sum(), aux["aux_loss"] * mask.sum()


def _make_steps(config: Config, setup: _Setup, example_batch: dict[str, np.ndarray]):
    graphdef, abs_params = setup.graphdef, setup.abs_params
    optimizer = setup.optimizer
    k = config.optimizer.grad_accum
    compute_dtype = jnp.bfloat16 if config.train.compute_dtype == "bfloat16" else jnp.float32
    schedule = learning_rate_schedule(config.optimizer, config.train.steps)
    mesh = setup.mesh

    def sums(params, rest, batch):  # the gradient is of NLL + aux; loss_sum is the NLL alone
        s, n, c, a = _masked_sums(graphdef, abs_params, params, rest, batch, compute_dtype)
        return s + a, (n, c, s, a)

    grad_fn = jax.value_and_grad(sums, has_aux=True)

    def train_step(state, rest, batch):
        params = state["params"]
        if k == 1:
            (_, (count, correct, loss_sum, aux_sum)), grads = grad_fn(params, rest, batch)
        else:
            def split(x):  # [B, ...] -> [k, B/k, ...]; micro-batch i takes rows i, i+k, ...
                y = x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)
                spec = jax.sharding.PartitionSpec(None, ("data", "fsdp"),
                                                  *([None] * (x.ndim - 1)))
                return jax.lax.with_sharding_constraint(
                    y, jax.sharding.NamedSharding(mesh, spec))
            micro = jax.tree.map(split, batch)
            zeros = jax.tree.map(jnp.zeros_like, params)

            def body(carry, mb):
                g_acc, s_acc, n_acc, c_acc, a_acc = carry
                (_, (n, c, s, a)), g = grad_fn(params, rest, mb)
                return (jax.tree.map(jnp.add, g_acc, g), s_acc + s, n_acc + n, c_acc + c,
                        a_acc + a), None

            init = (zeros, jnp.zeros(()), jnp.zeros(()), jnp.zeros(()), jnp.zeros(()))
            (grads, loss_sum, count, correct, aux_sum), _ = jax.lax.scan(body, init, micro)
        denom = jnp.maximum(count, 1.0)
        grads = jax.tree.map(lambda g: g / denom, grads)
        updates, opt_state = optimizer.update(grads, state["opt_state"], params)
        new_params = optax.apply_updates(params, updates)
        new_state = {"params": new_params, "opt_state": opt_state, "step": state["step"] + 1,
                     "rng": state["rng"]}
        metrics = {"loss": loss_sum / denom, "accuracy": correct / denom,
                   "grad_norm": optax.tree.norm(grads), "lr": schedule(state["step"]),
                   "tokens": count}
        if has_aux:
            metrics["aux_loss"] = aux_sum / denom
        return new_state, metrics

    has_aux = "mom" in config.model.layer_mixers()  # models with a routed mixer log train/aux_loss

    def eval_step(params, rest, batch):
        s, n, c, _ = _masked_sums(graphdef, abs_params, params, rest, batch, compute_dtype)
        return {"loss_sum": s, "count": n, "correct": c}

    rep = replicated(mesh)
    batch_shard = {key: batch_sharding(mesh, v.ndim) for key, v in example_batch.items()}
    rest_shard = jax.tree.map(lambda _: rep, setup.rest)
    train_jit = jax.jit(train_step,
                        in_shardings=(setup.state_shardings, rest_shard, batch_shard),
                        out_shardings=(setup.state_shardings, rep), donate_argnums=(0,))
    eval_jit = jax.jit(eval_step,
                       in_shardings=(setup.state_shardings["params"], rest_shard, batch_shard),
                       out_shardings=rep)
    return train_jit, eval_jit


# --------------------------------------------------------------------------------------------
# Helpers for the loop.


class _StopFlag:
    """Set by SIGTERM (and a first SIGINT); the loop saves a checkpoint and returns."""

    def __init__(self):
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def install(self):
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C aborts without waiting
        self.signal_name = signal.Signals(signum).name

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def agreed(self) -> bool:
        """True if any process was asked to stop (all processes must stop at the same step)."""
        local = self.signal_name is not None
        if jax.process_count() == 1:
            return local
        from jax.experimental import multihost_utils
        flags = multihost_utils.process_allgather(np.array([int(local)], np.int32))
        return bool(np.max(flags))


def _check_vocab(model_cfg: Any, source: Any, name: str) -> None:
    model_vocab = getattr(model_cfg, "vocab_size", None)
    data_vocab = getattr(source, "vocab_size", None)
    if model_vocab is not None and data_vocab is not None and data_vocab > model_vocab:
        raise ValueError(f"model.vocab_size={model_vocab} is smaller than the {name} "
                         f"vocabulary ({data_vocab}); set model.vocab_size >= {data_vocab}")


def _compare_with_saved(config: Config, path: pathlib.Path, has_checkpoint: bool) -> None:
    if not path.exists():
        return
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError:
        return
    old.pop("preset", None)
    new = config_to_dict(config)
    changed = []
    for section, values in new.items():
        for key, value in values.items():
            if old.get(section, {}).get(key, value) != value:
                changed.append(f"{section}.{key}: {old[section][key]!r} -> {value!r}")
    if not changed:
        return
    model_changed = [c for c in changed if c.startswith("model.")]
    if model_changed and has_checkpoint:
        raise ValueError(
            f"{path.parent} holds checkpoints of a different model ({'; '.join(model_changed)}); "
            "use another --workdir or the original model settings")
    warnings.warn(f"config differs from the one saved in {path}: {'; '.join(changed)}",
                  stacklevel=3)


def _num_params(tree: Any) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def _say(verbose: bool, msg: str) -> None:
    if verbose and jax.process_index() == 0:
        print(msg, file=sys.stderr, flush=True)


def evaluate(eval_jit, params, rest, batches: list[dict[str, np.ndarray]], mesh) -> dict:
    """Masked token loss and accuracy over `batches`: {"eval/loss", "eval/accuracy"}."""
    totals = np.zeros(3)
    for b in batches:
        out = jax.device_get(eval_jit(params, rest, global_batch(b, mesh)))
        totals += [float(out["loss_sum"]), float(out["count"]), float(out["correct"])]
    n = max(totals[1], 1.0)
    return {"eval/loss": float(totals[0] / n), "eval/accuracy": float(totals[2] / n),
            "eval/tokens": int(totals[1])}


# --------------------------------------------------------------------------------------------
# The loop.


def run(config: Config, workdir: str | pathlib.Path | None = None, *, preset: str | None = None,
        train_source: Any = None, eval_source: Any = None, verbose: bool = True,
        _stop_after: int | None = None) -> dict[str, Any]:
    """Train `config` in `workdir` (resuming from its newest readable checkpoint).

    Args:
      config: a `research.train.Config`.
      workdir: output folder; default `runs/<preset or "run">`.
      preset: the preset name, recorded in config.json.
      train_source, eval_source: random-access example sources to use instead of the ones
        `config.data` names (each `source[i]` -> {"tokens", "targets", "loss_mask"[,
        "segment_ids"]}, arrays [L]).
      verbose: print where outputs go and a final line (process 0, stderr).
      _stop_after: tests only: leave the loop after this step as if the process were killed
        (no final evaluation or checkpoint beyond the periodic ones).

    Returns:
      A summary dict: "workdir", "config", "metrics", "tensorboard", "checkpoints" (paths),
      "step" (last step trained), "final_loss" (the loss of that step), "train/loss",
      "eval/loss", "eval/accuracy" (final evaluation), "num_params", "interrupted" (name of the
      signal that stopped the run, or None), "resumed_from" (step or None), "wall_time_s",
      "target_accuracy" and "reached_target".

    Raises:
      TrainingDiverged: the loss became NaN/inf (message: the step and the last good checkpoint).
      ValueError: a config that does not fit the devices or the data.
    """
    if not isinstance(config, Config):
        raise ValueError(f"config must be a research.train.Config, got {type(config).__name__}")  # noqa: TRY004
    t_start = time.time()
    workdir = pathlib.Path(workdir if workdir is not None else f"runs/{preset or 'run'}")
    workdir = workdir.absolute()
    is_main = jax.process_index() == 0
    pidx, pcount = jax.process_index(), jax.process_count()
    workdir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = workdir / "checkpoints"
    has_ckpt = ckpt_dir.exists() and any(p.name.isdigit() for p in ckpt_dir.iterdir())
    _compare_with_saved(config, workdir / "config.json", has_ckpt)
    if is_main:
        save_config(config, workdir / "config.json", preset)

    # ---- data
    tc = config.train
    data_seed = config.data.seed if config.data.seed is not None else tc.seed
    if train_source is None or eval_source is None:
        built_train, built_eval = build_sources(config.data, data_seed)
        train_source = built_train if train_source is None else train_source
        eval_source = built_eval if eval_source is None else eval_source
    _check_vocab(config.model, train_source, "training data")
    _check_vocab(config.model, eval_source, "evaluation data")

    # ---- mesh, batch checks
    mesh = make_mesh(config.mesh.data, config.mesh.fsdp)
    B = config.data.batch_size
    n_dev = mesh.size
    k = config.optimizer.grad_accum
    if B % n_dev or B % pcount:
        raise ValueError(f"data.batch_size={B} must be divisible by the mesh size "
                         f"{mesh.shape['data']} x {mesh.shape['fsdp']} = {n_dev} and the process "
                         f"count {pcount}")
    if (B // n_dev) % k:
        raise ValueError(f"optimizer.grad_accum={k} must divide the per-device batch "
                         f"{B // n_dev} (data.batch_size={B} / {n_dev} devices)")

    train_ds = train_dataset(train_source, batch_size=B, seed=data_seed,
                             shuffle=config.data.shuffle, process_index=pidx,
                             process_count=pcount)
    train_iter = iter(train_ds)
    eval_data = eval_batches(eval_source, batch_size=B, num_batches=tc.eval_batches,
                             process_index=pidx, process_count=pcount)

    # ---- model, optimizer, state
    setup = _setup(config, mesh)
    train_jit, eval_jit = _make_steps(config, setup, eval_data[0])
    checkpointer = Checkpointer(ckpt_dir, keep=config.checkpoint.keep,
                                async_save=config.checkpoint.async_save)
    restored = checkpointer.restore_latest(setup.abstract_state)
    resumed_from = None
    restored_meta: dict = {}
    if restored is not None:
        resumed_from, state, data_state, restored_meta = restored
        # orbax may hand back namedtuples as tuples: rebuild the exact tree structure
        state = jax.tree.unflatten(jax.tree.structure(setup.abstract_state),
                                   jax.tree.leaves(state))
        train_iter.set_state(data_state)
        if is_main:
            truncate_metrics(workdir / "metrics.jsonl", resumed_from)
    else:
        state = setup.init_state()
    start = int(resumed_from or 0)
    if tc.stop_at_target and restored_meta.get("reached_target"):
        start = tc.steps  # stopped at the target before: nothing left to train
    n_params = _num_params(state["params"])

    writer = MetricsWriter(workdir, enabled=is_main)
    _say(verbose, f"chunkwise train: {preset or 'config'} -> {workdir}\n"
                  f"  config      {workdir / 'config.json'}\n"
                  f"  metrics     {workdir / 'metrics.jsonl'}\n"
                  f"  tensorboard {workdir / 'tensorboard'}\n"
                  f"  checkpoints {ckpt_dir}\n"
                  f"  model {getattr(config.model, 'mixer', '?')}: {n_params:,} parameters; "
                  f"mesh data={mesh.shape['data']} fsdp={mesh.shape['fsdp']} on {n_dev} "
                  f"{jax.devices()[0].platform} device(s), {pcount} process(es)"
                  + (f"\n  resuming from step {start}" if resumed_from is not None else ""))

    stop = _StopFlag()
    stop.install()
    pbar = None
    if tc.progress and is_main:
        from tqdm.auto import tqdm
        pbar = tqdm(total=tc.steps, initial=start, desc="train", unit="step", dynamic_ncols=True,
                    file=sys.stderr)

    window: list[dict] = []
    window_t0 = time.time()
    window_tokens = 0
    last_good_ckpt = checkpointer.latest_step()
    final_loss = restored_meta.get("train/loss")
    last_train: dict[str, float] = {}
    last_eval: dict[str, float] = {}
    interrupted = None
    step = int(resumed_from or 0)
    try:
        for step in range(start + 1, tc.steps + 1):
            local = next(train_iter)
            window_tokens += int(np.prod(local["tokens"].shape)) * pcount
            state, metrics = train_jit(state, setup.rest, global_batch(local, mesh))
            window.append(metrics)
            if pbar is not None:
                pbar.update(1)
            stop_now = stop.agreed()
            is_eval = (tc.eval_every and step % tc.eval_every == 0) or step == tc.steps
            reached = False
            if is_eval:
                t_eval = time.time()
                last_eval = evaluate(eval_jit, state["params"], setup.rest, eval_data, mesh)
                window_t0 += time.time() - t_eval  # keep evaluation out of tokens/s
                reached = bool(tc.stop_at_target
                               and last_eval["eval/accuracy"] >= tc.target_accuracy)
            is_ckpt = (step % config.checkpoint.every == 0 or step == tc.steps or stop_now
                       or reached)
            if step % tc.log_every == 0 or is_ckpt or is_eval:
                host = jax.device_get(window)
                losses = [float(m["loss"]) for m in host]
                for i, v in enumerate(losses):
                    if not math.isfinite(v):
                        bad_step = step - len(losses) + 1 + i
                        where = (f"{checkpointer.path(last_good_ckpt)} (step {last_good_ckpt})"
                                 if last_good_ckpt is not None else "none (no checkpoint yet)")
                        writer.write(bad_step, {"train/loss": v})
                        raise TrainingDiverged(
                            f"training loss became {v} at step {bad_step}; stopping. Last good "
                            f"checkpoint: {where}. Lower optimizer.lr or raise "
                            f"optimizer.warmup_steps, then rerun to resume from it.")
                dt = max(time.time() - window_t0, 1e-9)
                final_loss = losses[-1]
                last_train = {
                    "train/loss": float(np.mean(losses)),
                    "train/accuracy": float(np.mean([float(m["accuracy"]) for m in host])),
                    "train/grad_norm": float(host[-1]["grad_norm"]),
                    "train/lr": float(host[-1]["lr"]),
                    "perf/tokens_per_sec": window_tokens / dt,
                    "perf/steps_per_sec": len(host) / dt,
                }
                if "aux_loss" in host[-1]:
                    last_train["train/aux_loss"] = float(np.mean([float(m["aux_loss"]) for m in host]))
                writer.write(step, last_train)
                if pbar is not None:
                    pbar.set_postfix(loss=f"{last_train['train/loss']:.4f}",
                                     tok_s=f"{last_train['perf/tokens_per_sec']:.0f}",
                                     refresh=False)
                window, window_tokens, window_t0 = [], 0, time.time()
            if is_eval:
                writer.write(step, last_eval)
                if pbar is not None:
                    pbar.set_postfix(loss=f"{last_train.get('train/loss', float('nan')):.4f}",
                                     eval_acc=f"{last_eval['eval/accuracy']:.3f}", refresh=False)
                elif verbose and is_main and step != tc.steps:
                    _say(verbose, f"  step {step}: eval loss {last_eval['eval/loss']:.4f} "
                                  f"accuracy {last_eval['eval/accuracy']:.4f}")
            if is_ckpt:
                checkpointer.save(step, state, train_iter.get_state(),
                                  {"step": step, "train/loss": final_loss,
                                   "reached_target": reached, "time": time.time()},
                                  wait=stop_now)
                last_good_ckpt = step
                window_t0 = time.time()  # do not count the save in tokens/s
            if stop_now:
                interrupted = stop.signal_name or "remote"
                break
            if reached:
                _say(verbose, f"  step {step}: eval accuracy "
                     f"{last_eval['eval/accuracy']:.4f} reached the target "
                     f"{tc.target_accuracy}; stopping")
                break
            if _stop_after is not None and step >= _stop_after:
                break
        if not last_eval and interrupted is None and _stop_after is None:
            # nothing left to train (a rerun of a finished run): evaluate the restored model
            last_eval = evaluate(eval_jit, state["params"], setup.rest, eval_data, mesh)
        writer.flush()
        checkpointer.wait()
    finally:
        stop.restore()
        if pbar is not None:
            pbar.close()
        writer.close()
        checkpointer.close()

    if interrupted:
        _say(verbose, f"stopped by {interrupted} at step {step}; checkpoint saved at "
                      f"{checkpointer.path(step)}. Rerun the same command to resume.")
    summary = {
        "workdir": str(workdir),
        "config": str(workdir / "config.json"),
        "metrics": str(workdir / "metrics.jsonl"),
        "tensorboard": str(workdir / "tensorboard"),
        "checkpoints": str(ckpt_dir),
        "step": int(step),
        "steps": tc.steps,
        "final_loss": final_loss,
        "train/loss": last_train.get("train/loss"),
        "train/accuracy": last_train.get("train/accuracy"),
        "eval/loss": last_eval.get("eval/loss"),
        "eval/accuracy": last_eval.get("eval/accuracy"),
        "num_params": n_params,
        "interrupted": interrupted,
        "resumed_from": resumed_from,
        "wall_time_s": time.time() - t_start,
        "target_accuracy": tc.target_accuracy,
        "reached_target": (None if tc.target_accuracy is None or not last_eval
                           else bool(last_eval["eval/accuracy"] >= tc.target_accuracy)),
    }
    if is_main:
        (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# --------------------------------------------------------------------------------------------
# Loading a trained model (probes, notebooks).


def restore_model(workdir: str | pathlib.Path, step: int | None = None):
    """(model, config, step): the `research.LanguageModel` of a run, with the parameters of
    checkpoint `step` (default: the newest readable one), on the default device."""
    from research.train.config import load_config
    workdir = pathlib.Path(workdir)
    config = load_config(workdir / "config.json")
    config = config.replace(mesh=dataclasses.replace(config.mesh, data=1, fsdp=1))
    mesh = make_mesh(1, 1)
    setup = _setup(config, mesh)
    ckpt = Checkpointer(workdir / "checkpoints", keep=max(config.checkpoint.keep, 1),
                        async_save=False)
    try:
        if step is None:
            restored = ckpt.restore_latest(setup.abstract_state)
            if restored is None:
                raise ValueError(f"{workdir / 'checkpoints'} holds no readable checkpoint")
            step, state, _, _ = restored
        else:
            if step not in ckpt.all_steps():
                raise ValueError(f"step must be one of the checkpoints {ckpt.all_steps()}, "
                                 f"got {step}")
            state, _, _ = ckpt.restore(step, setup.abstract_state)
    finally:
        ckpt.close()
    state = jax.tree.unflatten(jax.tree.structure(setup.abstract_state), jax.tree.leaves(state))
    model = nnx.merge(setup.graphdef, _as_state(setup.abs_params, state["params"]), setup.rest)
    return model, config, int(step)

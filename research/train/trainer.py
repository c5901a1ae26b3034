"""The training loop: `run(config, workdir) -> summary`, the function behind
`python -m experiments.train`, notebooks and sweeps.

One step (jitted once, sharded over the `data x fsdp x sequence x tensor` mesh, traced under
`jax.set_mesh(mesh)` so the layers see the mesh):

    batch [B, T] (over data x fsdp) -> micro-batches [k, B/k, T] -> sum of masked token NLL and
    its gradient (scan over micro-batches) -> divide by the number of masked tokens
    -> clip -> AdamW(schedule) -> new params

`run` reads top to bottom: lock the workdir, data, mesh, model and steps, restore or initialise,
then the loop. Each step trains, adds its metrics to the window, then, when due: evaluates, closes
the window (checking the loss is finite) into a train record, checkpoints, and stops if a signal,
the target accuracy or the last step says so.

What `run` writes into WORKDIR: `.lock` (the run's pid while it runs), `config.json` (the
resolved config), `metrics.jsonl`, `tensorboard/`, `checkpoints/<step>/`, `summary.json`.
Rerunning with the same WORKDIR resumes from the newest readable checkpoint (params, optimizer,
step, RNG and the data iterator), so the resumed run reads the same batches and ends with the
same loss as an uninterrupted one.

Notation (as in `research.array_typing`): B = global batch, T = sequence length, k = gradient
accumulation steps; logits are [B, T, vocab].
"""

from __future__ import annotations

import contextlib
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
from jax.experimental import multihost_utils

from research.config import ModelConfig
from research.data.loader import eval_batches, train_dataset
from research.data.sources import build_sources
from research.model import REMAT_POLICIES, LanguageModel
from research.train.checkpoint import Checkpointer
from research.train.config import Config, MeshConfig, config_to_dict, load_config, save_config
from research.train.metrics import MetricsWriter, truncate_metrics
from research.train.optimizer import learning_rate_schedule, make_optimizer
from research.train.sharding import (
    BATCH_AXES,
    batch_sharding,
    global_batch,
    make_mesh,
    optimizer_shardings,
    param_shardings,
    replicated,
)
from research.train.workdir import hold_workdir


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


# --------------------------------------------------------------------------------------------
# Mesh, model and state construction.


def build_mesh(cfg: MeshConfig) -> jax.sharding.Mesh:
    """The device mesh of `cfg` (`sharding.make_mesh`; `data=-1` takes the devices left over)."""
    return make_mesh(cfg.data, cfg.fsdp, sequence=cfg.sequence, tensor=cfg.tensor)


def _batch_shards(mesh) -> int:
    """How many ways a batch is split: the product of the mesh's batch axes."""
    return math.prod(mesh.shape.get(a, 1) for a in BATCH_AXES)


def _model_factory(model_cfg: ModelConfig, seed: int):
    def create():
        return LanguageModel(model_cfg, rngs=nnx.Rngs(seed))
    return create


def _no_eager_sharding():
    ctx = getattr(nnx, "use_eager_sharding", None)
    return contextlib.nullcontext() if ctx is None else ctx(False)


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

    # The seeds enter the init program as arguments (the key data of jax.random.key(seed) and
    # of key(seed + 1), made outside it), not as constants: the same model at another seed
    # compiles the same program (a persistent compilation cache then reuses it).
    def seed_keys():
        seed = config.train.seed
        return (jax.random.key_data(jax.random.key(seed)),
                jax.random.key_data(jax.random.key(seed + 1)))

    def init(model_key, rng_key):
        with _no_eager_sharding():
            model = LanguageModel(config.model, rngs=nnx.Rngs(model_key))
        _, params, rest = nnx.split(model, nnx.Param, ...)
        pure = nnx.to_pure_dict(params)
        return ({"params": pure, "opt_state": optimizer.init(pure),
                 "step": jnp.zeros((), jnp.int32), "rng": rng_key}, rest)

    init_jit = jax.jit(init, out_shardings=(state_shardings, rest_shard))
    abs_keys = jax.eval_shape(seed_keys)
    with _no_eager_sharding():
        abstract_state, _ = jax.eval_shape(init, *abs_keys)
    abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state,
        state_shardings)
    # no non-Param state (the usual case): nothing to run, so an abstract mesh (AOT) works too
    rest = (jax.jit(lambda *k: init(*k)[1], out_shardings=rest_shard)(*seed_keys())
            if jax.tree.leaves(abs_rest) else abs_rest)

    def init_state():
        return init_jit(*seed_keys())[0]

    return _Setup(mesh=mesh, graphdef=graphdef, abs_params=abs_params, rest=rest,
                  optimizer=optimizer, state_shardings=state_shardings,
                  abstract_state=abstract_state, init_state=init_state)


# --------------------------------------------------------------------------------------------
# Loss and steps.


def _masked_sums(graphdef, abs_params, params, rest, batch, compute_dtype, loss_chunk_size=0,
                 remat_policy=None):
    """(sum of masked NLL, number of masked tokens, number correct, aux loss x tokens) for one
    batch; the aux loss is the model's (mom's load balancing, 0 for most models), weighted by
    the batch's masked tokens so that sums over micro-batches divide like the NLL.
    `remat_policy` goes to the model (`LanguageModel.__call__`).

    loss_chunk_size > 0: the head and the cross-entropy run over chunks of that many positions
    (`_chunked_token_sums`), so the [b, T, vocab] logits are never whole."""
    full = params
    params = _cast(params, compute_dtype)
    model = nnx.merge(graphdef, _as_state(abs_params, params), rest)
    kwargs = {} if remat_policy is None else {"remat_policy": remat_policy}
    for key in ("segment_ids", "prefix_length"):
        if key in batch:
            kwargs[key] = batch[key]
    mask = batch["loss_mask"].astype(jnp.float32)
    if loss_chunk_size:
        h, aux = model(batch["tokens"], return_aux=True, return_hidden=True, **kwargs)
        nll_sum, correct_sum = _chunked_token_sums(
            graphdef, abs_params, rest, _head_params(full, params), h, batch["targets"], mask,
            compute_dtype, loss_chunk_size)
        return nll_sum, mask.sum(), correct_sum, aux["aux_loss"] * mask.sum()
    logits, aux = model(batch["tokens"], return_aux=True, **kwargs)
    nll, correct = _token_nll_correct(logits, batch["targets"])
    return (nll * mask).sum(), mask.sum(), (correct * mask).sum(), aux["aux_loss"] * mask.sum()


def _cast(params, dtype):
    """`params` with its floating leaves in `dtype` (the compute dtype; float32 leaves them)."""
    if dtype == jnp.float32:
        return params
    return jax.tree.map(
        lambda p: p.astype(dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p, params)


def _token_nll_correct(logits, targets):
    """NLL and correctness (float32 [..., T]) of `targets` under `logits` [..., T, vocab]."""
    logits = logits.astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return nll, correct


def _head_params(full, cast):
    """The params for the loss head: `cast` (the compute-dtype copy) with the head's weight
    (`lm_head`, or the tied `embed`) left as in `full` (float32 master weights), so that the
    chunks' gradients of it add up in float32; the cast to the compute dtype happens per chunk."""
    out = dict(cast)
    for key in ("lm_head", "embed"):
        if key in full:
            out[key] = full[key]
    return out


def _chunked_token_sums(graphdef, abs_params, rest, params, h, targets, mask, compute_dtype,
                        chunk):
    """(sum of masked NLL, number correct) of `targets` [b, T] under model.logits(h), h [b, T, D],
    over chunks of `chunk` positions: a `lax.scan` whose body is `jax.checkpoint`ed, so the
    forward keeps no logits and the backward recomputes one chunk's at a time. T is padded to a
    multiple of `chunk` with masked positions."""
    b, T, D = h.shape
    n = -(-T // chunk)
    pad = n * chunk - T
    if pad:
        h = jnp.pad(h, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
        mask = jnp.pad(mask, ((0, 0), (0, pad)))

    def chunks(x):  # [b, n*chunk, ...] -> [n, b, chunk, ...]
        return jnp.swapaxes(x.reshape(b, n, chunk, *x.shape[2:]), 0, 1)

    @jax.checkpoint
    def body(carry, xs):
        h_c, t_c, m_c = xs
        model = nnx.merge(graphdef, _as_state(abs_params, _cast(params, compute_dtype)), rest)
        nll, correct = _token_nll_correct(model.logits(h_c), t_c)
        return (carry[0] + (nll * m_c).sum(), carry[1] + (correct * m_c).sum()), None

    zero = jnp.zeros((), jnp.float32)
    (nll_sum, correct_sum), _ = jax.lax.scan(body, (zero, zero),
                                             (chunks(h), chunks(targets), chunks(mask)))
    return nll_sum, correct_sum


def _make_steps(config: Config, setup: _Setup, example_batch: dict[str, np.ndarray]):
    graphdef, abs_params = setup.graphdef, setup.abs_params
    optimizer = setup.optimizer
    k = config.optimizer.grad_accum
    compute_dtype = jnp.bfloat16 if config.train.compute_dtype == "bfloat16" else jnp.float32
    loss_chunk = config.train.loss_chunk_size
    # a block-level checkpoint policy only without model.remat (which recomputes blocks whole)
    remat_policy = None if config.model.remat else REMAT_POLICIES[config.train.remat_policy]
    schedule = learning_rate_schedule(config.optimizer, config.train.steps)
    mesh = setup.mesh

    def sums(params, rest, batch):  # the gradient is of NLL + aux; loss_sum is the NLL alone
        s, n, c, a = _masked_sums(graphdef, abs_params, params, rest, batch, compute_dtype,
                                  loss_chunk, remat_policy)
        return s + a, (n, c, s, a)

    grad_fn = jax.value_and_grad(sums, has_aux=True)

    def train_step(state, rest, batch):
        params = state["params"]
        if k == 1:
            (_, (count, correct, loss_sum, aux_sum)), grads = grad_fn(params, rest, batch)
        else:
            def split(x):  # [B, ...] -> [k, B/k, ...]; micro-batch i takes rows i, i+k, ...
                y = x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)
                spec = jax.sharding.PartitionSpec(None, BATCH_AXES,
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
        s, n, c, _ = _masked_sums(graphdef, abs_params, params, rest, batch, compute_dtype,
                                  loss_chunk)
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
# The loop's parts, in the order a step meets them.


def _due(step: int, every: int, last: int) -> bool:
    """A periodic event (evaluation, checkpoint) is due every `every` steps (0: never) and at
    the last step."""
    return step == last or (every > 0 and step % every == 0)


class _StopSignal:
    """Asks the loop to checkpoint and return, at a step every process agrees on.

    One process: SIGTERM or a first Ctrl-C sets a flag that the next step reads (a second
    Ctrl-C aborts at once). Several processes: JAX's coordination service receives the SIGTERM
    (a preemption notice) on any host and `reached_preemption_sync_point(step)` turns True on
    every process at the same step; a first Ctrl-C is passed on as SIGTERM. No collective runs on
    the steps in between.
    """

    def __init__(self):
        self.signal_name: str | None = None
        self._multi = jax.process_count() > 1
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in ((signal.SIGINT,) if self._multi else (signal.SIGTERM, signal.SIGINT)):
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C aborts without waiting
        self.signal_name = signal.Signals(signum).name
        if self._multi:
            signal.raise_signal(signal.SIGTERM)  # to the preemption notifier: all hosts stop

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def should_stop(self, step: int) -> bool:
        """True at the step where every process stops (call it once per step, on all of them)."""
        if not self._multi:
            return self.signal_name is not None
        if multihost_utils.reached_preemption_sync_point(step):
            self.signal_name = self.signal_name or "SIGTERM"
            return True
        return False


class _MetricWindow:
    """The train steps since the last record: their (device) metrics, tokens and wall time, less
    the time spent evaluating and checkpointing."""

    def __init__(self):
        self._reset()

    def _reset(self):
        self.metrics: list[dict] = []
        self.tokens = 0
        self.t0 = time.time()

    def add(self, metrics: dict, tokens: int) -> None:
        self.metrics.append(metrics)
        self.tokens += tokens

    def exclude(self, seconds: float) -> None:
        """Leave `seconds` (an evaluation, a save) out of tokens/s."""
        self.t0 += seconds

    def close(self) -> tuple[list[float], dict[str, float]]:
        """(the loss of every step in the window, the train record) and start a new window."""
        host = jax.device_get(self.metrics)
        dt = max(time.time() - self.t0, 1e-9)
        losses = [float(m["loss"]) for m in host]
        record = {
            "train/loss": float(np.mean(losses)),
            "train/accuracy": float(np.mean([float(m["accuracy"]) for m in host])),
            "train/grad_norm": float(host[-1]["grad_norm"]),
            "train/lr": float(host[-1]["lr"]),
            "perf/tokens_per_sec": self.tokens / dt,
            "perf/steps_per_sec": len(host) / dt,
        }
        if "aux_loss" in host[-1]:
            record["train/aux_loss"] = float(np.mean([float(m["aux_loss"]) for m in host]))
        self._reset()
        return losses, record


def _check_finite(losses: list[float], last_step: int, writer: MetricsWriter,
                  checkpoints: Checkpointer, last_good: int | None) -> None:
    """Raise TrainingDiverged at the first non-finite loss of the window ending at `last_step`,
    naming its step and the last good checkpoint (and recording the bad loss)."""
    for i, v in enumerate(losses):
        if not math.isfinite(v):
            bad_step = last_step - len(losses) + 1 + i
            where = (f"{checkpoints.path(last_good)} (step {last_good})"
                     if last_good is not None else "none (no checkpoint yet)")
            writer.write(bad_step, {"train/loss": v})
            raise TrainingDiverged(
                f"training loss became {v} at step {bad_step}; stopping. Last good "
                f"checkpoint: {where}. Lower optimizer.lr or raise optimizer.warmup_steps, "
                "then rerun to resume from it.")


class _Progress:
    """The tqdm bar and the printed lines (process 0 only)."""

    def __init__(self, config: Config, start: int, verbose: bool):
        self.verbose = verbose and jax.process_index() == 0
        self.bar = None
        if config.train.progress and jax.process_index() == 0:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=config.train.steps, initial=start, desc="train", unit="step",
                            dynamic_ncols=True, file=sys.stderr)
        self.loss = float("nan")

    def say(self, msg: str) -> None:
        if self.verbose:
            print(msg, file=sys.stderr, flush=True)

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def train(self, record: dict) -> None:
        self.loss = record["train/loss"]
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{self.loss:.4f}",
                                 tok_s=f"{record['perf/tokens_per_sec']:.0f}", refresh=False)

    def eval(self, step: int, record: dict, last: bool) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{self.loss:.4f}",
                                 eval_acc=f"{record['eval/accuracy']:.3f}", refresh=False)
        elif not last:
            self.say(f"  step {step}: eval loss {record['eval/loss']:.4f} "
                     f"accuracy {record['eval/accuracy']:.4f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _check_vocab(model_cfg: ModelConfig, source: Any, name: str) -> None:
    data_vocab = getattr(source, "vocab_size", None)
    if data_vocab is not None and data_vocab > model_cfg.vocab_size:
        raise ValueError(f"model.vocab_size={model_cfg.vocab_size} is smaller than the {name} "
                         f"vocabulary ({data_vocab}); set model.vocab_size >= {data_vocab}")


def _check_batch(config: Config, mesh) -> None:
    B, k = config.data.batch_size, config.optimizer.grad_accum
    shards, pcount = _batch_shards(mesh), jax.process_count()
    if B % shards or B % pcount:
        axes = " x ".join(f"mesh.{a}={mesh.shape[a]}" for a in BATCH_AXES if a in mesh.shape)
        raise ValueError(f"data.batch_size={B} must be divisible by the batch shards {axes} "
                         f"= {shards} and the process count {pcount}")
    if (B // shards) % k:
        raise ValueError(f"optimizer.grad_accum={k} must divide the per-shard batch "
                         f"{B // shards} (data.batch_size={B} / {shards} batch shards)")


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


def evaluate(eval_jit, params, rest, batches: list[dict[str, np.ndarray]], mesh) -> dict:
    """Masked token loss and accuracy over `batches`: {"eval/loss", "eval/accuracy"}."""
    totals = np.zeros(3)
    for b in batches:
        out = jax.device_get(eval_jit(params, rest, global_batch(b, mesh)))
        totals += [float(out["loss_sum"]), float(out["count"]), float(out["correct"])]
    n = max(totals[1], 1.0)
    return {"eval/loss": float(totals[0] / n), "eval/accuracy": float(totals[2] / n),
            "eval/tokens": int(totals[1])}


def _restore(checkpointer: Checkpointer, setup: _Setup, train_iter, workdir: pathlib.Path):
    """(state, resumed_from step or None, checkpoint meta): the newest readable checkpoint with
    the data iterator moved to it, or a fresh state."""
    restored = checkpointer.restore_latest(setup.abstract_state)
    if restored is None:
        return setup.init_state(), None, {}
    step, state, data_state, meta = restored
    # orbax may hand back namedtuples as tuples: rebuild the exact tree structure
    state = jax.tree.unflatten(jax.tree.structure(setup.abstract_state), jax.tree.leaves(state))
    train_iter.set_state(data_state)
    if jax.process_index() == 0:
        truncate_metrics(workdir / "metrics.jsonl", step)
    return state, step, meta


# --------------------------------------------------------------------------------------------
# The loop.


def run(config: Config, workdir: str | pathlib.Path | None = None, *, preset: str | None = None,
        train_source: Any = None, eval_source: Any = None, verbose: bool = True,
        _stop_after: int | None = None) -> dict[str, Any]:
    """Train `config` in `workdir` (resuming from its newest readable checkpoint).

    Args:
      config: a `research.train.Config`.
      workdir: output folder; default `runs/<preset or "run">`. The run holds it exclusively
        (`research.train.workdir.hold_workdir`) until it returns.
      preset: the preset name, recorded in config.json.
      train_source, eval_source: random-access example sources to use instead of the ones
        `config.data` names (each `source[i]` -> {"tokens", "targets", "loss_mask"[,
        "segment_ids"]}, arrays [T]).
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
      WorkdirBusy: another live run holds `workdir` (message: the workdir and its pid).
      ValueError: a config that does not fit the devices or the data.
    """
    if not isinstance(config, Config):
        raise ValueError(f"config must be a research.train.Config, got {type(config).__name__}")
    t_start = time.time()
    tc = config.train
    workdir = pathlib.Path(workdir if workdir is not None else f"runs/{preset or 'run'}").absolute()
    with contextlib.ExitStack() as cleanup:
        cleanup.enter_context(hold_workdir(workdir))
        ckpt_dir = workdir / "checkpoints"
        has_ckpt = ckpt_dir.exists() and any(p.name.isdigit() for p in ckpt_dir.iterdir())
        _compare_with_saved(config, workdir / "config.json", has_ckpt)
        if jax.process_index() == 0:
            save_config(config, workdir / "config.json", preset)

        # ---- data: sources, then the per-process iterators
        data_seed = config.data.seed if config.data.seed is not None else tc.seed
        if train_source is None or eval_source is None:
            built_train, built_eval = build_sources(config.data, data_seed)
            train_source = built_train if train_source is None else train_source
            eval_source = built_eval if eval_source is None else eval_source
        _check_vocab(config.model, train_source, "training data")
        _check_vocab(config.model, eval_source, "evaluation data")
        mesh = build_mesh(config.mesh)
        _check_batch(config, mesh)
        pidx, pcount = jax.process_index(), jax.process_count()
        B = config.data.batch_size
        train_iter = iter(train_dataset(train_source, batch_size=B, seed=data_seed,
                                        shuffle=config.data.shuffle, process_index=pidx,
                                        process_count=pcount))
        eval_data = eval_batches(eval_source, batch_size=B, num_batches=tc.eval_batches,
                                 process_index=pidx, process_count=pcount)

        # ---- model, steps and state, all under the mesh (the layers read it)
        cleanup.enter_context(jax.set_mesh(mesh))
        setup = _setup(config, mesh)
        train_step, eval_step = _make_steps(config, setup, eval_data[0])
        checkpoints = Checkpointer(ckpt_dir, keep=config.checkpoint.keep,
                                   async_save=config.checkpoint.async_save)
        cleanup.callback(checkpoints.close)
        state, resumed_from, meta = _restore(checkpoints, setup, train_iter, workdir)
        start = int(resumed_from or 0)
        if tc.stop_at_target and meta.get("reached_target"):
            start = tc.steps  # stopped at the target before: nothing left to train
        n_params = _num_params(state["params"])

        writer = MetricsWriter(workdir, enabled=jax.process_index() == 0)
        cleanup.callback(writer.close)
        progress = _Progress(config, start, verbose)
        cleanup.callback(progress.close)
        progress.say(
            f"chunkwise train: {preset or 'config'} -> {workdir}\n"
            f"  config      {workdir / 'config.json'}\n"
            f"  metrics     {workdir / 'metrics.jsonl'}\n"
            f"  tensorboard {workdir / 'tensorboard'}\n"
            f"  checkpoints {ckpt_dir}\n"
            f"  model {config.model.mixer}: {n_params:,} parameters; mesh "
            + " ".join(f"{a}={n}" for a, n in mesh.shape.items())
            + f" on {mesh.size} {jax.devices()[0].platform} device(s), {pcount} process(es)"
            + (f"\n  resuming from step {start}" if resumed_from is not None else ""))
        stop = _StopSignal()
        stop.install()
        cleanup.callback(stop.restore)

        window = _MetricWindow()
        last_good = checkpoints.latest_step()
        final_loss = meta.get("train/loss")
        last_train: dict[str, float] = {}
        last_eval: dict[str, float] = {}
        interrupted = None
        step = int(resumed_from or 0)
        for step in range(start + 1, tc.steps + 1):
            batch = next(train_iter)
            state, metrics = train_step(state, setup.rest, global_batch(batch, mesh))
            window.add(metrics, int(np.prod(batch["tokens"].shape)) * pcount)
            progress.step()
            stopping = stop.should_stop(step)

            evaluated = reached = False
            if _due(step, tc.eval_every, tc.steps):
                t0 = time.time()
                last_eval = evaluate(eval_step, state["params"], setup.rest, eval_data, mesh)
                window.exclude(time.time() - t0)
                evaluated = True
                reached = tc.stop_at_target and last_eval["eval/accuracy"] >= tc.target_accuracy

            save = stopping or reached or _due(step, config.checkpoint.every, tc.steps)
            if save or evaluated or step % tc.log_every == 0:
                losses, last_train = window.close()
                _check_finite(losses, step, writer, checkpoints, last_good)
                final_loss = losses[-1]
                writer.write(step, last_train)
                progress.train(last_train)
            if evaluated:
                writer.write(step, last_eval)
                progress.eval(step, last_eval, last=step == tc.steps)

            if save:
                t0 = time.time()
                checkpoints.save(step, state, train_iter.get_state(),
                                 {"step": step, "train/loss": final_loss,
                                  "reached_target": bool(reached), "time": time.time()},
                                 wait=stopping)
                last_good = step
                window.exclude(time.time() - t0)

            if stopping:
                interrupted = stop.signal_name or "remote"
                break
            if reached:
                progress.say(f"  step {step}: eval accuracy {last_eval['eval/accuracy']:.4f} "
                             f"reached the target {tc.target_accuracy}; stopping")
                break
            if _stop_after is not None and step >= _stop_after:
                break

        if not last_eval and interrupted is None and _stop_after is None:
            # nothing left to train (a rerun of a finished run): evaluate the restored model
            last_eval = evaluate(eval_step, state["params"], setup.rest, eval_data, mesh)
        writer.flush()
        checkpoints.wait()

    if interrupted:
        progress.say(f"stopped by {interrupted} at step {step}; checkpoint saved at "
                     f"{checkpoints.path(step)}. Rerun the same command to resume.")
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
    if jax.process_index() == 0:
        (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# --------------------------------------------------------------------------------------------
# Loading a trained model (probes, notebooks).


def restore_model(workdir: str | pathlib.Path, step: int | None = None):
    """(model, config, step): the `research.LanguageModel` of a run, with the parameters of
    checkpoint `step` (default: the newest readable one), on the default device."""
    workdir = pathlib.Path(workdir)
    config = load_config(workdir / "config.json")
    config = config.replace(mesh=MeshConfig(data=1, fsdp=1))
    mesh = build_mesh(config.mesh)
    with jax.set_mesh(mesh):
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

"""Run named probes on a trained model and write `NAME.json` and `NAME.png` into a folder.

    results = run_probes(model, config, "runs/x/probes", names=["task", "length", "decay"])

`config` is the run's training config (`research.train.config.Config`): its data section names
the task the model was trained on; probes evaluate on the held-out evaluation source that the
trainer builds from it (`research.data.build_sources`), so no training example is scored.

Probes (`PROBES`; those that apply to the task run when `names` is None, except `OPT_IN`):
  task        per-task metrics (`evaluate_task`; text: held-out loss)      task.json
  length      length extrapolation, factors x the training length         length.json/png
              (accuracy on tasks; next-token loss on text)
  kv_pairs    recall vs number of kv pairs (MQAR tasks)                    kv_pairs.json/png
  passkey     length x depth grid (Passkey task)                           passkey.json/png
  decay       per-head half-life statistics (mixers with `log_decay`)      decay.json/png
  state_norm  recurrent state norm along factors[-1] x the training length state_norm.json/png
  jrt_prompt  the task as trained vs with JRT-Prompt (the context given twice; MQAR and set
              disjointness, same problem sizes, so the sequence grows; on request:
              `--probe jrt_prompt`)                                           jrt_prompt.json
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from research.probes import plots
from research.probes.capacity import length_extrapolation, passkey_sweep, recall_vs_kv_pairs
from research.probes.dynamics import decay_statistics, state_norms
from research.probes.evaluate import evaluate_task
from research.tasks import MQAR, ForgettingMQAR, Passkey, SetDisjointness
from research.validation import check_choice, check_int, check_number

PROBES = ("task", "length", "kv_pairs", "passkey", "decay", "state_norm", "jrt_prompt")
OPT_IN = ("jrt_prompt",)  # run only when named


@dataclasses.dataclass(frozen=True)
class ProbeSettings:
    """How much each probe evaluates.

    Attributes:
      num_examples: examples per evaluation point.
      batch_size: forward batch.
      factors: length-extrapolation factors (x the training length); the largest also sets the
        length of the state-norm probe.
      kv_pairs: kv-pair counts for `kv_pairs` (None: powers of two that fit).
      depths: passkey depths.
      decay_examples: examples whose tokens feed the decay statistics.
      state_norm_examples: batch of the state-norm probe.
      state_norm_chunk: tokens per decode step of the state-norm probe.
    """

    num_examples: int = 128
    batch_size: int = 16
    factors: tuple[float, ...] = (1, 2, 4, 8, 16)
    kv_pairs: tuple[int, ...] | None = None
    depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    decay_examples: int = 8
    state_norm_examples: int = 4
    state_norm_chunk: int = 16

    def __post_init__(self):
        for name in ("num_examples", "batch_size", "decay_examples", "state_norm_examples",
                     "state_norm_chunk"):
            check_int(name, getattr(self, name), 1)
        if not self.factors:
            raise ValueError(f"factors must be a non-empty sequence of numbers > 0, "
                             f"got {self.factors!r}")
        for i, f in enumerate(self.factors):
            check_number(f"factors[{i}]", f, 0.0, exclusive_minimum=True)
        for i, d in enumerate(self.depths):
            check_number(f"depths[{i}]", d, 0.0, 1.0)


def applicable_probes(task) -> list[str]:
    """The probes that make sense for a model trained on `task` (None: a text model, for which
    `task` and `length` report the next-token loss on held-out text)."""
    names = ["task", "length"]
    if isinstance(task, (MQAR, ForgettingMQAR)):
        names.append("kv_pairs")
    if isinstance(task, Passkey):
        names.append("passkey")
    if isinstance(task, (MQAR, SetDisjointness)):
        names.append("jrt_prompt")
    return names + ["decay", "state_norm"]


def jrt_prompt_task(task):
    """`task` (MQAR or SetDisjointness) with JRT-Prompt and the same problem sizes: the sequence
    grows by the repeated context."""
    if isinstance(task, MQAR):
        return task.with_(jrt_prompt=True, seq_len=task.seq_len + (0 if task.jrt_prompt else
                                                                   task.context_len))
    s, l = task.short_size, task.long_size
    return task.with_(jrt_prompt=True, seq_len=2 * (s + l) + 4)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if math.isfinite(x) else ("inf" if x > 0 else "-inf" if x < 0 else "nan")
    if isinstance(x, np.integer):
        return int(x)
    return x


def _write_json(path: pathlib.Path, obj: Any) -> pathlib.Path:
    path.write_text(json.dumps(_jsonable(obj), indent=2) + "\n")
    return path


def eval_task_of(config) -> Any:
    """The evaluation task source of a training config (None for text data)."""
    if config.data.source != "task":
        return None
    from research.data import build_sources
    seed = config.data.seed if config.data.seed is not None else config.train.seed
    return build_sources(config.data, seed)[1]


def text_eval_source(config, length: int):
    """The held-out text windows of a text run's config, `length` tokens each."""
    from research.data import build_sources
    seed = config.data.seed if config.data.seed is not None else config.train.seed
    return build_sources(dataclasses.replace(config.data, seq_len=int(length)), seed)[1]


def _sample_tokens(config, task, n: int, length: int) -> np.ndarray:
    """int32 [n, length] inputs for the dynamics probes: task examples at that length, or
    evaluation text windows for text models."""
    if task is not None:
        try:
            t = task.with_(seq_len=length) if length != task.seq_len else task
            return t.batch(range(min(n, len(t))))["tokens"]
        except ValueError:  # the task cannot be built that long: concatenate examples instead
            per_row = -(-length // task.seq_len)
            toks = task.batch(range(n * per_row))["tokens"].reshape(n, -1)
            return toks[:, :length]
    evals = text_eval_source(config, length)
    return np.stack([evals[i]["tokens"] for i in range(min(n, len(evals)))])


def run_probes(model, config, outdir, names: Sequence[str] | None = None,
               settings: ProbeSettings | None = None) -> dict[str, Any]:
    """Run probes `names` (default: every applicable one) and write JSON and PNG to `outdir`.

    Returns {probe name: result}; also writes `outdir/summary.json` with the headline numbers.
    """
    settings = settings or ProbeSettings()
    task = eval_task_of(config)
    avail = applicable_probes(task)
    if names is None:
        names = [n for n in avail if n not in OPT_IN]
    for n in names:
        check_choice("probe names", n, PROBES)
        if n not in avail:
            raise ValueError(f"probe {n!r} does not apply to this run (data: "
                             f"{type(task).__name__ if task else config.data.source}); "
                             f"applicable: {avail}")
    out = pathlib.Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    s = settings
    train_len = task.seq_len if task is not None else config.data.seq_len
    results: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    for name in names:
        if name == "task":
            source = task if task is not None else text_eval_source(config, train_len)
            r = evaluate_task(model, source, s.num_examples, s.batch_size)
            _write_json(out / "task.json", r)
            summary.update({f"task/{k}": v for k, v in r.items()})
        elif name == "length":
            if task is not None:
                r = length_extrapolation(model, task, s.factors, s.num_examples, s.batch_size)
                metric, title = "accuracy", f"length extrapolation ({type(task).__name__})"
            else:  # text: next-token loss on held-out windows of each length
                r = []
                for f in s.factors:
                    n = round(train_len * f)
                    r.append({"factor": float(f), "seq_len": n, **evaluate_task(
                        model, text_eval_source(config, n), s.num_examples, s.batch_size)})
                metric, title = "loss", "length extrapolation (held-out text)"
            _write_json(out / "length.json", r)
            plots.plot_lines(r, "seq_len", metric, out / "length.png", logx=True,
                             vline=train_len, ylim=(0, 1.02) if metric == "accuracy" else None,
                             title=title)
            summary.update({f"length/{metric}@{row['factor']:g}x": row[metric]
                            for row in r if metric in row})
        elif name == "kv_pairs":
            r = recall_vs_kv_pairs(model, task, s.kv_pairs, s.num_examples, s.batch_size)
            _write_json(out / "kv_pairs.json", r)
            plots.plot_lines(r, "num_kv_pairs", "accuracy", out / "kv_pairs.png", logx=True,
                             ylim=(0, 1.02), title=f"recall vs kv pairs (L={task.seq_len})")
        elif name == "passkey":
            lengths = [round(task.seq_len * f) for f in s.factors]
            r = passkey_sweep(model, lengths, s.depths, task.vocab_size, s.num_examples,
                              s.batch_size, passkey_len=task.passkey_len, filler=task.filler,
                              seed=task.seed)
            _write_json(out / "passkey.json", r)
            plots.plot_heatmap(r, "seq_len", "depth", "accuracy", out / "passkey.png",
                               title="passkey accuracy")
        elif name == "decay":
            tokens = _sample_tokens(config, task, s.decay_examples, train_len)
            r = decay_statistics(model, tokens)
            _write_json(out / "decay.json",
                        {"layers": [{k: v for k, v in layer.items() if k != "half_lives"}
                                    for layer in r["layers"]]})
            plots.plot_decay(r, out / "decay.png", title="per-head decay half-life")
            for layer in r["layers"]:
                for h in layer["heads"]:
                    summary[f"decay/L{layer['layer']}H{h['head']}_median_half_life"] = \
                        h["median_half_life"]
        elif name == "state_norm":
            length = round(train_len * max(s.factors))
            length -= length % s.state_norm_chunk
            length = max(length, s.state_norm_chunk)
            tokens = _sample_tokens(config, task, s.state_norm_examples, length)
            r = state_norms(model, tokens, s.state_norm_chunk)
            _write_json(out / "state_norm.json", r)
            plots.plot_state_norms(r, out / "state_norm.png", train_len=train_len,
                                   title="recurrent state norm")
        elif name == "jrt_prompt":
            r = [{"jrt_prompt": bool(t.jrt_prompt), "seq_len": t.seq_len,
                  **evaluate_task(model, t, s.num_examples, s.batch_size)}
                 for t in (task, jrt_prompt_task(task))]
            _write_json(out / "jrt_prompt.json", r)
            summary.update({f"jrt_prompt/accuracy@{'jrt' if row['jrt_prompt'] else 'plain'}":
                            row["accuracy"] for row in r})
        results[name] = r
    _write_json(out / "summary.json", summary)
    return results

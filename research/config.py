"""`ModelConfig`: one frozen, validated dataclass for every architecture, plus named presets.

Mixer knobs are plain flat fields so a sweep can set them with `model.<field>=...`. A field left at
`None` takes the mixer's paper/FLA default (`MIXER_DEFAULTS`); `cfg.knob(mixer, field)` resolves it.

State-size knobs: `n_heads`, `expand_k`, `expand_v`, `num_slots` (gsa), `d_state` (mamba2),
`window_size` (sliding_window_attention).
Decay knobs: `decay` (gla: "none" | "fixed" | "scalar" | "vector"), `gate_logit_normalizer`,
`init_half_life` (gate bias init giving that half-life in tokens at the start of training).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from research.validation import check_bool, check_choice, check_int, check_number
from research.validation import is_int as _is_int

MIXERS = (
    "linear_attention",
    "retnet",
    "gla",
    "hgrn2",
    "gsa",
    "deltanet",
    "gated_deltanet",
    "mamba2",
    "attention",
    "sliding_window_attention",
    "lightnet",
    "mom",
    "jrt",
    "mamba",
    "s4d",
    "ttt_linear",
)
S4D_INITS = ("lin", "inv")
DECAYS = ("none", "fixed", "scalar", "vector")
FEATURE_MAPS = ("identity", "elu", "relu", "silu", "swish", "softmax", "taylor")
QK_NORMS = ("l2", "none")
IMPLS = ("auto", "reference", "xla", "pallas")
ATTENTION_IMPLS = ("auto", "xla", "cudnn")
DTYPES = ("float32", "bfloat16")

# Defaults per mixer for the fields left at None (FLA's layer defaults unless noted).
MIXER_DEFAULTS: dict[str, dict[str, Any]] = {
    "linear_attention": dict(expand_k=1.0, expand_v=1.0, feature_map="elu", use_output_gate=False),
    "retnet": dict(expand_k=1.0, expand_v=2.0, feature_map="identity", use_output_gate=True),
    "gla": dict(expand_k=0.5, expand_v=1.0, feature_map="identity", use_output_gate=True,
                decay="vector", gate_logit_normalizer=16.0),
    "hgrn2": dict(expand_k=1.0, expand_v=1.0, feature_map="swish", use_output_gate=False),
    "gsa": dict(expand_k=1.0, expand_v=1.0, feature_map="swish", use_output_gate=False,
                gate_logit_normalizer=8.0),
    "deltanet": dict(expand_k=1.0, expand_v=1.0, feature_map="silu", use_output_gate=False),
    "gated_deltanet": dict(expand_k=1.0, expand_v=2.0, feature_map="silu", use_output_gate=True),
    # mamba2: expand_v is Mamba's `expand` (d_inner = expand_v * d_model); K is d_state.
    "mamba2": dict(expand_k=1.0, expand_v=2.0, feature_map="identity", use_output_gate=True),
    "attention": dict(expand_k=1.0, expand_v=1.0, feature_map="identity", use_output_gate=False),
    "sliding_window_attention": dict(expand_k=1.0, expand_v=1.0, feature_map="identity",
                                     use_output_gate=False),
    "lightnet": dict(expand_k=1.0, expand_v=1.0, feature_map="silu", use_output_gate=True),
    "mom": dict(expand_k=1.0, expand_v=1.0, feature_map="silu", use_output_gate=True),
    "jrt": dict(expand_k=1.0, expand_v=1.0, feature_map="elu", use_output_gate=False),
    # mamba (Mamba-1): expand_v is Mamba's `expand` (d_inner = expand_v * d_model); K is d_state.
    "mamba": dict(expand_k=1.0, expand_v=2.0, feature_map="identity", use_output_gate=True),
    # s4d: E = expand_v * d_model channels; use_output_gate is the GLU of S4D's block.
    "s4d": dict(expand_k=1.0, expand_v=1.0, feature_map="identity", use_output_gate=True),
    "ttt_linear": dict(expand_k=1.0, expand_v=1.0, feature_map="identity", use_output_gate=True),
}
_KNOBS = ("expand_k", "expand_v", "feature_map", "use_output_gate", "decay", "gate_logit_normalizer")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything that defines a `LanguageModel`. Invalid values raise ValueError naming the field.

    Fields:
      mixer: token mixer of every layer (one of `MIXERS`) unless `layer_pattern` overrides it.
      layer_pattern: mixers repeated over the layers (layer i gets pattern[i % len]), for hybrids.
      attention_layers: layer indices that use global softmax attention whatever the pattern says.
      vocab_size, d_model, n_layers, n_heads: the usual sizes (d_model % n_heads == 0).
      d_ff: MLP hidden width F; None gives FLA's round_up(int(d_model * mlp_ratio * 2/3), mlp_multiple_of).
      tie_embeddings: share the input embedding with the output head.
      conv_size: width W of the short causal depthwise conv on q, k, v (Mamba2: on x, B, C) before
        the mixer's recurrence; 0 turns it off.
      expand_k, expand_v: key / value width as a multiple of d_model (split over n_heads).
      feature_map: q/k feature map (linear_attention, gsa, deltanet's qk activation, hgrn2's q).
      use_output_gate: swish output gate after the per-head output norm.
      decay: gla's decay kind: "none" (linear attention), "fixed" (per head, RetNet's multi-scale or
        `init_half_life`), "scalar" (data-dependent per head), "vector" (data-dependent per key channel).
      gate_logit_normalizer: g = logsigmoid(.) / normalizer (gla, gsa).
      gate_low_rank_dim: rank of gla's vector-gate projection.
      init_half_life: if set, gate biases start so the decay halves the state every this many tokens.
      max_half_life: gla's decay floor (Stuffed Mamba's "forget more"): if set, every per-token
        decay is at most 2^(-1 / max_half_life), i.e. the log decay g <= -ln 2 / max_half_life,
        so the state keeps at most about 1.44 * max_half_life tokens' worth of writes and its norm
        stays bounded however long the input (None: no floor, the gate may close to 1).
      qk_norm: "l2" or "none" for deltanet / gated_deltanet keys and queries.
      use_beta: deltanet's data-dependent write strength (else beta = 1).
      num_slots: gsa's M.
      d_state: mamba2's N; dt_min/dt_max: its dt init range; a_init_min/a_init_max: its A init range.
      window_size: sliding_window_attention's window (current token included).
      s4d_init: "lin" (S4D-Lin) or "inv" (S4D-Inv), the init of s4d's imaginary A parts; s4d and
        mamba also use d_state (s4d: N/2 complex modes per channel) and dt_min/dt_max.
      ttt_mini_batch, ttt_base_lr: ttt_linear's inner mini-batch b (tokens per gradient step)
        and base inner learning rate (eta_t = ttt_base_lr * sigmoid(x w_eta + b_eta) / b).
      num_memories, memory_top_k, shared_memory: mom's M memories, the k each token is routed to,
        and the always-updated shared memory; router_aux_weight: the weight of its Switch-style
        load-balancing loss in the training loss.
      ngram_layers: one static n-gram layer per entry (its n), placed after the embedding, before
        the mixer blocks (see `research.layers.ngram`); () for none.
      rope_theta: RoPE base for the attention mixers.
      norm_eps, init_std: RMSNorm epsilon, std of the normal initialisers.
      dtype: compute dtype ("float32" or "bfloat16"); parameters stay float32.
      remat: recompute each block's activations in the backward pass (nnx.remat) to save memory.
      impl, chunk_size: passed to the `pallas_kernels` ops.
      attention_impl: `jax.nn.dot_product_attention`'s implementation for the full causal pass:
        "auto" picks "cudnn" on GPU for bf16 compute and head dims that cuDNN takes, else "xla".
    """

    mixer: str = "gla"
    vocab_size: int = 256
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 2
    layer_pattern: tuple[str, ...] | None = None
    attention_layers: tuple[int, ...] = ()
    d_ff: int | None = None
    mlp_ratio: float = 4.0
    mlp_multiple_of: int = 256
    tie_embeddings: bool = True
    conv_size: int = 4
    expand_k: float | None = None
    expand_v: float | None = None
    feature_map: str | None = None
    use_output_gate: bool | None = None
    decay: str | None = None
    gate_logit_normalizer: float | None = None
    gate_low_rank_dim: int = 16
    init_half_life: float | None = None
    max_half_life: float | None = None
    qk_norm: str = "l2"
    use_beta: bool = True
    num_slots: int = 64
    d_state: int = 64
    dt_min: float = 0.001
    dt_max: float = 0.1
    a_init_min: float = 1.0
    a_init_max: float = 16.0
    window_size: int = 64
    s4d_init: str = "lin"
    ttt_mini_batch: int = 16
    ttt_base_lr: float = 1.0
    num_memories: int = 4
    memory_top_k: int = 2
    shared_memory: bool = True
    router_aux_weight: float = 0.01
    ngram_layers: tuple[int, ...] = ()
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    init_std: float = 0.02
    dtype: str = "float32"
    remat: bool = False
    impl: str = "auto"
    chunk_size: int = 64
    attention_impl: str = "auto"

    def __post_init__(self):
        if isinstance(self.layer_pattern, list):
            object.__setattr__(self, "layer_pattern", tuple(self.layer_pattern))
        if isinstance(self.attention_layers, list):
            object.__setattr__(self, "attention_layers", tuple(self.attention_layers))
        if isinstance(self.ngram_layers, list):
            object.__setattr__(self, "ngram_layers", tuple(self.ngram_layers))
        self._validate()

    # ------------------------------------------------------------------ validation
    def _fail(self, field: str, msg: str):
        raise ValueError(f"ModelConfig.{field}: {msg} (got {field}={getattr(self, field)!r})")

    def _validate(self) -> None:
        def name(field: str) -> str:  # what the messages call a field
            return f"ModelConfig.{field}"

        check_choice(name("mixer"), self.mixer, MIXERS)
        if self.layer_pattern is not None:
            if not isinstance(self.layer_pattern, tuple) or not self.layer_pattern:
                self._fail("layer_pattern", "must be a non-empty tuple of mixer names or None")
            for i, m in enumerate(self.layer_pattern):
                check_choice(name(f"layer_pattern[{i}]"), m, MIXERS)
        for field in ("vocab_size", "d_model", "n_layers", "n_heads", "mlp_multiple_of",
                      "gate_low_rank_dim", "num_slots", "d_state", "window_size", "chunk_size",
                      "num_memories", "memory_top_k", "ttt_mini_batch"):
            check_int(name(field), getattr(self, field), 1)
        if self.chunk_size & (self.chunk_size - 1):
            self._fail("chunk_size", "must be a power of two")
        check_int(name("conv_size"), self.conv_size, 0)  # 0 turns the short conv off
        check_int(name("d_ff"), self.d_ff, 1, optional=True)
        for field in ("mlp_ratio", "rope_theta", "norm_eps", "init_std", "dt_min", "dt_max",
                      "a_init_min", "a_init_max", "ttt_base_lr"):
            check_number(name(field), getattr(self, field), 0.0, exclusive_minimum=True)
        if not self.dt_min < self.dt_max:
            self._fail("dt_max", f"must be > dt_min={self.dt_min}")
        if not self.a_init_min < self.a_init_max:
            self._fail("a_init_max", f"must be > a_init_min={self.a_init_min}")
        for field in ("expand_k", "expand_v", "gate_logit_normalizer", "init_half_life",
                      "max_half_life"):
            check_number(name(field), getattr(self, field), 0.0, exclusive_minimum=True,
                         optional=True)
        check_choice(name("feature_map"), self.feature_map, FEATURE_MAPS, optional=True)
        check_choice(name("decay"), self.decay, DECAYS, optional=True)
        for field, choices in (("s4d_init", S4D_INITS), ("qk_norm", QK_NORMS), ("dtype", DTYPES),
                               ("impl", IMPLS), ("attention_impl", ATTENTION_IMPLS)):
            check_choice(name(field), getattr(self, field), choices)
        if not self.memory_top_k <= self.num_memories:
            self._fail("memory_top_k", f"must be <= num_memories={self.num_memories}")
        check_number(name("router_aux_weight"), self.router_aux_weight, 0.0)
        if not isinstance(self.ngram_layers, tuple) or not all(
                _is_int(n) and 1 <= n <= 8 for n in self.ngram_layers):
            self._fail("ngram_layers", "must be a tuple of n-gram orders n in [1, 8], e.g. (1, 2, 3)")
        for field in ("tie_embeddings", "use_beta", "remat", "shared_memory"):
            check_bool(name(field), getattr(self, field))
        check_bool(name("use_output_gate"), self.use_output_gate, optional=True)
        for i, layer in enumerate(self.attention_layers):
            check_int(name(f"attention_layers[{i}]"), layer, 0, self.n_layers - 1)
        if self.d_model % self.n_heads:
            self._fail("n_heads", f"must divide d_model={self.d_model}")
        used = set(self.layer_mixers())
        if self.decay is not None and "gla" not in used:
            self._fail("decay", f"only the gla mixer has a decay knob (retnet's is fixed, "
                                f"linear_attention has none); layers use {sorted(used)}")
        if self.max_half_life is not None and "gla" not in used:
            self._fail("max_half_life", f"only the gla mixer has a decay floor; layers use "
                                        f"{sorted(used)}")
        if self.gate_logit_normalizer is not None and not used & {"gla", "gsa"}:
            self._fail("gate_logit_normalizer", f"only gla and gsa use it; layers use {sorted(used)}")
        if "s4d" in used and self.d_state % 2:
            self._fail("d_state", "must be even for s4d (d_state / 2 complex modes per channel)")
        for mixer in sorted(used):
            self.head_dims(mixer)  # raises on widths that do not split over the heads
            if self.feature_map == "taylor" and (
                mixer == "hgrn2" or (mixer == "gla" and self.knob(mixer, "decay") == "vector")
            ):
                self._fail("feature_map", f"'taylor' widens the keys, which {mixer!r} with a "
                                          "per-key-channel gate cannot follow")

    # ------------------------------------------------------------------ derived values
    def knob(self, mixer: str, field: str):
        """The value of mixer knob `field` for `mixer`: the config's value, or the mixer's default."""
        if field not in _KNOBS:
            raise ValueError(f"field must be one of {_KNOBS}, got {field!r}")
        v = getattr(self, field)
        return MIXER_DEFAULTS[mixer].get(field) if v is None else v

    def layer_mixers(self) -> tuple[str, ...]:
        """The mixer name of each of the n_layers layers."""
        pattern = self.layer_pattern or (self.mixer,)
        names = [pattern[i % len(pattern)] for i in range(self.n_layers)]
        for i in self.attention_layers:
            names[i] = "attention"
        return tuple(names)

    def head_dims(self, mixer: str) -> tuple[int, int]:
        """(K, V): per-head key and value widths of `mixer` (mamba2: (d_state, head dim))."""
        def width(field: str) -> int:
            w = self.d_model * self.knob(mixer, field)
            if abs(w - round(w)) > 1e-9 or round(w) % self.n_heads or round(w) < self.n_heads:
                self._fail(field, f"d_model * {field} = {w} must be a positive multiple of "
                                  f"n_heads={self.n_heads} for mixer {mixer!r}")
            return int(round(w)) // self.n_heads
        if mixer in ("mamba2", "mamba"):
            return self.d_state, width("expand_v")
        return width("expand_k"), width("expand_v")

    @property
    def mlp_hidden(self) -> int:
        """F, the gated MLP's hidden width."""
        if self.d_ff is not None:
            return self.d_ff
        f = int(self.d_model * self.mlp_ratio * 2 / 3)
        return self.mlp_multiple_of * math.ceil(f / self.mlp_multiple_of)

    def replace(self, **changes) -> ModelConfig:
        """A copy with `changes` applied (validated again)."""
        return dataclasses.replace(self, **changes)


# ---------------------------------------------------------------------- presets
def _tiny(mixer: str, **kw) -> ModelConfig:
    base = dict(mixer=mixer, vocab_size=256, d_model=64, n_layers=2, n_heads=2, d_ff=128,
                conv_size=4, num_slots=16, d_state=16, window_size=16)
    base.update(kw)
    return ModelConfig(**base)


PRESETS: dict[str, ModelConfig] = {f"tiny-{m}": _tiny(m) for m in MIXERS}
PRESETS.update({
    "tiny-hybrid": _tiny("deltanet", layer_pattern=("deltanet", "sliding_window_attention")),
    "tiny-s4d": _tiny("s4d", conv_size=0),  # S4D has no short conv
    # GLA paper (Yang et al. 2023, Table 2): 340M and 1.3B, Llama tokenizer (32000), 24 layers,
    # 4 heads, expand_k 0.5, expand_v 1, SwiGLU MLP, no short conv, tied embeddings (FLA/flame).
    "gla-340m": ModelConfig(mixer="gla", vocab_size=32000, d_model=1024, n_layers=24, n_heads=4,
                            conv_size=0),
    "gla-1.3b": ModelConfig(mixer="gla", vocab_size=32000, d_model=2048, n_layers=24, n_heads=4,
                            conv_size=0),
    # DeltaNet paper (Yang et al. 2024): 340M and 1.3B, head dim 128, short conv 4, SiLU + L2 qk.
    "deltanet-340m": ModelConfig(mixer="deltanet", vocab_size=32000, d_model=1024, n_layers=24,
                                 n_heads=8, conv_size=4),
    "deltanet-1.3b": ModelConfig(mixer="deltanet", vocab_size=32000, d_model=2048, n_layers=24,
                                 n_heads=16, conv_size=4),
})
# The parameter counts the papers report for the presets above (tested within a few percent).
PAPER_PARAM_COUNTS = {
    "gla-340m": 340e6, "gla-1.3b": 1.3e9, "deltanet-340m": 340e6, "deltanet-1.3b": 1.3e9,
}


def get_preset(name: str, **overrides) -> ModelConfig:
    """The preset `name` (see `PRESETS`) with `overrides` applied."""
    if name not in PRESETS:
        raise ValueError(f"name must be one of {sorted(PRESETS)}, got {name!r}")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]

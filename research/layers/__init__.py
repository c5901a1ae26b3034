"""Token mixers, one architecture per file, and the registry `MIXER_CLASSES` (name -> class).

Every mixer is an `nnx.Module` built as `cls(cfg: ModelConfig, *, rngs)` with
  __call__(x [B, T, D], *, segment_ids=None, cache=None, pos=None) -> (y [B, T, D], new cache | None)
  init_cache(batch_size, max_length) -> cache pytree
  state_size(seq_len=None) -> floats of decode state per sequence
All but s4d derive from `common.Mixer` (mamba, mamba2: `common.SSMMixer`), which keeps the config
and head widths and builds the layers they share (q/k/v projections, output gate, norm, o_proj).
"""

from research.layers.attention import Attention
from research.layers.deltanet import DeltaNet
from research.layers.gated_deltanet import GatedDeltaNet
from research.layers.gla import GLA
from research.layers.gsa import GSA
from research.layers.hgrn2 import HGRN2
from research.layers.jrt import JRT
from research.layers.lightnet import LightNet
from research.layers.linear_attention import LinearAttention
from research.layers.mamba import Mamba
from research.layers.mamba2 import Mamba2
from research.layers.mom import MoM
from research.layers.retnet import RetNet
from research.layers.s4d import S4D
from research.layers.sliding_window_attention import SlidingWindowAttention
from research.layers.ttt_linear import TTTLinear

MIXER_CLASSES = {
    "linear_attention": LinearAttention,
    "retnet": RetNet,
    "gla": GLA,
    "hgrn2": HGRN2,
    "gsa": GSA,
    "deltanet": DeltaNet,
    "gated_deltanet": GatedDeltaNet,
    "mamba2": Mamba2,
    "attention": Attention,
    "sliding_window_attention": SlidingWindowAttention,
    "lightnet": LightNet,
    "mom": MoM,
    "jrt": JRT,
    "mamba": Mamba,
    "s4d": S4D,
    "ttt_linear": TTTLinear,
}

__all__ = ["MIXER_CLASSES", *sorted(c.__name__ for c in MIXER_CLASSES.values())]

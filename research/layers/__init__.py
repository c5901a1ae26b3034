"""Token mixers, one architecture per file, and the registry `MIXER_CLASSES` (name -> class).

Every mixer is an `nnx.Module` built as `cls(cfg: ModelConfig, *, rngs)` with
  __call__(x [B, T, D], *, segment_ids=None, cache=None, pos=None) -> (y [B, T, D], new cache | None)
  init_cache(batch_size, max_length) -> cache pytree
  state_size(seq_len=None) -> floats of decode state per sequence
"""

from research.layers.gla import GLA
from research.layers.linear_attention import LinearAttention
from research.layers.retnet import RetNet

MIXER_CLASSES = {
    "linear_attention": LinearAttention,
    "retnet": RetNet,
    "gla": GLA,
}

__all__ = ["GLA", "MIXER_CLASSES", "LinearAttention", "RetNet"]

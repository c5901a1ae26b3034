"""Sliding-window softmax attention: `research.layers.attention.SlidingWindowAttention`, whose
window is `ModelConfig.window_size` (the current token included). Kept in attention.py beside the
global variant it shares every line but the mask with; this module names the architecture."""

from research.layers.attention import SlidingWindowAttention

__all__ = ["SlidingWindowAttention"]

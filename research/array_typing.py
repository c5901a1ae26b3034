"""Notation for shapes used in every docstring of `research`, and jaxtyping aliases.

    B  batch                 T  time (sequence length)      L  vocabulary size
    D  d_model               H  heads                       K  key/query head dim
    V  value head dim        M  gsa slots                   N  mamba2 d_state
    W  short-conv width      F  MLP hidden width            S  decode cache length (max_length)
"""

from __future__ import annotations

from jaxtyping import Array, Float, Int

Tokens = Int[Array, "B T"]
SegmentIds = Int[Array, "B T"]
Hidden = Float[Array, "B T D"]
Logits = Float[Array, "B T L"]
HeadsK = Float[Array, "B T H K"]
HeadsV = Float[Array, "B T H V"]
State = Float[Array, "B H K V"]

__all__ = ["Array", "Float", "HeadsK", "HeadsV", "Hidden", "Int", "Logits", "SegmentIds", "State", "Tokens"]

"""RetNet's multi-scale retention (Sun et al. 2023), as FLA's MultiScaleRetention.

    q, k, v = conv(x W_q), conv(x W_k), conv(x W_v)          V = 2 * K by default (expand_v = 2)
    S_t = gamma_h S_{t-1} + k_t v_t^T,  gamma_h = 1 - 2^(-5-h)  (or a common `init_half_life`)
    o_t = S_t^T q_t / sqrt(K),  y = W_o (RMSNorm_head(o) * swish(x W_gate))

The decay is fixed per head (the "fixed" rung of the decay ladder): the GLA module with
`decay="fixed"`. xPos rotary embeddings are not applied (the short conv gives local order).
"""

from __future__ import annotations

from research.layers.gla import GLA


class RetNet(GLA):
    """Multi-scale retention mixer. __call__(x [B, T, D]) -> (y [B, T, D], cache or None)."""

    name = "retnet"
    forced_decay = "fixed"

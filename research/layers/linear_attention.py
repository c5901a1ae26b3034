"""Linear attention (Katharopoulos et al. 2020) with a choice of feature map.

    q, k = phi(conv(x W_q)), phi(conv(x W_k))     phi = `feature_map` (default elu + 1; "taylor" is
    v = conv(x W_v)                                the 2nd-order expansion of exp used by Based)
    S_t = S_{t-1} + k_t v_t^T,  o_t = S_t^T q_t * scale,  y = W_o RMSNorm_head(o)

No decay: the GLA module with `decay="none"`. The per-head RMSNorm replaces the usual
normaliser phi(q)^T sum phi(k), as in FLA's LinearAttention with output normalisation.
"""

from __future__ import annotations

from research.layers.gla import GLA


class LinearAttention(GLA):
    """Linear attention mixer. __call__(x [B, T, D]) -> (y [B, T, D], cache or None)."""

    name = "linear_attention"
    forced_decay = "none"

"""GLA's decay floor `max_half_life` (Stuffed Mamba's "forget more" mitigation of state
collapse): config validation, the clamp on the gate, and a bounded state on a long input."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from mixer_reference import D, tiny_cfg

from research import ModelConfig
from research.layers import MIXER_CLASSES


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_max_half_life_must_be_positive(bad):
    with pytest.raises(ValueError, match="max_half_life"):
        tiny_cfg("gla", max_half_life=bad)


def test_max_half_life_only_for_gla():
    with pytest.raises(ValueError, match="max_half_life"):
        ModelConfig(mixer="retnet", vocab_size=64, d_model=16, n_layers=1, n_heads=2,
                    max_half_life=8.0)


@pytest.mark.parametrize("decay", ["vector", "scalar", "fixed"])
def test_gate_clamped_below_floor(decay):
    x = jax.random.normal(jax.random.key(0), (2, 12, D))
    kw = dict(decay=decay, init_half_life=1024.0)
    free = MIXER_CLASSES["gla"](tiny_cfg("gla", **kw), rngs=nnx.Rngs(0))
    floored = MIXER_CLASSES["gla"](tiny_cfg("gla", max_half_life=4.0, **kw), rngs=nnx.Rngs(0))
    g0, g1 = np.asarray(free.log_decay(x)), np.asarray(floored.log_decay(x))
    cap = -math.log(2.0) / 4.0
    assert g0.max() > cap  # a half-life of 1024 is slower than the floor
    assert g1.max() <= cap + 1e-7
    np.testing.assert_allclose(g1, np.minimum(g0, cap), rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_state_bounded_on_long_input():
    """Constant input: with the floor the state norm stops growing (geometric sum), without it
    (half-life 1024) it keeps growing about linearly."""
    x = jnp.ones((1, 96, D)) * 0.5
    norms = []
    for floor in (None, 4.0):
        cfg = tiny_cfg("gla", decay="scalar", init_half_life=1024.0, max_half_life=floor,
                       conv_size=0)
        layer = MIXER_CLASSES["gla"](cfg, rngs=nnx.Rngs(0))
        cache = layer.init_cache(1, 96)
        n = []
        for T in (32, 96):
            _, c = layer(x[:, :T], cache=cache)
            n.append(float(jnp.linalg.norm(c["state"])))
        norms.append(n)
    (free32, free96), (fl32, fl96) = norms
    assert free96 > 2.0 * free32
    assert fl96 == pytest.approx(fl32, rel=1e-2)

"""Learning-rate schedules, the weight-decay mask and the optimizer chain."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import research.train as rt


def test_cosine_schedule_warms_up_then_decays_to_the_floor():
    cfg = rt.OptimizerConfig(lr=1e-2, warmup_steps=10, min_lr_ratio=0.1, schedule="cosine")
    sched = rt.learning_rate_schedule(cfg, 100)
    assert float(sched(0)) == 0.0
    assert float(sched(5)) == pytest.approx(5e-3)
    assert float(sched(10)) == pytest.approx(1e-2)
    assert float(sched(100)) == pytest.approx(1e-3)
    values = [float(sched(s)) for s in range(10, 101)]
    assert all(a >= b - 1e-12 for a, b in itertools.pairwise(values))


@pytest.mark.parametrize("schedule", ["linear", "constant"])
def test_other_schedules(schedule):
    cfg = rt.OptimizerConfig(lr=2e-3, warmup_steps=4, min_lr_ratio=0.0, schedule=schedule)
    sched = rt.learning_rate_schedule(cfg, 20)
    assert float(sched(4)) == pytest.approx(2e-3)
    end = float(sched(20))
    assert end == pytest.approx(0.0 if schedule == "linear" else 2e-3, abs=1e-9)


def test_decay_mask_skips_vectors():
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(4, 3)), "norm": {"scale": rng.normal(size=(4,))},
              "b": rng.normal(size=(3,)), "conv": rng.normal(size=(4, 2, 3))}
    mask = rt.decay_mask(params)
    assert mask == {"w": True, "norm": {"scale": False}, "b": False, "conv": True}


def test_weight_decay_only_touches_matrices_and_clipping_bounds_updates():
    cfg = rt.OptimizerConfig(lr=1e-1, warmup_steps=0, schedule="constant", weight_decay=0.5,
                             clip_norm=1.0)
    opt = rt.make_optimizer(cfg, 10)
    key = jax.random.key(1)
    params = {"w": jax.random.normal(key, (5, 4)), "b": jax.random.normal(key, (4,))}
    state = opt.init(params)
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = opt.update(zero_grads, state, params)
    # with zero gradients only the decoupled decay moves parameters
    np.testing.assert_allclose(updates["w"], -0.1 * 0.5 * params["w"], rtol=1e-6)
    np.testing.assert_allclose(updates["b"], 0.0)
    big = jax.tree.map(lambda p: 1e6 * jax.random.normal(jax.random.key(2), p.shape), params)
    clip_only = rt.make_optimizer(cfg, 10)
    u, _ = clip_only.update(big, clip_only.init(params), params)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(u))

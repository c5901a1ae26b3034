"""ttt_linear on every path against the float64 oracle (oracle64's per-token two-state
recurrence): mini-batch sizes below, equal to and above the chunk size, packed segments (the
mini-batches restart at each segment start), initial and final state, every gradient; the Pallas
kernels (both interpret flavours) on the calls they take; the semantics of a split call.
test_ops.py also runs it through the generic table tests (several decays, bf16, T = 4096)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import rel_rms
from oracle64 import compare, make_inputs

import pallas_kernels


def _check(errs, tol):
    bad = {k: v for k, v in errs.items() if not v < tol}
    assert not bad, f"relative RMS above {tol}: {bad} (all: {errs})"


@pytest.mark.parametrize("b,C", [(4, 16), (5, 16), (32, 8), pytest.param(7, 4, marks=pytest.mark.slow)])
@pytest.mark.parametrize("impl", ["xla", pytest.param("reference", marks=pytest.mark.slow)])
def test_matches_float64_with_segments_and_initial_state(impl, b, C):
    inputs, h0, seg = make_inputs("ttt_linear", B=2, T=63, H=2, K=16, V=24, seed=b + C)
    _check(compare("ttt_linear", inputs, h0, seg, impl=impl, chunk_size=C,
                   options={"mini_batch_size": b}), 1e-4)


@pytest.mark.slow  # test_ops.py runs T = 4096 with b = 16 by default
def test_long_sequence_large_steps():
    """T = 4096, b = 16, step sizes up to 1 / 4 per token (sum over a mini-batch up to 4)."""
    inputs, h0, seg = make_inputs("ttt_linear", B=1, T=4096, H=1, K=16, V=16, seed=2)
    _check(compare("ttt_linear", inputs, h0, seg, impl="xla", chunk_size=64), 1e-3)


def test_mini_batch_one_is_the_delta_rule():
    inputs, h0, seg = make_inputs("ttt_linear", T=50, seed=3)
    q, k, v, eta = (jnp.asarray(x) for x in inputs)
    kw = dict(initial_state=jnp.asarray(h0), segment_ids=jnp.asarray(seg), output_final_state=True,
              chunk_size=16)
    o1, s1 = pallas_kernels.ttt_linear(q, k, v, eta, mini_batch_size=1, **kw)
    o2, s2 = pallas_kernels.delta_rule(q, k, v, eta, **kw)
    assert rel_rms(o1, o2) < 1e-5 and rel_rms(s1, s2) < 1e-5


def test_chunk_size_does_not_change_the_answer_and_splits_at_mini_batches_chain():
    inputs, h0, _ = make_inputs("ttt_linear", T=96, seed=4, segments=False)
    q, k, v, eta = (jnp.asarray(x) for x in inputs)
    h0 = jnp.asarray(h0)
    outs = [pallas_kernels.ttt_linear(q, k, v, eta, mini_batch_size=8, initial_state=h0,
                                      chunk_size=c, impl="xla")[0] for c in (4, 8, 32, 64)]
    for o in outs[1:]:
        assert rel_rms(o, outs[0]) < 1e-5
    # two calls split at a multiple of b (40 = 5 b) equal one call
    o1, s1 = pallas_kernels.ttt_linear(q[:, :40], k[:, :40], v[:, :40], eta[:, :40],
                                       mini_batch_size=8, initial_state=h0, output_final_state=True)
    o2, _ = pallas_kernels.ttt_linear(q[:, 40:], k[:, 40:], v[:, 40:], eta[:, 40:],
                                      mini_batch_size=8, initial_state=s1)
    assert rel_rms(jnp.concatenate([o1, o2], 1), outs[0]) < 1e-5


def test_bad_mini_batch_size_and_sharding():
    inputs, _, _ = make_inputs("ttt_linear", T=8, segments=False, initial_state=False)
    args = [jnp.asarray(x) for x in inputs]
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match=f"mini_batch_size must be a positive int, got {bad!r}"):
            pallas_kernels.ttt_linear(*args, mini_batch_size=bad)
    with pytest.raises(ValueError, match="eta must have shape"):
        pallas_kernels.ttt_linear(*args[:3], args[3][..., None])


@pytest.mark.parametrize("pallas_flavour", ["tpu", "triton"], indirect=True)
@pytest.mark.parametrize("b,C", [(16, 16), (4, 16)])
def test_pallas_matches_float64(pallas_flavour, b, C):
    """The kernels' calls: no segments, C a multiple of b; ragged T, initial state."""
    inputs, h0, seg = make_inputs("ttt_linear", B=2, T=45, H=2, K=16, V=32, seed=5,
                                  segments=False)
    _check(compare("ttt_linear", inputs, h0, seg, impl="pallas", chunk_size=C,
                   options={"mini_batch_size": b}), 2e-3)


@pytest.mark.parametrize("pallas_flavour", ["triton"], indirect=True)
def test_pallas_odd_head_dims(pallas_flavour):
    """K = 24, V = 48 (Triton pads them to 32, 64), T = 21 ragged, b = 8 < C = 16."""
    inputs, h0, seg = make_inputs("ttt_linear", B=1, T=21, H=1, K=24, V=48, seed=21,
                                  segments=False)
    _check(compare("ttt_linear", inputs, h0, seg, impl="pallas", chunk_size=16,
                   options={"mini_batch_size": 8}), 2e-3)


def test_pallas_refuses_what_it_does_not_take_and_auto_falls_back():
    inputs, _, seg = make_inputs("ttt_linear", T=20)
    args = [jnp.asarray(x) for x in inputs]
    with pytest.raises(ValueError, match="packed segment_ids"):
        pallas_kernels.ttt_linear(*args, segment_ids=jnp.asarray(seg), chunk_size=16, impl="pallas")
    with pytest.raises(ValueError, match="chunk_size=16 must be a multiple of mini_batch_size=5"):
        pallas_kernels.ttt_linear(*args, mini_batch_size=5, chunk_size=16, impl="pallas")
    kernel = pallas_kernels.pallas.get("ttt_linear")
    assert kernel.takes(None, 32, mini_batch_size=16) is None
    np.testing.assert_equal(pallas_kernels.resolve_impl("ttt_linear", "auto", *args[:3], args[3:], 16),
                            "xla")

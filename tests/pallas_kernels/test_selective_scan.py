"""selective_scan (Mamba's selective SSM) on its paths against the float64 oracle (oracle64's
per-token recurrence with per-(n, p) decays): packed segments, initial and final state, every
gradient (dt and A included), weak and very strong decay (test_ops.py's cases add decays 1
and 8, bf16, T = 4096 and random shapes)."""

from __future__ import annotations

import jax.numpy as jnp
import pytest
from conftest import rel_rms
from oracle64 import compare, make_inputs

import pallas_kernels


def _check(errs, tol):
    bad = {k: v for k, v in errs.items() if not v < tol}
    assert not bad, f"relative RMS above {tol}: {bad} (all: {errs})"


@pytest.mark.parametrize("decay", [1 / 32, 30.0])
@pytest.mark.parametrize("impl", ["xla", pytest.param("reference", marks=pytest.mark.slow)])
def test_matches_float64(impl, decay):
    """decay: the typical size of dt (so of dt |A|); 30 empties the state within a token."""
    inputs, h0, seg = make_inputs("selective_scan", B=2, T=70, H=2, K=8, V=12, decay=decay,
                                  seed=int(decay * 32))
    _check(compare("selective_scan", inputs, h0, seg, impl=impl, chunk_size=16), 1e-4)


@pytest.mark.slow  # test_ops.py's test_long_sequence_stays_accurate runs T = 4096 by default
def test_long_sequence():
    inputs, h0, seg = make_inputs("selective_scan", B=1, T=4096, H=1, K=8, V=8, decay=0.02, seed=1)
    _check(compare("selective_scan", inputs, h0, seg, impl="xla", chunk_size=64), 1e-3)


def test_chunk_size_does_not_change_the_answer():
    inputs, h0, seg = make_inputs("selective_scan", T=90, K=8, V=8, decay=2.0)
    xs = [jnp.asarray(x) for x in inputs]
    outs = [pallas_kernels.selective_scan(*xs, initial_state=jnp.asarray(h0),
                                          segment_ids=jnp.asarray(seg), chunk_size=c, impl="xla")[0]
            for c in (1, 16, 128)]
    for o in outs[1:]:
        assert rel_rms(o, outs[0]) < 1e-5


def test_bad_input_and_no_kernel():
    inputs, _, _ = make_inputs("selective_scan", T=8, K=8, V=12, segments=False, initial_state=False)
    q, k, v, dt, A = (jnp.asarray(x) for x in inputs)
    with pytest.raises(ValueError, match=r"A must have shape \[2, 12, 8\]"):
        pallas_kernels.selective_scan(q, k, v, dt, A[:, :, :4])
    with pytest.raises(ValueError, match=r"dt must have shape \[2, 8, 2, 12\]"):
        pallas_kernels.selective_scan(q, k, v, dt[..., :8], A)
    with pytest.raises(ValueError, match="no Pallas kernel for selective_scan"):
        pallas_kernels.selective_scan(q, k, v, dt, A, impl="pallas")
    assert pallas_kernels.resolve_impl("selective_scan", "auto", q, k, v, (dt, A), 64) == "xla"

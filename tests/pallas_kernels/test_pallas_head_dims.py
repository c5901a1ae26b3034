"""Head dims that are not powers of two (24, 48 as K or V; gsa's slots M too) on the Pallas path of
every op that has one, against the float64 recurrence: the Triton flavour pads them in the shared stage
(`pallas.Kernel.fn`, gsa's M in its own glue), the TPU flavour takes them as full-extent blocks.
Outputs, final states and every gradient, with segments and an initial state, at ragged T."""

import pytest
from oracle64 import compare, make_inputs

import pallas_kernels

# Ops with a kernel that takes every call (selective_scan has none; ttt_linear's takes calls without
# segments only: its odd head dims are in test_ttt_linear.py).
OPS = tuple(op for op, sp in pallas_kernels.OP_SPECS.items()
            if sp.kernel is not None and sp.kernel.takes is None)


def _run(op, K, V, M):
    inputs, h, seg = make_inputs(op, B=1, T=21, H=1, K=K, V=V, M=M, decay=1.0, seed=21)
    errs = compare(op, inputs, h, seg, impl="pallas", chunk_size=16)
    assert max(errs.values()) < 2e-3, errs


@pytest.mark.parametrize("pallas_flavour", ["triton"], indirect=True)
@pytest.mark.parametrize("op", OPS)
def test_triton_pads_odd_head_dims(op, pallas_flavour):
    _run(op, K=24, V=48, M=24)


@pytest.mark.parametrize("pallas_flavour", ["tpu"], indirect=True)
@pytest.mark.parametrize("op", ["gla", "gated_delta_rule"])
def test_tpu_takes_odd_head_dims(op, pallas_flavour):
    _run(op, K=48, V=24, M=24)


@pytest.mark.slow
@pytest.mark.parametrize("pallas_flavour", ["tpu", "triton"], indirect=True)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dims", [(48, 24, 48), (96, 24, 24)], ids=["K48V24", "K96V24"])
def test_odd_head_dims_both_flavours(op, dims, pallas_flavour):
    _run(op, *dims)

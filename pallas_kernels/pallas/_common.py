"""What the Pallas kernels share: matmuls, the compute-dtype rule, compiler params, and
`pallas_call` over named operands that may be absent.

Used inside kernel bodies (`dot`, `mm`, `mm_nt`, `mm_tn`, `compute_dtype`) and around them
(`compiler_params`, `call`). Nothing here reads the ambient flavour: the stage that builds a
kernel reads `_backend.current()` once and passes the `Backend` down.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels.pallas._backend import Backend

F32 = jnp.float32
HIGHEST = lax.Precision.HIGHEST


def compute_dtype(*xs):
    """Matmul operand dtype of the kernels (arrays, refs or dtypes): their dtype when they all
    share one 16-bit float type (bf16 / f16 at tensor-core and MXU rate), else float32."""
    dts = [jnp.dtype(getattr(x, "dtype", x)) for x in xs]
    if dts[0].itemsize == 2 and all(d == dts[0] for d in dts):
        return dts[0]
    return jnp.dtype(F32)


def dot(a, b, *, trans_a: bool = False, trans_b: bool = False, cdt=None):
    """a @ b (a^T and / or b^T on request) with float32 accumulation: [M, K] @ [K, N] -> [M, N].

    Operands are cast to `cdt` (default: their common dtype, float32 when they differ); float32
    operands run at full precision (no tf32 or single-pass bf16)."""
    cdt = jnp.dtype(cdt if cdt is not None else (a.dtype if a.dtype == b.dtype else F32))
    dims = (((0 if trans_a else 1,), (1 if trans_b else 0,)), ((), ()))
    return lax.dot_general(a.astype(cdt), b.astype(cdt), dims,
                           precision=HIGHEST if cdt == F32 else None, preferred_element_type=F32)


def mm(a, b):
    """a [M, K] @ b [K, N] -> float32 [M, N]."""
    return dot(a, b)


def mm_nt(a, b):
    """a [M, K] @ b[N, K]^T -> float32 [M, N]."""
    return dot(a, b, trans_b=True)


def mm_tn(a, b):
    """a[K, M]^T @ b [K, N] -> float32 [M, N]."""
    return dot(a, b, trans_a=True)


def compiler_params(backend: Backend, semantics: tuple[str, ...], *, num_warps: int = 4,
                    num_stages: int = 2, vmem_limit: int | None = None):
    """`compiler_params` for `pl.pallas_call`: TPU dimension semantics ("parallel" /
    "arbitrary" per grid axis) and scoped VMEM limit in bytes (None: Mosaic's default), or Triton
    warps and pipeline stages."""
    if backend.kind == "tpu":
        from jax.experimental.pallas import tpu as pltpu

        return pltpu.CompilerParams(dimension_semantics=semantics, vmem_limit_bytes=vmem_limit)
    from jax.experimental.pallas import triton as plt

    return plt.CompilerParams(num_warps=num_warps, num_stages=num_stages)


Specs = Mapping[str, pl.BlockSpec] | Callable[[str], pl.BlockSpec]


def call(kernel: Callable[[dict], None], *, backend: Backend, grid: tuple[int, ...],
         inputs: Mapping[str, jax.Array | None], outputs: Mapping[str, jax.ShapeDtypeStruct | None],
         in_specs: Specs, out_specs: Specs, semantics: tuple[str, ...], name: str,
         scratch: Mapping[str, object] | None = None, num_warps: int = 4,
         num_stages: int = 2, vmem_limit: int | None = None) -> dict[str, jax.Array | None]:
    """`pl.pallas_call` over named operands, any of which may be absent (None).

    Args:
      kernel: called as `kernel(r)`, r a dict name -> Ref over inputs, outputs and scratch, with
        None for every absent input or output.
      inputs: name -> array or None; outputs: name -> `jax.ShapeDtypeStruct` or None.
      in_specs, out_specs: the BlockSpec of each present operand (a mapping, or a function of
        the name); scratch: name -> scratch shape (e.g. `pltpu.VMEM(...)`), TPU only.
      semantics, num_warps, num_stages, vmem_limit: see `compiler_params`.

    Returns:
      dict name -> output array (None for absent outputs).
    """
    spec_in = in_specs.__getitem__ if isinstance(in_specs, Mapping) else in_specs
    spec_out = out_specs.__getitem__ if isinstance(out_specs, Mapping) else out_specs
    in_names = [n for n, x in inputs.items() if x is not None]
    out_names = [n for n, x in outputs.items() if x is not None]
    scratch = dict(scratch or {})
    absent = [n for n, x in (*inputs.items(), *outputs.items()) if x is None]

    def body(*refs):
        r = dict(zip(in_names + out_names + list(scratch), refs, strict=True))
        r.update(dict.fromkeys(absent))
        kernel(r)

    kw = {"scratch_shapes": list(scratch.values())} if scratch else {}
    outs = pl.pallas_call(
        body, grid=grid, in_specs=[spec_in(n) for n in in_names],
        out_specs=[spec_out(n) for n in out_names],
        out_shape=[outputs[n] for n in out_names],
        compiler_params=compiler_params(backend, semantics, num_warps=num_warps,
                                        num_stages=num_stages, vmem_limit=vmem_limit),
        interpret=backend.interpret, name=name, **kw,
    )(*[inputs[n] for n in in_names])
    res = dict.fromkeys(absent)
    res.update(zip(out_names, outs, strict=True))
    return {n: res[n] for n in outputs}

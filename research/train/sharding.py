"""Device mesh and the one table of logical-axis rules.

The mesh has four named axes, `data`, `fsdp`, `sequence` and `tensor`
(`mesh.data x mesh.fsdp x mesh.sequence x mesh.tensor` devices):
- batches are split over `data` and `fsdp` (`("data", "fsdp")` on the batch axis) and, when
  `sequence` > 1, their length over `sequence` (LASP-2 sequence parallelism in the ops);
- parameters and optimizer state are sharded over `fsdp` (FSDP / ZeRO-3: XLA all-gathers a
  parameter where the forward needs it and reduce-scatters its gradient), and their head and MLP
  dimensions over `tensor`;
- under `with jax.set_mesh(mesh):` the layers run their ops inside `shard_map` over whichever of
  these axes the mesh has (`research.layers.common.ambient_op_sharding`).

A parameter whose `nnx.Variable` carries logical axis names (metadata `out_sharding`, e.g.
`("embed", "mlp")`, as `research.layers.common.axes` sets) is placed by `LOGICAL_AXIS_RULES`; a
parameter without names is sharded over `fsdp` on its largest dimension that `fsdp` divides
(replicated if none does). A mesh axis is never used twice in one spec, a mesh axis the mesh lacks
(or of size 1) is dropped, and a dimension that the mesh axis size does not divide stays unsharded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
SEQUENCE_AXIS = "sequence"
TENSOR_AXIS = "tensor"
MESH_AXES = (DATA_AXIS, FSDP_AXIS, SEQUENCE_AXIS, TENSOR_AXIS)
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)

# logical axis name -> mesh axis (or tuple of mesh axes, or None for replicated). Parameters name
# vocab / embed / heads / mlp / kv / conv; batches and activations name batch / length.
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH_AXES),
    ("length", SEQUENCE_AXIS),
    ("embed", FSDP_AXIS),
    ("vocab", None),
    ("heads", TENSOR_AXIS),
    ("mlp", TENSOR_AXIS),
    ("kv", None),
    ("conv", None),
)


def resolve_mesh_shape(data: int, fsdp: int, device_count: int | None = None, *,
                       sequence: int = 1, tensor: int = 1) -> tuple[int, int]:
    """(data, fsdp) with data=-1 resolved to the devices that fsdp x sequence x tensor leave over;
    ValueError (naming the fields and the device count) if they do not fit."""
    n = jax.device_count() if device_count is None else device_count
    for name, v in (("mesh.fsdp", fsdp), ("mesh.sequence", sequence), ("mesh.tensor", tensor)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    rest = fsdp * sequence * tensor
    if rest > n or (data == -1 and n % rest):
        if sequence == tensor == 1:
            raise ValueError(f"mesh.fsdp must divide the device count {n}, got mesh.fsdp={fsdp}")
        raise ValueError(f"mesh.fsdp x mesh.sequence x mesh.tensor must divide the device count "
                         f"{n}, got {fsdp} x {sequence} x {tensor}")
    if data == -1:
        data = n // rest
    shown = f"mesh.data={data}, mesh.fsdp={fsdp}"
    if sequence != 1 or tensor != 1:
        shown += f", mesh.sequence={sequence}, mesh.tensor={tensor}"
    if not isinstance(data, int) or data < 1 or data * rest > n:
        product = "mesh.data x mesh.fsdp" + (" x mesh.sequence x mesh.tensor" if rest != fsdp
                                              else "")
        raise ValueError(f"{product} must be <= the device count {n}, got {shown}")
    if jax.process_count() > 1 and data * rest != n:
        raise ValueError(f"with {jax.process_count()} processes the mesh must use all {n} "
                         f"devices, got {shown}")
    return data, fsdp


def make_mesh(data: int = -1, fsdp: int = 1, *, sequence: int = 1, tensor: int = 1,
              devices: Sequence[Any] | None = None) -> Mesh:
    """A Mesh with axes ("data", "fsdp", "sequence", "tensor") of shape (data, fsdp, sequence,
    tensor) (`data=-1`: all other devices).

    `devices` defaults to `jax.devices()` (abstract TPU devices from
    `jax.experimental.topologies.get_topology_desc(...).devices` work too: ahead-of-time
    compilation). Uses every device when the product is their count, else the first ones
    (single-process only). Axes of size 1 are kept: the layers and the rules ignore them.
    """
    devices = list(jax.devices() if devices is None else devices)
    data, fsdp = resolve_mesh_shape(data, fsdp, len(devices), sequence=sequence, tensor=tensor)
    shape = (data, fsdp, sequence, tensor)
    n = math.prod(shape)
    if n == len(devices):
        try:
            from jax.experimental import mesh_utils
            grid = mesh_utils.create_device_mesh(shape, devices=devices)
        except Exception:  # noqa: BLE001 - unusual topologies: fall back to plain order
            grid = np.array(devices).reshape(shape)
    else:
        grid = np.array(devices[:n]).reshape(shape)
    return Mesh(grid, MESH_AXES)


def mesh_axes_in(mesh: Any, axes: Any) -> tuple[str, ...]:
    """The axes of `axes` (a name, a tuple of names or None) that `mesh` has with size > 1."""
    if axes is None:
        return ()
    tup = (axes,) if isinstance(axes, str) else tuple(axes)
    return tuple(a for a in tup if mesh.shape.get(a, 1) > 1)


def rules_for_mesh(mesh: Any, rules: Sequence[tuple[str, Any]] = LOGICAL_AXIS_RULES,
                   ) -> tuple[tuple[str, Any], ...]:
    """`rules` with every mesh axis that `mesh` lacks (or has at size 1) dropped: the form
    flax's `sharding_rules` / `logical_axis_rules` take for this mesh."""
    out = []
    for name, axes in rules:
        tup = mesh_axes_in(mesh, axes)
        out.append((name, None if not tup else tup[0] if len(tup) == 1 else tup))
    return tuple(out)


def _axis_size(mesh: Mesh, axes: Any) -> int:
    if axes is None:
        return 1
    if isinstance(axes, str):
        axes = (axes,)
    return math.prod(mesh.shape[a] for a in axes)


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules: Sequence[tuple[str, Any]] = LOGICAL_AXIS_RULES) -> P:
    """PartitionSpec for an array of `shape` whose dimensions carry logical `names`.

    Unknown names and dimensions the mesh axes do not divide stay unsharded; a mesh axis is used
    at most once.
    """
    if len(names) != len(shape):
        raise ValueError(f"logical names {tuple(names)} must match the array rank of shape "
                         f"{tuple(shape)}")
    table = dict(rules)
    used: set[str] = set()
    out = []
    for name, dim in zip(names, shape):
        axes = table.get(name) if name is not None else None
        if axes is not None:
            tup = (axes,) if isinstance(axes, str) else tuple(axes)
            tup = tuple(a for a in tup if a in mesh.shape and a not in used)
            if tup and dim % _axis_size(mesh, tup) == 0 and _axis_size(mesh, tup) > 1:
                used.update(tup)
                out.append(tup[0] if len(tup) == 1 else tup)
                continue
        out.append(None)
    return P(*out)


def fsdp_spec(shape: Sequence[int], mesh: Mesh) -> P:
    """Default spec for an unannotated array: `fsdp` on its largest dimension that the fsdp size
    divides (ties: the first), replicated if none does or fsdp is 1."""
    n = mesh.shape.get(FSDP_AXIS, 1)
    if n == 1 or not shape:
        return P()
    best = None
    for i, d in enumerate(shape):
        if d % n == 0 and (best is None or d > shape[best]):
            best = i
    if best is None:
        return P()
    return P(*[FSDP_AXIS if i == best else None for i in range(len(shape))])


def _variable_names(var: Any) -> tuple | None:
    get = getattr(var, "get_metadata", None)
    if get is None:
        return None
    try:
        meta = get()
    except TypeError:
        return None
    names = meta.get("out_sharding") if isinstance(meta, dict) else None
    if names is None or isinstance(names, (NamedSharding,)):
        return None
    return tuple(names)


def param_shardings(abstract_params: Any, mesh: Mesh,
                    rules: Sequence[tuple[str, Any]] = LOGICAL_AXIS_RULES) -> Any:
    """NamedSharding per parameter of an `nnx.State` of (abstract) Variables, as a pure dict with
    the same structure as `nnx.to_pure_dict(abstract_params)`."""
    from flax import nnx

    def one(var):
        value = var.get_value() if isinstance(var, nnx.Variable) else var
        shape = tuple(value.shape)
        names = _variable_names(var)
        if names is not None and len(names) == len(shape):
            spec = logical_to_spec(names, shape, mesh, rules)
        else:
            spec = fsdp_spec(shape, mesh)
        return NamedSharding(mesh, spec)

    specs = jax.tree.map(one, abstract_params, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return nnx.to_pure_dict(specs)


def batch_spec(mesh: Mesh, ndim: int = 2) -> P:
    """PartitionSpec of a batch array [B, L, ...]: B over ("data", "fsdp"), L over "sequence"
    (where the mesh has it, size > 1), the rest replicated."""
    if ndim < 1:
        raise ValueError(f"ndim must be >= 1 for a batch array [B, ...], got {ndim}")
    seq = mesh_axes_in(mesh, SEQUENCE_AXIS)
    rest = [None] * (ndim - 1)
    if seq and ndim >= 2:
        rest[0] = SEQUENCE_AXIS
    return P(BATCH_AXES, *rest)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Sharding of a batch array [B, L, ...]: `batch_spec` on `mesh`."""
    return NamedSharding(mesh, batch_spec(mesh, ndim))


def replicated(mesh: Mesh) -> NamedSharding:
    """A fully replicated sharding on `mesh`."""
    return NamedSharding(mesh, P())


def optimizer_shardings(optimizer, abstract_opt_state: Any, params_sharding: Any,
                        mesh: Mesh) -> Any:
    """Shardings of the optimizer state: every per-parameter leaf (Adam's mu and nu) follows its
    parameter; everything else (step counts) is replicated.

    Executes nothing (optax initialises the optimizer on placeholders: that runs under
    `jax.eval_shape`), so it also works on a mesh of abstract TPU devices (ahead-of-time
    compilation) under `jax.set_mesh`."""
    import optax
    rep = replicated(mesh)
    out = {}

    def trace():
        out["shardings"] = optax.tree_map_params(
            optimizer, lambda _, s: s, abstract_opt_state, params_sharding,
            transform_non_params=lambda _: rep,
            is_leaf=lambda x: isinstance(x, NamedSharding))
        return ()

    jax.eval_shape(trace)
    return out["shardings"]


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assemble each process's rows into global jax.Arrays sharded as `batch_sharding`."""
    return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim), v)
            for k, v in local_batch.items()}


def describe_sharding(tree: Any) -> dict[str, str]:
    """{path: PartitionSpec string} for every array in `tree` (for logs and tests)."""
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        sharding = getattr(leaf, "sharding", None)
        spec = getattr(sharding, "spec", None)
        out[jax.tree_util.keystr(path)] = str(spec) if spec is not None else str(sharding)
    return out

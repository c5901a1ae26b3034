"""Device mesh and the one table of logical-axis rules.

The mesh has two named axes, `data` and `fsdp` (`mesh.data x mesh.fsdp` devices):
- batches are split over both (`("data", "fsdp")` on the batch axis);
- parameters and optimizer state are sharded over `fsdp` (FSDP / ZeRO-3: XLA all-gathers a
  parameter where the forward needs it and reduce-scatters its gradient).

A parameter whose `nnx.Variable` carries logical axis names (metadata `out_sharding`, e.g.
`("embed", "mlp")`, as `nnx.with_partitioning` sets) is placed by `LOGICAL_AXIS_RULES`; a
parameter without names is sharded over `fsdp` on its largest dimension that `fsdp` divides
(replicated if none does). A mesh axis is never used twice in one spec, and a dimension that the
mesh axis size does not divide stays unsharded.
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
MESH_AXES = (DATA_AXIS, FSDP_AXIS)
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)

# logical axis name -> mesh axis (or tuple of mesh axes, or None for replicated)
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH_AXES),
    ("activation_batch", BATCH_AXES),
    ("embed", FSDP_AXIS),
    ("vocab", None),
    ("heads", None),
    ("kv", None),
    ("mlp", None),
    ("length", None),
    ("activation_length", None),
    ("activation_embed", None),
    ("conv", None),
    ("state", None),
)


def resolve_mesh_shape(data: int, fsdp: int, device_count: int | None = None) -> tuple[int, int]:
    """(data, fsdp) with data=-1 resolved to the devices left over; ValueError if they do not fit.
    """
    n = jax.device_count() if device_count is None else device_count
    if fsdp < 1 or fsdp > n or (data == -1 and n % fsdp):
        raise ValueError(f"mesh.fsdp must divide the device count {n}, got mesh.fsdp={fsdp}")
    if data == -1:
        data = n // fsdp
    if data < 1 or data * fsdp > n:
        raise ValueError(f"mesh.data x mesh.fsdp must be <= the device count {n}, got "
                         f"mesh.data={data}, mesh.fsdp={fsdp}")
    if jax.process_count() > 1 and data * fsdp != n:
        raise ValueError(f"with {jax.process_count()} processes mesh.data x mesh.fsdp must use "
                         f"all {n} devices, got {data} x {fsdp}")
    return data, fsdp


def make_mesh(data: int = -1, fsdp: int = 1) -> Mesh:
    """A Mesh with axes ("data", "fsdp") of shape (data, fsdp) (`data=-1`: all other devices).

    Uses every device (in `jax.devices()` order) when the product is the device count, else the
    first `data * fsdp` devices (single-process only).
    """
    data, fsdp = resolve_mesh_shape(data, fsdp)
    devices = jax.devices()
    if data * fsdp == len(devices):
        try:
            from jax.experimental import mesh_utils
            grid = mesh_utils.create_device_mesh((data, fsdp), devices=devices)
        except Exception:  # noqa: BLE001 - unusual topologies: fall back to plain order
            grid = np.array(devices).reshape(data, fsdp)
    else:
        grid = np.array(devices[: data * fsdp]).reshape(data, fsdp)
    return Mesh(grid, MESH_AXES)


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


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Sharding of a batch array [B, ...]: B over ("data", "fsdp"), the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    """A fully replicated sharding on `mesh`."""
    return NamedSharding(mesh, P())


def optimizer_shardings(optimizer, abstract_opt_state: Any, params_sharding: Any,
                        mesh: Mesh) -> Any:
    """Shardings of the optimizer state: every per-parameter leaf (Adam's mu and nu) follows its
    parameter; everything else (step counts) is replicated."""
    import optax
    rep = replicated(mesh)
    return optax.tree_map_params(
        optimizer, lambda _, s: s, abstract_opt_state, params_sharding,
        transform_non_params=lambda _: rep,
        is_leaf=lambda x: isinstance(x, NamedSharding))


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assemble each process's rows into global jax.Arrays sharded over ("data", "fsdp")."""
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

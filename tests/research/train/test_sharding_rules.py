"""Logical-axis rules and the default FSDP placement (no devices needed: an abstract mesh)."""

import pytest
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

from research.train.sharding import (
    LOGICAL_AXIS_RULES,
    fsdp_spec,
    logical_to_spec,
    resolve_mesh_shape,
)

MESH = AbstractMesh((2, 4), ("data", "fsdp"))


def test_logical_names_follow_the_rules():
    rules = dict(LOGICAL_AXIS_RULES)
    assert rules["embed"] == "fsdp" and rules["batch"] == ("data", "fsdp")
    assert logical_to_spec(("embed", "mlp"), (64, 256), MESH) == P("fsdp", None)
    assert logical_to_spec(("batch", "length"), (16, 64), MESH) == P(("data", "fsdp"), None)
    # a dimension the mesh axis does not divide stays whole; a mesh axis is used once
    assert logical_to_spec(("embed", "mlp"), (6, 256), MESH) == P(None, None)
    assert logical_to_spec(("embed", "embed"), (8, 8), MESH) == P("fsdp", None)
    with pytest.raises(ValueError, match="rank"):
        logical_to_spec(("embed",), (8, 8), MESH)


def test_unannotated_arrays_shard_their_largest_divisible_dimension():
    assert fsdp_spec((64, 256), MESH) == P(None, "fsdp")
    assert fsdp_spec((256, 6), MESH) == P("fsdp", None)
    assert fsdp_spec((3, 5), MESH) == P()
    assert fsdp_spec((), MESH) == P()
    assert fsdp_spec((8, 8), AbstractMesh((8, 1), ("data", "fsdp"))) == P()


def test_mesh_shape_resolution():
    assert resolve_mesh_shape(-1, 4, device_count=8) == (2, 4)
    assert resolve_mesh_shape(2, 2, device_count=8) == (2, 2)
    with pytest.raises(ValueError, match="mesh.fsdp must divide the device count 8"):
        resolve_mesh_shape(-1, 3, device_count=8)
    with pytest.raises(ValueError, match="mesh.data x mesh.fsdp must be <= the device count"):
        resolve_mesh_shape(4, 4, device_count=8)

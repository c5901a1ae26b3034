"""Logical-axis rules, the default FSDP placement, the 4-axis mesh and the layers' parameters under
an ambient mesh (no devices needed: abstract meshes)."""

import jax
import pytest
from flax import nnx
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

import research
from research.train.sharding import (
    LOGICAL_AXIS_RULES,
    MESH_AXES,
    batch_spec,
    fsdp_spec,
    logical_to_spec,
    resolve_mesh_shape,
    rules_for_mesh,
)

MESH = AbstractMesh((2, 4), ("data", "fsdp"))
MESH4 = AbstractMesh((1, 2, 2, 2), MESH_AXES)


def test_logical_names_follow_the_rules():
    rules = dict(LOGICAL_AXIS_RULES)
    assert rules["embed"] == "fsdp" and rules["batch"] == ("data", "fsdp")
    assert rules["heads"] == "tensor" and rules["length"] == "sequence"
    assert logical_to_spec(("embed", "mlp"), (64, 256), MESH) == P("fsdp", None)
    assert logical_to_spec(("batch", "length"), (16, 64), MESH) == P(("data", "fsdp"), None)
    # a dimension the mesh axis does not divide stays whole; a mesh axis is used once
    assert logical_to_spec(("embed", "mlp"), (6, 256), MESH) == P(None, None)
    assert logical_to_spec(("embed", "embed"), (8, 8), MESH) == P("fsdp", None)
    with pytest.raises(ValueError, match="rank"):
        logical_to_spec(("embed",), (8, 8), MESH)


def test_four_axis_rules():
    assert logical_to_spec(("embed", "heads"), (64, 256), MESH4) == P("fsdp", "tensor")
    assert logical_to_spec(("heads", "embed"), (3, 64), MESH4) == P(None, "fsdp")
    assert logical_to_spec(("batch", "length"), (4, 64), MESH4) == P(("data", "fsdp"), "sequence")
    # axes the mesh lacks or has at size 1 are dropped from the rules
    assert dict(rules_for_mesh(MESH))["heads"] is None
    assert dict(rules_for_mesh(MESH4))["batch"] == "fsdp"
    assert batch_spec(MESH4, 2) == P(("data", "fsdp"), "sequence")
    assert batch_spec(MESH, 2) == P(("data", "fsdp"), None)
    # every rule's name is used by the model or the batch
    assert {n for n, _ in LOGICAL_AXIS_RULES} == {"batch", "length", "embed", "vocab", "heads",
                                                  "mlp", "kv", "conv"}


def test_unannotated_arrays_shard_their_largest_divisible_dimension():
    assert fsdp_spec((64, 256), MESH) == P(None, "fsdp")
    assert fsdp_spec((256, 6), MESH) == P("fsdp", None)
    assert fsdp_spec((3, 5), MESH) == P()
    assert fsdp_spec((), MESH) == P()
    assert fsdp_spec((8, 8), AbstractMesh((8, 1), ("data", "fsdp"))) == P()


def test_mesh_shape_resolution():
    assert resolve_mesh_shape(-1, 4, device_count=8) == (2, 4)
    assert resolve_mesh_shape(2, 2, device_count=8) == (2, 2)
    assert resolve_mesh_shape(-1, 1, device_count=8, sequence=4) == (2, 1)
    assert resolve_mesh_shape(-1, 2, device_count=8, sequence=2, tensor=2) == (1, 2)
    with pytest.raises(ValueError, match="mesh.fsdp must divide the device count 8"):
        resolve_mesh_shape(-1, 3, device_count=8)
    with pytest.raises(ValueError, match="mesh.data x mesh.fsdp must be <= the device count"):
        resolve_mesh_shape(4, 4, device_count=8)
    with pytest.raises(ValueError, match="mesh.fsdp x mesh.sequence x mesh.tensor must divide"):
        resolve_mesh_shape(-1, 1, device_count=8, sequence=3)
    with pytest.raises(ValueError, match="mesh.sequence must be an int >= 1"):
        resolve_mesh_shape(-1, 1, device_count=8, sequence=0)


@pytest.mark.parametrize("preset", ["tiny-gla", "tiny-mamba2", "tiny-hybrid"])
def test_model_builds_under_an_ambient_mesh(preset):
    """nnx.eval_shape of the model inside jax.set_mesh: the logical names resolve through the
    project's rules on that mesh (absent axes dropped, indivisible dimensions whole)."""
    cfg = research.get_preset(preset)
    auto = (jax.sharding.AxisType.Auto,) * 4  # as make_mesh's meshes
    mesh = jax.sharding.AbstractMesh((1, 2, 2, 2), MESH_AXES, axis_types=auto)
    with jax.sharding.use_abstract_mesh(mesh):
        model = nnx.eval_shape(lambda: research.LanguageModel(cfg, rngs=nnx.Rngs(0)))
    params = nnx.state(model, nnx.Param)
    specs = {jax.tree_util.keystr(p): v.sharding.spec
             for p, v in jax.tree_util.tree_leaves_with_path(params)}
    mlp = next(s for k, s in specs.items() if "gate_proj" in k)
    assert mlp == P("fsdp", "tensor")
    for k, s in specs.items():
        assert all(a in (None, "fsdp", "tensor") for a in s), (k, s)
    # a 2-axis mesh lacking sequence / tensor also works (the old error: "Resource axis: embed
    # of P('embed', 'heads') is not found in mesh")
    mesh2 = jax.sharding.AbstractMesh((2, 4), ("data", "fsdp"), axis_types=auto[:2])
    with jax.sharding.use_abstract_mesh(mesh2):
        model = nnx.eval_shape(lambda: research.LanguageModel(cfg, rngs=nnx.Rngs(0)))
    for v in jax.tree.leaves(nnx.state(model, nnx.Param)):
        assert all(a in (None, "fsdp") for a in v.sharding.spec)

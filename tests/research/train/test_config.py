"""Config dataclasses, presets, `key=value` overrides (through OmegaConf) and JSON / YAML files."""

import json

import pytest

import research
import research.train as rt


def test_presets_build_and_hold_a_model_config():
    for name in rt.PRESETS:
        cfg = rt.get_preset(name)
        assert isinstance(cfg, rt.Config)
        assert isinstance(cfg.model, research.ModelConfig)
    demo = rt.get_preset("mqar-tiny")
    assert demo.model.mixer == "gla" and demo.model.d_model == 64 and demo.model.n_layers == 2
    assert demo.model.conv_size == 4
    assert demo.data.task_args == {"vocab_size": 256, "seq_len": 64, "num_kv_pairs": 4}
    assert demo.data.batch_size == 64 and demo.optimizer.lr == 3e-3
    assert demo.optimizer.warmup_steps == 100 and demo.optimizer.clip_norm == 1.0


def test_unknown_preset_lists_presets():
    with pytest.raises(ValueError, match="mqar-tiny"):
        rt.get_preset("nope")


def test_required_keys_override_with_types():
    cfg = rt.get_preset("mqar-tiny").override(
        "model.mixer=deltanet", "train.steps=123", "train.seed=7", "checkpoint.every=11",
        "mesh.data=2", "mesh.fsdp=4", "optimizer.lr=1e-3", "train.progress=false",
        "data.task_args.num_kv_pairs=8", "model.layer_pattern=deltanet,attention",
        "train.stop_at_target=false", "train.target_accuracy=none")
    assert cfg.model.mixer == "deltanet"
    assert cfg.train.steps == 123 and isinstance(cfg.train.steps, int)
    assert cfg.train.seed == 7 and cfg.checkpoint.every == 11
    assert (cfg.mesh.data, cfg.mesh.fsdp) == (2, 4)
    assert cfg.optimizer.lr == pytest.approx(1e-3)
    assert cfg.train.progress is False
    assert cfg.data.task_args["num_kv_pairs"] == 8 and cfg.data.task_args["vocab_size"] == 256
    assert cfg.model.layer_pattern == ("deltanet", "attention")
    assert cfg.train.target_accuracy is None


def test_unknown_key_lists_valid_keys():
    cfg = rt.get_preset("mqar-tiny")
    with pytest.raises(ValueError, match="valid keys:.*train.steps") as e:
        cfg.override("train.stepz=3")
    assert "model.mixer" in str(e.value) and "mesh.fsdp" in str(e.value)
    with pytest.raises(ValueError, match="valid keys"):
        cfg.override("trainer.steps=3")
    with pytest.raises(ValueError, match="section.field=value"):
        cfg.override("train.steps")
    with pytest.raises(ValueError, match=r"'train.stepz'; did you mean train.steps"):
        cfg.override("train.stepz=3")
    with pytest.raises(ValueError, match="'train' is a section; set one of its fields"):
        cfg.override("train=3")


@pytest.mark.parametrize("override, message", [
    ("train.steps=0", "train.steps must be >= 1"),
    ("train.steps=abc", "must be an integer"),
    ("train.steps=2.5", "must be an integer"),
    ("mesh.fsdp=0", "mesh.fsdp must be >= 1"),
    ("mesh.data=0", "mesh.data must be >= 1 or -1"),
    ("optimizer.lr=-1", "optimizer.lr must be > 0"),
    ("optimizer.schedule=step", "optimizer.schedule must be one of"),
    ("checkpoint.every=0", "checkpoint.every must be >= 1"),
    ("data.source=web", "data.source must be one of"),
    ("model.mixer=transformer", "mixer"),
    ("train.compute_dtype=float16", "train.compute_dtype must be one of"),
    ("train.progress=maybe", "train.progress must be true or false, got 'maybe'"),
    ("train.target_accuracy=high", "train.target_accuracy must be a number or null"),
    ("data.task_args=3", "data.task_args must be a mapping"),
    ("mesh.sequence=0", "mesh.sequence must be >= 1, got 0"),
    ("mesh.tensor=-2", "mesh.tensor must be >= 1, got -2"),
    ("model.d_model=0", "ModelConfig.d_model"),
])
def test_bad_values_name_the_allowed_range(override, message):
    with pytest.raises(ValueError, match=message):
        rt.get_preset("mqar-tiny").override(override)


def test_warmup_must_fit_in_steps():
    with pytest.raises(ValueError, match="warmup_steps must be < train.steps"):
        rt.get_preset("mqar-tiny").override("optimizer.schedule=cosine", "train.steps=50")
    cfg = rt.get_preset("mqar-tiny").override("optimizer.schedule=cosine", "train.steps=50",
                                              "optimizer.warmup_steps=5")
    assert cfg.train.steps == 50


def test_json_round_trip(tmp_path):
    cfg = rt.get_preset("mqar-tiny").override("model.layer_pattern=deltanet,attention",
                                              "data.paths=a.txt,b.txt", "data.source=text")
    rt.save_config(cfg, tmp_path / "config.json", preset="mqar-tiny")
    raw = json.loads((tmp_path / "config.json").read_text())
    assert raw["preset"] == "mqar-tiny" and raw["model"]["mixer"] == "gla"
    back = rt.load_config(tmp_path)
    assert back == cfg
    assert back.model.layer_pattern == ("deltanet", "attention")
    assert back.data.paths == ("a.txt", "b.txt")
    with pytest.raises(ValueError, match="unknown config key 'train.bogus'"):
        rt.config_from_dict({**raw, "train": {**raw["train"], "bogus": 1}})


def test_valid_keys_cover_every_section():
    keys = rt.valid_keys(rt.get_preset("mqar-tiny"))
    for key in ("model.mixer", "train.steps", "train.seed", "checkpoint.every", "mesh.data",
                "mesh.fsdp", "optimizer.grad_accum", "data.batch_size"):
        assert key in keys


def test_mesh_axes_default_to_one_and_override():
    cfg = rt.get_preset("mqar-tiny")
    assert (cfg.mesh.sequence, cfg.mesh.tensor) == (1, 1)
    cfg = cfg.override("mesh.sequence=2", "mesh.tensor=4")
    assert (cfg.mesh.sequence, cfg.mesh.tensor) == (2, 4)


def test_library_syntax_and_the_older_spellings():
    """OmegaConf's dot-list values ([a,b], null) and the older command line's (a,b, none, 1e3)."""
    base = rt.get_preset("mqar-tiny")
    for pattern in ("[deltanet,attention]", "deltanet,attention"):
        assert base.override(f"model.layer_pattern={pattern}").model.layer_pattern == (
            "deltanet", "attention")
    for null in ("null", "none", "None"):
        cfg = base.override("train.stop_at_target=false", f"train.target_accuracy={null}")
        assert cfg.train.target_accuracy is None
    assert base.override("model.decay=none").model.decay == "none"  # a string field keeps "none"
    assert base.override("train.steps=1e3").train.steps == 1000
    assert base.override("data.task_args={num_kv_pairs: 8}").data.task_args == {
        "vocab_size": 256, "seq_len": 64, "num_kv_pairs": 8}


def test_yaml_files_round_trip_and_partial_files_merge(tmp_path):
    cfg = rt.get_preset("mqar-tiny").override("model.mixer=deltanet", "mesh.sequence=2")
    rt.save_config(cfg, tmp_path / "c.yaml", preset="mqar-tiny")
    assert "mixer: deltanet" in (tmp_path / "c.yaml").read_text()
    assert rt.load_config(tmp_path / "c.yaml") == cfg
    (tmp_path / "part.yaml").write_text("train:\n  steps: 77\nmodel:\n  d_model: 32\n")
    part = rt.load_config(tmp_path / "part.yaml", base=rt.get_preset("mqar-tiny"))
    assert part.train.steps == 77 and part.model.d_model == 32 and part.model.mixer == "gla"
    (tmp_path / "bad.yaml").write_text("train:\n  stepz: 77\n")
    with pytest.raises(ValueError, match="unknown config key 'train.stepz'"):
        rt.load_config(tmp_path / "bad.yaml")
    with pytest.raises(ValueError, match="does not exist"):
        rt.load_config(tmp_path / "missing.yaml")


def test_config_items_are_the_list_keys():
    items = dict(rt.config_items(rt.get_preset("mqar-tiny")))
    assert items["model.mixer"] == "gla" and items["mesh.tensor"] == 1
    assert items["data.task_args"] == {"vocab_size": 256, "seq_len": 64, "num_kv_pairs": 4}
    assert list(items) == rt.valid_keys(rt.get_preset("mqar-tiny"))

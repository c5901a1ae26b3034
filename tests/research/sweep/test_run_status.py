"""A sweep skips a run whose result.json holds its config, even when the saved config predates
a field added to the configs since (the field takes its default); any real change retrains."""

import json

from research import ModelConfig
from research.sweep import Run, task_config
from research.sweep.runner import _config_dict, _for_sweep, run_status


def _run():
    model = ModelConfig(mixer="gla", vocab_size=32, d_model=8, n_layers=1, n_heads=2)
    return Run(name="r", config=task_config(model, "MQAR", {"vocab_size": 32, "seq_len": 16,
                                                            "num_kv_pairs": 2}, steps=4))


def _save(run_dir, config):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "result.json").write_text(json.dumps({"config": config}))


def test_saved_config_without_newer_fields_is_done(tmp_path):
    run = _run()
    saved = _config_dict(_for_sweep(run.config))
    assert run_status(run, tmp_path / "r") == "todo"
    saved["train"].pop("loss_chunk_size")  # written before the field existed
    _save(tmp_path / "r", saved)
    assert run_status(run, tmp_path / "r") == "done"


def test_changed_or_unknown_config_is_not_done(tmp_path):
    run = _run()
    saved = _config_dict(_for_sweep(run.config))
    saved["train"]["steps"] += 1
    _save(tmp_path / "a", saved)
    assert run_status(run, tmp_path / "a") == "todo"
    saved = _config_dict(_for_sweep(run.config))
    saved["train"]["no_such_field"] = 1
    _save(tmp_path / "b", saved)
    assert run_status(run, tmp_path / "b") == "todo"
    _save(tmp_path / "c", "not a dict")
    assert run_status(run, tmp_path / "c") == "todo"

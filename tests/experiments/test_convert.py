"""experiments.convert (T2R): an attention run becomes a recurrent run whose untouched parameters
are the source's bit for bit, whose mixer starts from the attention q/k/v/o projections where the
shapes match, and which `experiments.train` then trains from its step-0 checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flax import nnx, traverse_util

import research.train as rt
from experiments import convert
from experiments import train as train_cli


def _flat(model):
    return {".".join(map(str, k)): np.asarray(v)
            for k, v in traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model, nnx.Param))).items()}


def test_convert_attention_to_gsa_then_train(tmp_path, capsys):
    src = tmp_path / "attn"
    cfg = rt.get_preset("test-tiny").override("model.mixer=attention", "train.steps=3",
                                              "checkpoint.every=3")
    rt.run(cfg, src, verbose=False)
    new = tmp_path / "gsa"
    assert convert.main(["--from", str(src), "--to-mixer", "gsa", "--workdir", str(new)]) == 0
    assert "experiments.train --config" in capsys.readouterr().out

    a, _, _ = rt.restore_model(src)
    b, bcfg, step = rt.restore_model(new)
    assert step == 0 and bcfg.model.mixer == "gsa" and bcfg.train == cfg.train
    fa, fb = _flat(a), _flat(b)
    record = json.loads((new / "convert.json").read_text())
    mixer = "blocks.0.mixer."
    for name in ("q_proj.kernel", "k_proj.kernel", "v_proj.kernel", "o_proj.kernel", "conv.weight"):
        assert mixer + name in record["copied"]
    assert set(record["initialised"]) == {n for n in fb if n.startswith(mixer)} - {
        mixer + n for n in ("q_proj.kernel", "k_proj.kernel", "v_proj.kernel", "o_proj.kernel",
                            "conv.weight")}
    assert mixer + "f_proj.kernel" in record["initialised"]
    for name in record["copied"]:  # bit-exact: the embedding, norms, MLP and the q/k/v/o copies
        np.testing.assert_array_equal(fb[name], fa[name])
    assert len(record["copied"]) + len(record["initialised"]) == len(fb)
    assert {n for n in fa if not n.startswith(mixer)} <= set(record["copied"])

    # the new run trains like any other, from the converted step-0 checkpoint
    code = train_cli.main(["--config", str(new / "config.json"), "--workdir", str(new)])
    assert code == 0
    summary = json.loads((new / "summary.json").read_text())
    assert summary["resumed_from"] == 0 and summary["step"] == 3
    with pytest.raises(ValueError, match="already holds checkpoints"):
        convert.convert(src, "gla", new)
    assert convert.main(["--from", str(src), "--to-mixer", "attention",
                         "--workdir", str(tmp_path / "x")]) == 2
    assert convert.main(["--from", str(new), "--to-mixer", "gla",
                         "--workdir", str(tmp_path / "y")]) == 2  # no attention layer left

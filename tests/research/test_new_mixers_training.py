"""The new mixers inside the training loop and the probes: MoM's load-balancing loss is added to
the loss and logged as train/aux_loss; MQAR's prefix_length reaches a JRT model; the JRT-Prompt
probe scores a model on the task as trained and with the context given twice."""

from __future__ import annotations

import json

import numpy as np
from flax import nnx

import research
import research.train as rt
from research.probes import ProbeSettings, run_probes


def _metrics(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_mom_logs_its_aux_loss_and_jrt_trains_with_prefixes(tmp_path):
    cfg = rt.get_preset("test-tiny").override("model.mixer=mom", "train.steps=3",
                                              "checkpoint.every=3")
    rt.run(cfg, tmp_path / "mom", verbose=False)
    aux = [m["train/aux_loss"] for m in _metrics(tmp_path / "mom") if "train/aux_loss" in m]
    assert len(aux) == 3 and all(0.9 < a / 0.01 < 4.0 for a in aux)  # weight 0.01 x L_aux >= 1
    cfg = rt.get_preset("test-tiny").override("model.mixer=jrt", "train.steps=3",
                                              "checkpoint.every=3")
    summary = rt.run(cfg, tmp_path / "jrt", verbose=False)
    assert np.isfinite(summary["final_loss"])
    assert not any("train/aux_loss" in m for m in _metrics(tmp_path / "jrt"))


def test_jrt_prompt_probe(tmp_path):
    config = rt.get_preset("test-tiny").override("model.mixer=jrt")
    model = research.LanguageModel(config.model, rngs=nnx.Rngs(0))
    settings = ProbeSettings(num_examples=8, batch_size=8)
    results = run_probes(model, config, tmp_path, names=["jrt_prompt"], settings=settings)
    rows = results["jrt_prompt"]
    assert [r["jrt_prompt"] for r in rows] == [False, True]
    assert [r["seq_len"] for r in rows] == [16, 20]  # MQAR L=16, N=2: the context again (+4)
    assert json.loads((tmp_path / "jrt_prompt.json").read_text())
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary) == {"jrt_prompt/accuracy@plain", "jrt_prompt/accuracy@jrt"}

"""`research.train.run` end to end on a tiny config: outputs, resume, fallback, divergence."""

import json
import math
import os
import pathlib
import warnings

import pytest

import research.train as rt


def tiny(*overrides):
    return rt.get_preset("test-tiny").override(*overrides)


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-12)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 12-step run of test-tiny: its summary."""
    return rt.run(tiny(), tmp_path_factory.mktemp("ref") / "run", verbose=False)


def test_run_writes_its_outputs(reference):
    wd = pathlib.Path(reference["workdir"])
    cfg = json.loads((wd / "config.json").read_text())
    assert cfg["model"]["mixer"] == "gla" and cfg["train"]["steps"] == 12
    records = rt.read_metrics(wd)
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert [r["step"] for r in records if "train/loss" in r] == list(range(1, 13))
    assert all(math.isfinite(x) for x in losses)
    assert any("eval/accuracy" in r and r["step"] == 12 for r in records)
    assert any(p.name.startswith("events.out.tfevents") for p in (wd / "tensorboard").iterdir())
    assert rt.Checkpointer(wd / "checkpoints").all_steps() == [4, 8, 12]
    assert reference["step"] == 12 and reference["final_loss"] == losses[-1]
    assert 0.0 <= reference["eval/accuracy"] <= 1.0
    assert json.loads((wd / "summary.json").read_text())["step"] == 12


def test_rerun_resumes_and_matches_an_uninterrupted_run(tmp_path, reference):
    first = rt.run(tiny("train.steps=8"), tmp_path / "run", verbose=False)
    assert first["step"] == 8 and first["resumed_from"] is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # train.steps differs from the saved config
        second = rt.run(tiny(), tmp_path / "run", verbose=False)
    assert second["resumed_from"] == 8 and second["step"] == 12
    # the schedule depends on train.steps, so compare runs with the same steps only
    third = rt.run(tiny(), tmp_path / "run", verbose=False)
    assert third["resumed_from"] == 12 and third["step"] == 12
    # nothing left to train: the rerun still evaluates and reports the last loss
    assert third["eval/accuracy"] is not None and third["final_loss"] == second["final_loss"]


def test_killed_before_the_end_resumes_to_the_same_loss(tmp_path, reference):
    # a run stopped after step 8 (as if killed) then restarted with the same config
    cfg = tiny()
    partial = rt.run(cfg, tmp_path / "run", verbose=False, _stop_after=8)
    assert partial["step"] == 8
    resumed = rt.run(cfg, tmp_path / "run", verbose=False)
    assert resumed["resumed_from"] == 8
    assert rel(resumed["final_loss"], reference["final_loss"]) < 1e-6
    steps = [r["step"] for r in rt.read_metrics(tmp_path / "run") if "train/loss" in r]
    assert steps == list(range(1, 13))  # no duplicated records


def test_corrupted_newest_checkpoint_falls_back_with_a_warning(tmp_path, reference):
    cfg = tiny()
    rt.run(cfg, tmp_path / "run", verbose=False, _stop_after=8)
    newest = tmp_path / "run" / "checkpoints" / "8" / "state"
    for root, _, files in os.walk(newest):
        for f in files:
            pathlib.Path(root, f).write_bytes(os.urandom(64))
    with pytest.warns(rt.CheckpointWarning, match="falling back to step 4"):
        resumed = rt.run(cfg, tmp_path / "run", verbose=False)
    assert resumed["resumed_from"] == 4 and resumed["step"] == 12
    assert rel(resumed["final_loss"], reference["final_loss"]) < 1e-6
    assert (tmp_path / "run" / "checkpoints" / "unreadable" / "8-0").is_dir()


def test_half_written_checkpoint_is_ignored(tmp_path):
    ckpt = rt.Checkpointer(tmp_path / "ckpts")
    (tmp_path / "ckpts" / "12.orbax-checkpoint-tmp-1234").mkdir()
    assert ckpt.all_steps() == [] and ckpt.latest_step() is None
    ckpt.close()


def test_nan_loss_stops_and_names_step_and_checkpoint(tmp_path):
    cfg = tiny("optimizer.lr=1e30", "optimizer.schedule=constant", "optimizer.warmup_steps=0",
               "optimizer.clip_norm=0", "checkpoint.every=1", "train.log_every=1")
    with pytest.raises(rt.TrainingDiverged, match=r"at step (\d+).*Last good checkpoint: .*step"):
        rt.run(cfg, tmp_path / "run", verbose=False)


def test_grad_accumulation_and_bf16(tmp_path):
    base = rt.run(tiny("train.steps=3", "optimizer.warmup_steps=1"), tmp_path / "a",
                  verbose=False)
    accum = rt.run(tiny("train.steps=3", "optimizer.warmup_steps=1", "optimizer.grad_accum=2"),
                   tmp_path / "b", verbose=False)
    assert rel(accum["final_loss"], base["final_loss"]) < 1e-5
    half = rt.run(tiny("train.steps=3", "optimizer.warmup_steps=1",
                       "train.compute_dtype=bfloat16"), tmp_path / "c", verbose=False)
    assert math.isfinite(half["final_loss"])
    assert abs(half["final_loss"] - base["final_loss"]) < 0.1


def test_restore_model_gives_the_trained_parameters(reference):
    """The restored model scores the run's evaluation batches exactly as the trainer scored its
    trained parameters at the last step, and its parameters are not the initial ones."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    import research
    from research.data.loader import eval_batches
    from research.data.sources import build_sources

    model, cfg, step = rt.restore_model(reference["workdir"])
    assert step == 12 and cfg.model.mixer == "gla" and isinstance(model, nnx.Module)
    _, eval_source = build_sources(cfg.data, cfg.train.seed)
    nll = count = 0.0
    for b in eval_batches(eval_source, batch_size=cfg.data.batch_size,
                          num_batches=cfg.train.eval_batches, process_index=0, process_count=1):
        logits = model(jnp.asarray(b["tokens"]))
        assert logits.shape == (*b["tokens"].shape, cfg.model.vocab_size)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        token_nll = -jnp.take_along_axis(logp, jnp.asarray(b["targets"])[..., None], -1)[..., 0]
        nll += float((token_nll * b["loss_mask"]).sum())
        count += float(b["loss_mask"].sum())
    assert rel(nll / count, reference["eval/loss"]) < 1e-5
    trained = jax.tree.leaves(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    fresh = research.LanguageModel(cfg.model, rngs=nnx.Rngs(cfg.train.seed))
    initial = jax.tree.leaves(nnx.to_pure_dict(nnx.state(fresh, nnx.Param)))
    assert len(trained) == len(initial)
    assert any(not np.allclose(a, b) for a, b in zip(trained, initial))
    first, _, _ = rt.restore_model(reference["workdir"], step=4)
    assert any(not np.allclose(a, b) for a, b in zip(
        jax.tree.leaves(nnx.to_pure_dict(nnx.state(first, nnx.Param))), trained))


def test_bad_mesh_and_batch_errors(tmp_path):
    with pytest.raises(ValueError, match="mesh"):
        rt.run(tiny("mesh.fsdp=3"), tmp_path / "a", verbose=False)
    with pytest.raises(ValueError, match="grad_accum"):
        rt.run(tiny("optimizer.grad_accum=3"), tmp_path / "b", verbose=False)
    with pytest.raises(ValueError, match="vocab"):
        rt.run(tiny("model.vocab_size=16"), tmp_path / "c", verbose=False)


def test_stop_at_target_stops_at_the_first_eval_that_reaches_it(tmp_path):
    cfg = tiny("train.target_accuracy=0.0", "train.stop_at_target=true", "train.eval_every=4")
    first = rt.run(cfg, tmp_path / "run", verbose=False)
    assert first["step"] == 4 and first["reached_target"] is True
    assert 4 in rt.Checkpointer(tmp_path / "run" / "checkpoints").all_steps()
    again = rt.run(cfg, tmp_path / "run", verbose=False)
    assert again["resumed_from"] == 4 and again["step"] == 4 and again["reached_target"]
    with pytest.raises(ValueError, match="stop_at_target needs train.target_accuracy"):
        tiny("train.stop_at_target=true", "train.target_accuracy=none")

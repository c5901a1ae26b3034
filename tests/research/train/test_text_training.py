"""A byte-level model trained on the Shakespeare corpus beats the unigram entropy."""

import pytest

import research.train as rt
from research.data import text_sources, unigram_entropy


def _shakespeare_config(steps):
    return rt.get_preset("shakespeare-byte").override(
        "model.d_model=64", "model.n_layers=2", "model.n_heads=2", "model.d_ff=128",
        "data.seq_len=64", "data.batch_size=16", f"train.steps={steps}",
        "optimizer.warmup_steps=20", "optimizer.lr=3e-3", "train.eval_every=0",
        "train.eval_batches=4", "train.log_every=10", "train.progress=false",
        "checkpoint.every=1000", "mesh.data=1", "mesh.fsdp=1")


@pytest.mark.parametrize("steps, margin", [
    (150, 0.5),
    pytest.param(1000, 1.0, marks=pytest.mark.slow),
])
def test_byte_model_falls_well_below_unigram_entropy(tmp_path, steps, margin):
    train, _ = text_sources("shakespeare", seq_len=64)
    h1 = unigram_entropy(train.tokens, 256)  # about 3.3 nats
    summary = rt.run(_shakespeare_config(steps), tmp_path / "run", verbose=False)
    assert summary["eval/loss"] < h1 - margin, (summary["eval/loss"], h1)

"""Tiny sweep over the seeds' remaining architectures (runs in CI in seconds per run): LightNet,
Mixture-of-Memories, JRT prefix linear attention (MQAR's prefix_length is its prompt) and GLA with
n-gram layers (1, 2), plus Mamba, S4D and TTT-Linear where those mixers are present, on a small
MQAR (vocab 32, length 16, 2 kv pairs), 8 steps each, with GLA as the reference. It shows every
mixer trains through the sweep machinery and writes the table; at this size nothing is learnt."""

from research import ModelConfig
from research.layers import MIXER_CLASSES
from research.sweep import Figure, Run, task_config

TITLE = "New mixers (tiny): MQAR accuracy and state size"
TASK = {"vocab_size": 32, "seq_len": 16, "num_kv_pairs": 2}
MODELS = {
    "gla": {},
    "lightnet": {},
    "mom": {},
    "jrt": {},
    "gla-ngram": {"mixer": "gla", "ngram_layers": (1, 2)},
    "mamba": {},
    "s4d": {"conv_size": 0},
    "ttt_linear": {},
}


def _model(name, kw):
    fields = dict(mixer=name, vocab_size=32, d_model=16, n_layers=1, n_heads=2, d_ff=32,
                  num_slots=8, d_state=8, num_memories=2, memory_top_k=1)
    fields.update(kw)
    return ModelConfig(**fields)


RUNS = [
    Run(name=name,
        config=task_config(_model(name, kw), "MQAR", TASK, steps=8, batch_size=8, lr=3e-3,
                           train_examples=256, eval_examples=16, eval_batches=1,
                           checkpoint_every=8),
        tags={"mixer": name})
    for name, kw in MODELS.items() if kw.get("mixer", name) in MIXER_CLASSES
]

FIGURES = [
    Figure("accuracy_by_mixer", x="mixer", y="eval/accuracy",
           title="MQAR (tiny): accuracy by mixer (8 steps)"),
]

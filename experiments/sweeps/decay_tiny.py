"""Tiny decay sweep (runs in CI): the four decay rungs of a GLA-family model (none / fixed /
scalar / vector) on a small forgetting-MQAR, plus the vector gate on the random-DFA task, 30 steps
each; after training each model is scored on held-out examples (probe/accuracy,
probe/stale_rate, probe/dfa_accuracy, probe/dfa_tvd). The machinery of `decay.py` at a size that
learns little."""

from research import ModelConfig
from research.sweep import Figure, Run, task_config

TITLE = "Decay (tiny): forgetting-MQAR and DFA by decay kind"
FMQAR = {"vocab_size": 64, "seq_len": 32, "num_kv_pairs": 4, "num_updates": 4}


def _model(vocab, decay):
    return ModelConfig(mixer="gla", vocab_size=vocab, d_model=16, n_layers=2, n_heads=2, d_ff=32,
                       decay=decay)


def _cfg(model, task, args):
    return task_config(model, task, args, steps=30, batch_size=16, lr=3e-3, train_examples=2_000,
                       eval_examples=64, eval_batches=2, checkpoint_every=30)


RUNS = [
    Run(name=f"forgetting_mqar-{d}", config=_cfg(_model(64, d), "ForgettingMQAR", FMQAR),
        tags={"task": "forgetting_mqar", "decay": d})
    for d in ("none", "fixed", "scalar", "vector")
] + [
    Run(name="dfa-vector", config=_cfg(_model(32, "vector"), "RegularLanguages", {"seq_len": 32}),
        tags={"task": "dfa", "decay": "vector"}),
]

EVAL_EXAMPLES = 32

FIGURES = [
    Figure("ladder_forgetting_mqar", x="decay", y="probe/accuracy",
           where={"task": "forgetting_mqar"}, title="forgetting-MQAR (tiny) by decay"),
    Figure("ladder_stale_rate", x="decay", y="probe/stale_rate",
           where={"task": "forgetting_mqar"}, title="stale answers (tiny) by decay"),
]

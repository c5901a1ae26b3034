"""Tiny state-size sweep (runs in CI in well under a minute): GLA and DeltaNet at two widths, one
layer, on a small MQAR (vocab 64, length 32, 4 kv pairs), 10 steps each. It exercises the machinery of
`state_size.py` — the accuracy-vs-state-size figure of Zoology — at a size that learns little."""

from research import ModelConfig
from research.sweep import Figure, Run, grid, task_config

TITLE = "State size (tiny): MQAR accuracy against recurrent state size"
TASK = {"vocab_size": 64, "seq_len": 32, "num_kv_pairs": 4}

RUNS = [
    Run(name=f"{g['mixer']}-d{g['d_model']}",
        config=task_config(
            ModelConfig(mixer=g["mixer"], vocab_size=64, d_model=g["d_model"], n_layers=1,
                        n_heads=2, d_ff=2 * g["d_model"]),
            "MQAR", TASK, steps=10, batch_size=16, lr=3e-3, train_examples=512,
            eval_examples=32, eval_batches=1, checkpoint_every=10),
        tags=g)
    for g in grid(mixer=["gla", "deltanet"], d_model=[16, 32])
]

FIGURES = [
    Figure("accuracy_vs_state_size", x="state_size", y="eval/accuracy", group="mixer", logx=True,
           title="MQAR (tiny): accuracy vs state size"),
]

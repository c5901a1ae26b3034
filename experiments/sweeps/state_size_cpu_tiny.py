"""Tiny `state_size_cpu` (runs in CI in seconds): the same models and training recipe (GLA and
RetNet without output gate, constant lr, stop at target) for GLA and RetNet at d_model 8 on a
small MQAR (vocab 32, length 16, 2 kv pairs), 2 seeds, 6 steps each. It exercises the
seeds and the honest comparison of the report (`--report`) at a size that learns nothing, so
its comparison must say "not resolved"."""

import pathlib
import runpy

from research.sweep import Figure, Run, with_seeds

_CPU = runpy.run_path(str(pathlib.Path(__file__).with_name("state_size_cpu.py")))
TITLE = "State size on CPU (tiny): MQAR accuracy against recurrent state size"
TASK = {"vocab_size": 32, "seq_len": 16, "num_kv_pairs": 2}

RUNS = with_seeds([
    Run(name=f"{m}-d8",
        config=_CPU["config"](m, 8, task=TASK, steps=6, batch_size=8, train_examples=512,
                              eval_examples=16, eval_batches=1),
        tags={"mixer": m, "d_model": 8})
    for m in ("gla", "retnet")
], [0, 1])

FIGURES = [
    Figure("accuracy_vs_state_size", x="state_size", y="eval/accuracy", group="mixer", logx=True,
           title="MQAR (tiny): accuracy vs state size"),
]


def compare(rows):
    """The comparison of `state_size_cpu` (chance 2 / V)."""
    from research.sweep.report import recall_comparison
    return recall_comparison(rows, order=("gla", "retnet"),
                             chance=2 / TASK["vocab_size"],
                             chance_note="uniform over the V / 2 = 16 value tokens")

"""State size vs recall (Zoology, Arora et al. 2023, Figure 2 / 3): every recurrent mixer at two
widths and its own state knob (heads, key expansion, slots, d_state), with softmax attention as
the reference, trained on MQAR as Zoology defines it (vocab 8192, length 256, 16 kv pairs, 2
layers, d_model 64 and 128). The figure plots MQAR accuracy against the recurrent state size
(floats per sequence; attention's key/value cache at length 256).

Published findings to compare with: attention solves MQAR (accuracy near 1.0) at every width;
among recurrent models at equal state size, data-dependent delta-rule updates (DeltaNet, Gated
DeltaNet) recall more than gated linear attention (GLA, GSA, Mamba2), which recalls more than a
fixed decay (RetNet); accuracy rises with state size for each. Each configuration trains at two
learning rates and the figure keeps the better one, as Zoology does. Sized for one GPU (52 runs
of 5000 steps).
"""

from research import ModelConfig
from research.sweep import Figure, Run, task_config
from research.sweep.report import recall_comparison

TITLE = "State size: MQAR accuracy against recurrent state size (Zoology setup)"
TASK = {"vocab_size": 8192, "seq_len": 256, "num_kv_pairs": 16}
WIDTHS = (64, 128)

# (mixer, knob name, knob values, extra ModelConfig fields): the state-size knob of each mixer.
VARIANTS = [
    ("gla", "expand_k", (0.5, 1.0), {}),
    ("deltanet", "n_heads", (1, 2), {}),
    ("gated_deltanet", "n_heads", (1, 2), {}),
    ("gsa", "num_slots", (16, 64), {}),
    ("mamba2", "d_state", (16, 64), {}),
    ("retnet", "n_heads", (1, 2), {}),
    ("attention", "n_heads", (2,), {}),
]
LRS = (1e-3, 3e-3)


def _model(mixer, d_model, knob, value, extra):
    fields = {"mixer": mixer, "vocab_size": TASK["vocab_size"], "d_model": d_model,
              "n_layers": 2, "n_heads": 2, "d_ff": 2 * d_model, **extra}
    fields[knob] = value
    return ModelConfig(**fields)


RUNS = [
    Run(name=f"{mixer}-d{d}-{knob}{value}-lr{lr:g}",
        config=task_config(_model(mixer, d, knob, value, extra), "MQAR", TASK, steps=5000,
                           batch_size=64, lr=lr, warmup_steps=200, eval_batches=16),
        tags={"mixer": mixer, "d_model": d, "knob": f"{knob}={value}", "lr": lr})
    for mixer, knob, values, extra in VARIANTS
    for d in WIDTHS
    for value in values
    for lr in LRS
]

FIGURES = [
    Figure("accuracy_vs_state_size", x="state_size", y="eval/accuracy", group="mixer", logx=True,
           best_over=("lr",), title="MQAR (L=256, 16 kv pairs): accuracy vs state size"),
]


def compare(rows):
    """Zoology's ordering at equal state size, and attention near 1.0."""
    return recall_comparison(rows, order=("deltanet", "gla", "retnet"),
                             chance=2 / TASK["vocab_size"],
                             chance_note="uniform over the V / 2 value tokens")

"""The demo ablation (`make demo`): GLA, DeltaNet and softmax attention on MQAR (Zoology's
generator: vocab 256, length 64, 4 kv pairs) at two widths, d_model 32 and 64, each with a short
convolution before the mixer. GLA uses expand_k = 1 so that it holds exactly as much recurrent
state as DeltaNet at the same width (2 layers x 2 heads x K x V); attention's "state" is its
key/value cache at length 64. Six runs of 600 steps, sized to finish in under ten minutes on two
CPU cores; it prints the table and draws accuracy against state size."""

from research import ModelConfig
from research.sweep import Figure, Run, grid, task_config
from research.sweep.report import recall_comparison

TITLE = "Demo: GLA, DeltaNet and attention on MQAR at two state sizes (CPU)"
TASK = {"vocab_size": 256, "seq_len": 64, "num_kv_pairs": 4}
STEPS = 600


def _model(mixer, d_model):
    extra = {"expand_k": 1.0} if mixer == "gla" else {}
    return ModelConfig(mixer=mixer, vocab_size=256, d_model=d_model, n_layers=2, n_heads=2,
                       d_ff=2 * d_model, conv_size=4, **extra)


RUNS = [
    Run(name=f"{g['mixer']}-d{g['d_model']}",
        config=task_config(_model(g["mixer"], g["d_model"]), "MQAR", TASK, steps=STEPS,
                           batch_size=64, lr=3e-3, warmup_steps=100, eval_batches=8),
        tags=g)
    for g in grid(mixer=["gla", "deltanet", "attention"], d_model=[32, 64])
]

FIGURES = [
    Figure("accuracy_vs_state_size", x="state_size", y="eval/accuracy", group="mixer", logx=True,
           title="MQAR (L=64, 4 kv pairs): accuracy vs state size"),
]


def compare(rows):
    """Zoology's ordering at equal state size, and attention near 1.0."""
    return recall_comparison(rows, order=("deltanet", "gla"))

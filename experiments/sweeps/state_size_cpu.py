"""State size vs recall on two CPU cores: the `state_size` sweep (Zoology, Arora et al. 2023)
scaled down to what trains in about half an hour on a shared 2-core CPU. DeltaNet, GLA, RetNet
and softmax attention, 2 layers, d_model 64 and 128, on MQAR with Zoology's generator at
vocab 256, length 64 and 8 kv pairs (the GPU-sized sweep: vocab 8192, length 256, 16 kv pairs,
5000 steps, two learning rates, every mixer).

Recurrent state per sequence (2 layers): DeltaNet, GLA (expand_k = 1) and RetNet (expand_v = 1)
hold H x K x V per layer, equal at equal width; attention counts its key/value cache at length
64. Every model has a width-4 short convolution before the mixer.
Training follows the measured `mqar-tiny` preset: GLA starts with a slow decay
(init_half_life = 1024; with the default gate biases it stays at chance), AdamW at a constant
lr 3e-3 after 100 warmup steps, batch 64, d_ff = d_model, evaluation every 100 steps, stopping
once eval accuracy reaches 0.98, at most 800 steps. The d_model 64 runs come first so that a
partial sweep still compares every mixer at one width.

Published findings to compare with: attention near 1.0; at equal state size DeltaNet recalls
more than GLA, which recalls more than RetNet.
"""

import dataclasses

from research import ModelConfig
from research.sweep import Figure, Run, task_config
from research.sweep.report import recall_comparison

TITLE = "State size on CPU: MQAR (L=64, 8 kv pairs) accuracy against recurrent state size"
TASK = {"vocab_size": 256, "seq_len": 64, "num_kv_pairs": 8}
WIDTHS = (64, 128)
MIXERS = ("attention", "deltanet", "gla", "retnet")
STEPS = 800


def _model(mixer, d_model):
    extra = {"gla": {"expand_k": 1.0, "init_half_life": 1024.0},
             "retnet": {"expand_v": 1.0}}.get(mixer, {})
    return ModelConfig(mixer=mixer, vocab_size=TASK["vocab_size"], d_model=d_model, n_layers=2,
                       n_heads=2, d_ff=d_model, conv_size=4, **extra)


def _config(mixer, d_model):
    cfg = task_config(_model(mixer, d_model), "MQAR", TASK, steps=STEPS, batch_size=64,
                      lr=3e-3, warmup_steps=100, eval_batches=8, checkpoint_every=200)
    return cfg.replace(
        optimizer=dataclasses.replace(cfg.optimizer, schedule="constant"),
        train=dataclasses.replace(cfg.train, eval_every=100, target_accuracy=0.98,
                                  stop_at_target=True))


RUNS = [
    Run(name=f"{mixer}-d{d}", config=_config(mixer, d), tags={"mixer": mixer, "d_model": d})
    for d in WIDTHS
    for mixer in MIXERS
]

FIGURES = [
    Figure("accuracy_vs_state_size", x="state_size", y="eval/accuracy", group="mixer", logx=True,
           title="MQAR (L=64, 8 kv pairs, CPU): accuracy vs state size"),
]


def compare(rows):
    """Zoology's ordering at equal state size, and attention near 1.0."""
    return recall_comparison(rows, order=("deltanet", "gla", "retnet"))

"""State size vs recall on two CPU cores: the `state_size` sweep (Zoology, Arora et al. 2023)
scaled down to what trains in well under an hour on a shared 2-core CPU. DeltaNet, GLA and
RetNet at three widths (d_model 16, 32, 64: recurrent state 256, 1024 and 4096 floats per
sequence), softmax attention at d_model 32 as the reference, 2 layers, each point at 2 seeds, on
MQAR with Zoology's generator at vocab 256, length 64 and 8 kv pairs (the GPU-sized sweep: vocab
8192, length 256, 16 kv pairs, 5000 steps, two learning rates, every mixer).

Recurrent state per sequence (2 layers): DeltaNet, GLA (expand_k = 1) and RetNet (expand_v = 1)
hold H x K x V = 2 x (d/2) x (d/2) per layer, equal at equal width; attention counts its
key/value cache at length 64. Every model has a width-4 short convolution before the mixer.

What held GLA and RetNet at chance in the first version of this sweep (800 steps, eval accuracy
~0.01 at d_model 64 and 128, while DeltaNet reached 0.98): their swish output gate. With
`use_output_gate=False` (DeltaNet has none either), GLA and RetNet (half-life 1024) both passed
0.8 eval accuracy by step 300-400 at d_model 64 in a probe; with the gate, GLA stayed at chance
for 500 steps at lr 3e-3 and at 1e-2, and at vocab 64. So here both run without it. GLA starts
its gates slow (init_half_life = 1024, as the `mqar-tiny` preset); RetNet keeps its own fixed
multi-scale decays (gamma_h = 1 - 2^(-5-h): half-lives of 22 and 44 tokens for 2 heads).

Training: AdamW at a constant lr 3e-3 after 50 warmup steps, batch 64, d_ff = d_model,
evaluation every 100 steps on 4 batches, stopping once eval accuracy reaches 0.95, at most 600
steps (one learning rate: the CPU has no room for Zoology's sweep over four). The recurrent
models come widest first, both seeds of a width before the next, so that a partial sweep
still judges the widths it finished.

Published findings to compare with: attention near 1.0; at equal state size DeltaNet recalls
more than GLA, which recalls more than RetNet.
"""

import dataclasses

from research import ModelConfig
from research.sweep import Figure, Run, task_config, with_seeds
from research.sweep.report import ordering_table, recall_comparison

TITLE = "State size on CPU: MQAR (L=64, 8 kv pairs) accuracy against recurrent state size"
TASK = {"vocab_size": 256, "seq_len": 64, "num_kv_pairs": 8}
WIDTHS = (64, 32, 16)
RECURRENT = ("gla", "retnet", "deltanet")
SEEDS = (0, 1)
STEPS = 600
EXTRA = {"gla": {"expand_k": 1.0, "init_half_life": 1024.0, "use_output_gate": False},
         "retnet": {"expand_v": 1.0, "use_output_gate": False}}


def model(mixer, d_model, vocab_size=TASK["vocab_size"]):
    """The sweep's ModelConfig for `mixer` at width `d_model`."""
    return ModelConfig(mixer=mixer, vocab_size=vocab_size, d_model=d_model, n_layers=2,
                       n_heads=2, d_ff=d_model, conv_size=4, **EXTRA.get(mixer, {}))


def config(mixer, d_model, task=TASK, steps=STEPS, **kw):
    """The training config: constant lr 3e-3 after warmup, stop at 0.95 eval accuracy."""
    cfg = task_config(model(mixer, d_model, task["vocab_size"]), "MQAR", task, steps=steps,
                      batch_size=kw.pop("batch_size", 64), lr=3e-3,
                      warmup_steps=min(50, steps // 4), checkpoint_every=steps, **kw)
    return cfg.replace(
        optimizer=dataclasses.replace(cfg.optimizer, schedule="constant"),
        train=dataclasses.replace(cfg.train, eval_every=min(100, steps), target_accuracy=0.95,
                                  stop_at_target=True))


RUNS = []
for d in WIDTHS:
    for seed in SEEDS:
        RUNS += with_seeds([Run(name=f"{m}-d{d}", config=config(m, d, eval_batches=4),
                                tags={"mixer": m, "d_model": d}) for m in RECURRENT], [seed])
RUNS += with_seeds([Run(name="attention-d32", config=config("attention", 32, eval_batches=4),
                        tags={"mixer": "attention", "d_model": 32})], SEEDS)

FIGURES = [
    Figure("accuracy_vs_state_size", x="state_size", y="eval/accuracy", group="mixer", logx=True,
           title="MQAR (L=64, 8 kv pairs, CPU): accuracy vs state size (mean of 2 seeds)"),
]


def compare(rows):
    """Zoology's ordering at equal state size, attention near 1.0, and GLA against RetNet
    alone (the pair the first version of this sweep left at chance)."""
    chance = 2 / TASK["vocab_size"]
    full = recall_comparison(rows, order=("deltanet", "gla", "retnet"), chance=chance,
                             chance_note="uniform over the V / 2 = 128 value tokens")
    pair = ordering_table([r for r in rows if r.get("mixer") in ("gla", "retnet")],
                          ("gla", "retnet"), chance=chance, by="state_size")
    return f"{full.rstrip()}\n\nGLA against RetNet alone, by the same rule:\n\n{pair}"

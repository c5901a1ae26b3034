"""Slots vs channels on two CPU cores (the GSA seed: Zhang et al. 2024, "Gated Slot
Attention"): at equal recurrent state on MQAR, GSA's bounded slot memory (M slots, softmax read)
against GLA's key-channel memory. Same task and recipe as `state_size_cpu` (vocab 256, length
64, 8 kv pairs, 2 layers, width-4 short conv, constant lr 3e-3, stop at 0.95, at most 600
steps, 2 seeds), at d_model 32 and 64.

Equal state: GLA (expand_k = 1) holds 2 heads x (d/2) x (d/2) per layer; GSA holds
2 heads x M x (K + V) = 2 x M x d, so M = d / 4 slots match it (8 at d_model 32, 16 at 64).
Both start their gates slow (init_half_life = 1024) and neither has an output gate (GSA has
none by default; GLA's is off, see `state_size_cpu`).

Published finding to compare with: at equal state size GSA recalls more than GLA.
"""

import dataclasses
import pathlib
import runpy

from research.sweep import Figure, Run, with_seeds
from research.sweep.report import recall_comparison

_CPU = runpy.run_path(str(pathlib.Path(__file__).with_name("state_size_cpu.py")))
TITLE = "Slots vs channels on CPU: GSA against GLA on MQAR at equal state size"
TASK = _CPU["TASK"]
WIDTHS = (64, 32)
SEEDS = (0, 1)


def _config(mixer, d_model):
    cfg = _CPU["config"]("gla", d_model, eval_batches=4)
    if mixer == "gsa":
        cfg = cfg.replace(model=dataclasses.replace(cfg.model, mixer="gsa",
                                                    num_slots=d_model // 4))
    return cfg


RUNS = []
for d in WIDTHS:
    for seed in SEEDS:
        RUNS += with_seeds([Run(name=f"{m}-d{d}", config=_config(m, d),
                                tags={"mixer": m, "d_model": d}) for m in ("gsa", "gla")],
                           [seed])

FIGURES = [
    Figure("gsa_vs_gla", x="state_size", y="eval/accuracy", group="mixer", logx=True,
           title="MQAR (L=64, 8 kv pairs, CPU): GSA vs GLA at equal state (mean of 2 seeds)"),
]


def compare(rows):
    """The GSA paper's ordering at equal state size."""
    return recall_comparison(rows, order=("gsa", "gla"), chance=2 / TASK["vocab_size"],
                             chance_note="uniform over the V / 2 = 128 value tokens",
                             published="Published (GSA, Zhang et al. 2024): at equal state size "
                                       "GSA recalls more than GLA on MQAR.")

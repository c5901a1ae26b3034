"""Copying against string length on two CPU cores (the Mamba "free lunch" seed: Jelassi, Brandfonbrener,
Kakade and Malach 2024, "Repeat After Me: Transformers are Better than State Space Models at
Copying"): a recurrent model at a fixed state size copies short strings but its accuracy falls as
the string to copy grows, while softmax attention keeps copying.

Task: `Copying` (x1 .. xn SEP x1 .. xn; the n positions from SEP on are scored) at vocab 32 (30
string symbols, chance 1/30 per token) with strings of n = 8, 16 and 32 tokens (sequence length
2n + 1 = 17, 33, 65), each length trained as its own run. Models: GLA at d_model 32 (2 layers,
2 heads, expand_k = 1: a recurrent state of 2 x 2 x 16 x 16 = 1024 floats per sequence, the same
at every length; 30 symbols x 32 tokens is ~160 bits, far below 1024 floats, so it is the learned
write rule, not raw capacity, that is tested) against softmax attention at d_model 32 (its
key/value cache grows with the sequence), each point at 2 seeds.

Recipe (`state_size_cpu`'s): GLA without its output gate and with slow initial gates
(init_half_life 1024), width-4 short conv before every mixer, d_ff = d_model; AdamW at a
constant lr 3e-3 after 50 warmup steps, batch 32, evaluation every 100 steps on 4 batches,
stop once eval accuracy reaches 0.99, at most 600 steps. Lengths come shortest first, both
seeds and both models of a length before the next, so a partial sweep judges the lengths it
finished.

Published finding to compare with: at a fixed state size a recurrent model's copying accuracy
falls as the string grows; attention's does not.
"""

import pathlib
import runpy

from research.sweep import Figure, Run, with_seeds

_F = runpy.run_path(str(pathlib.Path(__file__).with_name("_findings.py")))
TITLE = "Copying on CPU: accuracy against string length at fixed state (GLA) and for attention"
VOCAB = 32
LENGTHS = (8, 16, 32)
MODELS = ("gla", "attention")
SEEDS = (0, 1)
D_MODEL = 32
STEPS = 600


def config(mixer, n, d_model=D_MODEL, steps=STEPS, vocab=VOCAB, **kw):
    """Train `mixer` on copying strings of `n` tokens (sequence length 2n + 1)."""
    return _F["config"](_F["model"](mixer, d_model, vocab), "Copying",
                        {"vocab_size": vocab, "seq_len": 2 * n + 1}, steps=steps,
                        target=0.99, **kw)


RUNS = []
for n in LENGTHS:
    for seed in SEEDS:
        RUNS += with_seeds([Run(name=f"{m}-n{n}", config=config(m, n),
                                tags={"mixer": m, "copy_len": n}) for m in MODELS], [seed])

FIGURES = [
    Figure("accuracy_vs_copy_length", x="copy_len", y="eval/accuracy", group="mixer",
           logx=True, title="Copying (vocab 32, CPU): accuracy vs string length (mean of 2 seeds)"),
]


def compare(rows, vocab=VOCAB, recurrent=("gla",), attention="attention", floor=0.9):
    """The free-lunch finding, by the report's rule: (1) each recurrent model's accuracy falls
    with the copy length; (2) attention stays >= `floor` at every length; (3) attention copies
    better than the recurrent model at each length."""
    from research.sweep.report import rule_text
    chance = 1 / (vocab - 2)
    lines = ["Published (Jelassi et al. 2024, \"Repeat After Me\"): at a fixed state size a "
             "recurrent model's copying accuracy falls as the string grows; a Transformer's "
             "does not.", "",
             rule_text(chance, f"uniform over the V - 2 = {vocab - 2} string symbols"), "",
             "(1) Recurrent accuracy against the copy length (falls = each longer string "
             "scores lower than the previous by more than the seed spread, every point above "
             "chance):", "",
             _F["falls_table"](rows, "copy_len", chance=chance, models=list(recurrent)), ""]
    lens = sorted({r["copy_len"] for r in rows if r.get("copy_len") is not None})
    if len(lens) >= 2:
        by_len = [{**r, "copy_len": str(r["copy_len"])} for r in rows
                  if r.get("mixer") in recurrent]
        lines += ["The shortest against the longest string alone, by the same rule:", "",
                  _F["judge_pairs"](by_len, [(str(lens[0]), str(lens[-1]))], chance=chance,
                                    group="copy_len", by="mixer", label="mixer"), ""]
    verdict, text = _F["floor_check"](rows, attention, floor, axis="copy_len")
    lines += [f"(2) Attention does not fall (every run >= {floor}): **{verdict}** — {text}.",
              "", "(3) Attention against the recurrent model at each length:", "",
              _F["judge_pairs"](rows, [(attention, m) for m in recurrent], chance=chance,
                                by="copy_len")]
    return "\n".join(lines)

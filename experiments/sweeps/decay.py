"""Decay ablation: what forgetting buys, on the two tasks that need it.

GLA-family models (2 layers, d_model 64, short conv) with the decay rung varied
(none = linear attention / fixed per-head = RetNet / data-dependent scalar per head = Mamba2-like
/ data-dependent vector per key channel = GLA), then, for the vector gate, the gate logit
normalizer (GLA's 16 and neighbours) and the initial half-life of the gate (bias init), on
- forgetting-MQAR (keys re-bound; the latest value must be recalled): accuracy and the rate of
  "stale" answers (a value the key held earlier);
- in-context regular languages (random DFAs, "In-Context Language Learning"): the share of
  greedy next letters that are legal and the total variation distance to the uniform
  distribution over legal letters, on held-out DFAs.

Expected (GLA and ICLL papers): no decay fails forgetting-MQAR by answering stale values; a
data-dependent gate beats a fixed one; vector beats scalar; a very short initial half-life hurts
recall, a very long one behaves like no decay until the gate learns.
"""

from research import ModelConfig
from research.sweep import Figure, Run, task_config

TITLE = "Decay: none / fixed / scalar / vector, gate normalizer and initial half-life"

TASKS = {
    "forgetting_mqar": ("ForgettingMQAR", {"vocab_size": 256, "seq_len": 128, "num_kv_pairs": 8,
                                            "num_updates": 16}, 256),
    "dfa": ("RegularLanguages", {"seq_len": 256}, 32),
}
STEPS = 3000


def _run(axis, task, value, **model_fields):
    cls, args, vocab = TASKS[task]
    model = ModelConfig(**{"mixer": "gla", "vocab_size": vocab, "d_model": 64, "n_layers": 2,
                           "n_heads": 2, "d_ff": 128, **model_fields})
    tags = {"task": task, "axis": axis, "decay": model_fields.get("decay", "vector"),
            "gate_logit_normalizer": model_fields.get("gate_logit_normalizer", 16.0),
            "init_half_life": model_fields.get("init_half_life")}
    return Run(name=f"{task}-{axis}-{value}",
               config=task_config(model, cls, args, steps=STEPS, batch_size=64, lr=3e-3),
               tags=tags)


RUNS = []
for task in TASKS:
    RUNS += [_run("ladder", task, d, decay=d) for d in ("none", "fixed", "scalar", "vector")]
    RUNS += [_run("normalizer", task, n, decay="vector", gate_logit_normalizer=float(n))
             for n in (1, 4, 32)]  # 16 is the ladder's vector run
    RUNS += [_run("half_life", task, h, decay="vector", init_half_life=float(h))
             for h in (2, 8, 32, 128, 512)]

EVAL_EXAMPLES = 512

FIGURES = [
    Figure("ladder_forgetting_mqar", x="decay", y="probe/accuracy", group="task",
           where={"axis": "ladder", "task": "forgetting_mqar"},
           title="forgetting-MQAR accuracy by decay"),
    Figure("ladder_stale_rate", x="decay", y="probe/stale_rate",
           where={"axis": "ladder", "task": "forgetting_mqar"},
           title="forgetting-MQAR: stale answers by decay"),
    Figure("ladder_dfa", x="decay", y="probe/dfa_accuracy", where={"axis": "ladder", "task": "dfa"},
           title="DFA next-letter legality by decay"),
    Figure("ladder_dfa_tvd", x="decay", y="probe/dfa_tvd", where={"axis": "ladder", "task": "dfa"},
           title="DFA total variation distance by decay"),
    Figure("normalizer", x="gate_logit_normalizer", y="probe/accuracy", group="task", logx=True,
           where={"axis": "normalizer"}, title="vector gate: logit normalizer"),
    Figure("half_life", x="init_half_life", y="probe/accuracy", group="task", logx=True,
           where={"axis": "half_life"}, title="vector gate: initial half-life (tokens)"),
]

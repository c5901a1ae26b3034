"""Tiny `icll_cpu` (runs in CI in seconds): attention, GLA and GLA + n-gram layers (the three
models of the gap-closed claim; DeltaNet's row reads "no run of ...") at d_model 8, one layer, on random-DFA languages of length 16, 2 seeds, 4 steps each, scored with
the DFA metrics on 8 held-out examples. At a size that learns nothing its comparison must say
"not resolved"."""

import pathlib
import runpy

from research.sweep import Figure, Run, with_seeds

_CPU = runpy.run_path(str(pathlib.Path(__file__).with_name("icll_cpu.py")))
TITLE = "In-context language learning on CPU (tiny): random DFAs"
EVAL_EXAMPLES = 8

RUNS = with_seeds([Run(name=name, config=_CPU["config"](m, ng, d_model=8, seq_len=16, steps=4,
                                                        n_layers=1, batch_size=4,
                                                        train_examples=64, eval_examples=8,
                                                        eval_batches=1),
                       tags={"model": name, "mixer": m, "task": "dfa"})
                   for name, m, ng in _CPU["MODELS"] if name != "deltanet"], [0, 1])

FIGURES = [Figure("dfa_accuracy", x="model", y="probe/dfa_accuracy",
                  title="Random DFAs (tiny): legal next-letter accuracy")]


def compare(rows):
    """The comparison of `icll_cpu`."""
    return _CPU["compare"](rows)

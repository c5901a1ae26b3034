"""Tiny `copying_cpu` (runs in CI in seconds): GLA at d_model 8, one layer, on copying strings of
3 and 6 tokens (vocab 8) and attention at 3 tokens (the fewest runs that reach every claim of the
comparison: GLA's fall with the length, attention's floor, attention against GLA), 2 seeds, 4
steps each. It exercises the sweep, the
seeds and the honest comparison of the report at a size that learns nothing, so its comparison
must say "not resolved"."""

import pathlib
import runpy

from research.sweep import Figure, Run, with_seeds

_CPU = runpy.run_path(str(pathlib.Path(__file__).with_name("copying_cpu.py")))
_F = _CPU["_F"]
TITLE = "Copying on CPU (tiny): accuracy against string length"
VOCAB = 8


def _config(mixer, n):
    return _F["config"](_F["model"](mixer, 8, VOCAB, n_layers=1), "Copying",
                        {"vocab_size": VOCAB, "seq_len": 2 * n + 1}, steps=4, batch_size=4,
                        train_examples=64, eval_examples=8, eval_batches=1, target=0.99)


RUNS = with_seeds([Run(name=f"{m}-n{n}", config=_config(m, n), tags={"mixer": m, "copy_len": n})
                   for n, m in ((3, "gla"), (3, "attention"), (6, "gla"))], [0, 1])

FIGURES = [Figure("accuracy_vs_copy_length", x="copy_len", y="eval/accuracy", group="mixer",
                  title="Copying (tiny): accuracy vs string length")]


def compare(rows):
    """The comparison of `copying_cpu` (chance 1 / (V - 2))."""
    return _CPU["compare"](rows, vocab=VOCAB)

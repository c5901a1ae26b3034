"""Tiny `state_collapse_cpu` (runs in CI in seconds): GLA at d_model 8, one layer, trained on
passkey at length 16 and (the mitigation) at length 32, 2 seeds, 4 steps each (Mamba2 is left
out to keep it tiny); the
comparison probes them at lengths 16, 32 and 64 (accuracy and state norm). At a size that
learns nothing its comparison must say "not resolved"."""

import pathlib
import runpy

from research.sweep import Figure, Run, with_seeds

_CPU = runpy.run_path(str(pathlib.Path(__file__).with_name("state_collapse_cpu.py")))
TITLE = "State collapse on CPU (tiny): passkey beyond the training length"
MODELS = (("gla", "gla", 16, {}), ("gla-L32", "gla", 32, {}))

RUNS = with_seeds([Run(name=name, config=_CPU["config"](m, L, 4, d_model=8, steps=4,
                                                        n_layers=1, fields=f,
                                                        train_examples=64, eval_examples=8,
                                                        eval_batches=1),
                       tags={"model": name, "mixer": m, "train_len": L})
                   for name, m, L, f in MODELS], [0, 1])

FIGURES = [Figure("accuracy_at_train_length", x="model", y="eval/accuracy",
                  title="Passkey (tiny): accuracy at the training length")]


def compare(rows):
    """The comparison of `state_collapse_cpu` at lengths 16, 32, 64 (8 examples each)."""
    return _CPU["compare"](rows, lengths=(16, 32, 64), name="state_collapse_cpu_tiny", mitigated="gla-L32",
                           num_examples=8)

"""Tiny `jrt_cpu` (runs in CI in seconds): GLA single read vs JRT-Prompt at d_model 8, one layer,
on a small MQAR (vocab 32, length 24, 2 kv pairs), 2 seeds, 4 steps each (the second claim's
pair, linear attention vs the `jrt` mixer, is left out to keep it tiny: its row reads "no run
of ..."; the `jrt` mixer trains in `new_mixers_tiny`). It exercises JRT-Prompt data and the
honest comparison of the report at a size that learns nothing, so its comparison must say "not
resolved"."""

import pathlib
import runpy

from research.sweep import Figure, Run, with_seeds

_CPU = runpy.run_path(str(pathlib.Path(__file__).with_name("jrt_cpu.py")))
TITLE = "Just read twice on CPU (tiny): JRT-Prompt and JRT-RNN on MQAR"
TASK = {"vocab_size": 32, "seq_len": 24, "num_kv_pairs": 2}


def _config(mixer, jrt_prompt):
    cfg = _CPU["config"](mixer, jrt_prompt, d_model=8, task=TASK, steps=4, batch_size=4,
                         train_examples=64, eval_examples=8, eval_batches=1)
    import dataclasses
    return cfg.replace(model=dataclasses.replace(cfg.model, n_layers=1))


RUNS = with_seeds([Run(name=f"{name}-d8", config=_config(m, jp),
                       tags={"model": name, "mixer": m, "jrt_prompt": jp})
                   for name, m, jp in _CPU["VARIANTS"][:2]], [0, 1])

FIGURES = [Figure("jrt_accuracy", x="model", y="eval/accuracy",
                  title="MQAR (tiny): single read vs JRT")]


def compare(rows):
    """The comparison of `jrt_cpu` (chance 2 / V)."""
    return _CPU["compare"](rows, vocab=TASK["vocab_size"])

"""In-context language learning on two CPU cores (the ICLL seed: Akyürek, Wang, Kim and Andreas
2024, "In-Context Language Learning: Architectures and Algorithms"): on random-DFA languages
(REGBENCH), the Transformer predicts legal next letters better than recurrent models, and adding
static n-gram layers ("n-gram heads") to a recurrent model closes most of that gap.

Task: `RegularLanguages` (every example from its own random DFA: 4-12 states, 4-18 of 18
letters, 1-3 edges per state; strings of 1-49 letters joined by a separator), length 128; scored
on held-out test-split DFAs (`EVAL_EXAMPLES` = 256 examples through
`research.probes.evaluate_task`):
- `probe/dfa_accuracy`: the greedy next letter is a legal transition of the example's DFA;
- `probe/dfa_tvd`: total variation distance between the model's next-letter distribution and
  the uniform distribution over the legal letters (lower is better);
- `probe/dfa_accuracy@K`, `probe/dfa_tvd@K`: the same at the letters of string K of the example,
  i.e. after K complete in-context strings (K = 0, 1, 2, 3, 4+; a 128-token example holds ~5).
Models at d_model 32 (2 layers, 2 heads, width-4 short conv, d_ff = d_model), 2 seeds each:
softmax attention, GLA (`state_size_cpu`'s: no output gate, init_half_life 1024), DeltaNet,
and GLA with two static n-gram layers (n = 2 and 3, `ModelConfig.ngram_layers`) before its
blocks. (The paper's other recurrent models, RetNet and Mamba2, do not fit this CPU budget.)

Recipe: AdamW at a constant lr 3e-3 after 50 warmup steps, batch 32, at most 500 steps (no early
stop: next-token accuracy on this task never reaches a target), evaluation every 100 steps.

Chance for both metrics: a uniformly random letter is legal with probability ~ 2 / 18 (2 edges
per state on average, 18 letters), and its distribution is at TV distance ~ 1 - 2/18 from the
legal one; the comparison judges `1 - dfa_tvd` so that higher is better for both.

Published findings to compare with: Transformer > recurrent models (GLA, DeltaNet here) on
both metrics; recurrent + n-gram layers closes most of the gap to the Transformer.
"""

import pathlib
import runpy

from research.sweep import Figure, Run, with_seeds

_F = runpy.run_path(str(pathlib.Path(__file__).with_name("_findings.py")))
TITLE = "In-context language learning on CPU: random DFAs, Transformer vs recurrent vs n-gram layers"
SEQ_LEN = 128
VOCAB = 32  # 18 letters + separator, padded
D_MODEL = 32
STEPS = 500
SEEDS = (0, 1)
MODELS = (("attention", "attention", ()), ("gla", "gla", ()), ("deltanet", "deltanet", ()),
          ("gla+ngram", "gla", (2, 3)))
EVAL_EXAMPLES = 256


def config(mixer, ngram=(), d_model=D_MODEL, seq_len=SEQ_LEN, steps=STEPS, **kw):
    """Train `mixer` (plus n-gram layers `ngram`) on random-DFA languages of length `seq_len`."""
    return _F["config"](_F["model"](mixer, d_model, VOCAB, ngram_layers=tuple(ngram),
                                    n_layers=kw.pop("n_layers", 2)),
                        "RegularLanguages", {"seq_len": seq_len}, steps=steps, target=None,
                        **kw)


RUNS = []
for seed in SEEDS:
    RUNS += with_seeds([Run(name=name, config=config(m, ng),
                            tags={"model": name, "mixer": m, "task": "dfa"})
                        for name, m, ng in MODELS], [seed])

FIGURES = [
    Figure("dfa_accuracy", x="model", y="probe/dfa_accuracy",
           title="Random DFAs (L=128, CPU): legal next-letter accuracy (mean of 2 seeds)"),
    Figure("dfa_tvd", x="model", y="probe/dfa_tvd",
           title="Random DFAs (L=128, CPU): TV distance to the legal letters (mean of 2 seeds)"),
]


def _gap_closed(rows, y, transformer="attention", recurrent="gla", hybrid="gla+ngram"):
    """The share of the Transformer - recurrent gap that the n-gram layers close (seed means)."""
    mean = {}
    for m in (transformer, recurrent, hybrid):
        v = [r[y] for r in rows if r.get("model") == m and isinstance(r.get(y), float)]
        if len(v) < 2:
            return None, f"fewer than 2 seeds of {m}"
        mean[m] = sum(v) / len(v)
    gap = mean[transformer] - mean[recurrent]
    if gap <= 0:
        return None, f"no gap to close ({transformer} - {recurrent} = {gap:+.3f})"
    return (mean[hybrid] - mean[recurrent]) / gap, ""


STRINGS_SEEN = ("0", "1", "2", "3", "4+")  # the bins of `evaluate_task` (DFA_BINS)


def _seed_mean(rows, model, y):
    v = [r[y] for r in rows if r.get("model") == model and isinstance(r.get(y), float)]
    return (sum(v) / len(v), min(v), max(v), len(v)) if v else None


def _by_strings_seen(rows, chance, pairs):
    """The metrics against the number of in-context strings seen: a table per metric (seed
    means, model x bin), and the pairs judged at K = 0 and K = 4+ (the same rule)."""
    models = [name for name, _, _ in MODELS]
    lines = ["Against the number of in-context examples: K = complete strings of the example's "
             "DFA before the predicted letter (cells: seed mean (min-max); last column: the rise "
             "from the first string to the fifth and later).", ""]
    for y, label in (("probe/dfa_accuracy", "legal next-letter accuracy"),
                     ("probe/1-dfa_tvd", "1 - TV distance")):
        lines += [f"{label} (`{y}@K`):", "",
                  "| model | " + " | ".join(f"K={k}" for k in STRINGS_SEEN) + " | K=4+ - K=0 |",
                  "|---|" + "---|" * (len(STRINGS_SEEN) + 1)]
        for m in models:
            cells, means = [], {}
            for k in STRINGS_SEEN:
                p = _seed_mean(rows, m, f"{y}@{k}")
                if p is None:
                    cells.append("")
                    continue
                means[k] = p[0]
                cells.append(f"{p[0]:.3f}" + (f" ({p[1]:.3f}-{p[2]:.3f})" if p[3] > 1 else ""))
            rise = (f"{means['4+'] - means['0']:+.3f}" if "0" in means and "4+" in means else "")
            lines.append(f"| {m} | " + " | ".join(cells) + f" | {rise} |")
        lines.append("")
    long = [{"model": r.get("model"), "seed": r.get("seed"), "strings seen": k,
             y: r[f"{y}@{k}"]}
            for r in rows for k in ("0", "4+") for y in ("probe/dfa_accuracy",)
            if isinstance(r.get(f"{y}@{k}"), float)]
    if long:
        lines += ["The pairs judged in the first string (K = 0, no complete example yet) and "
                  "after 4 or more (`probe/dfa_accuracy@K`, the same rule):", "",
                  _F["judge_pairs"](long, pairs, chance=chance, y="probe/dfa_accuracy",
                                    group="model", by="strings seen"), ""]
    else:
        lines += ["Per-bin metrics: not measured (no row has `probe/dfa_accuracy@K`).", ""]
    return lines


def compare(rows):
    """Transformer > GLA, DeltaNet and GLA + n-gram > GLA on both metrics (the report's rule),
    the share of the gap the n-gram layers close, and both metrics against the number of
    in-context strings seen."""
    from research.sweep.report import rule_text
    chance = 2 / 18
    rows = [{**r, **{f"probe/1-dfa_tvd{b}": 1 - r[f"probe/dfa_tvd{b}"]
                     for b in [""] + [f"@{k}" for k in STRINGS_SEEN]
                     if isinstance(r.get(f"probe/dfa_tvd{b}"), float)}} for r in rows]
    pairs = [("attention", "gla"), ("attention", "deltanet"), ("gla+ngram", "gla")]
    lines = ["Published (Akyürek et al. 2024, ICLL): on random-DFA languages the Transformer "
             "beats the recurrent models, and n-gram layers added to a recurrent model close "
             "most of the gap.", "",
             rule_text(chance, "a uniformly random letter is legal with probability ~ 2 / 18",
                       y="probe/dfa_accuracy"),
             "The same rule for `probe/1-dfa_tvd` (1 - TV distance; chance ~ 2 / 18 too).", ""]
    for y in ("probe/dfa_accuracy", "probe/1-dfa_tvd"):
        lines += [f"`{y}`:", "", _F["judge_pairs"](rows, pairs, chance=chance, y=y,
                                                   group="model", by="task"), ""]
        share, why = _gap_closed(rows, y)
        closed = (f"GLA + n-gram layers close {share:.0%} of the attention - GLA gap in `{y}` "
                  f"(\"most\" = more than half, and only if gla+ngram > gla holds above"
                  + ("; above 100%: gla+ngram scores above attention" if share > 1 else "")
                  + ")"
                  if share is not None else f"Gap closed in `{y}`: not resolved ({why})")
        lines += [closed + ".", ""]
    lines += _by_strings_seen(rows, chance, pairs)
    return "\n".join(lines)


def strings_seen_figure(workdir="runs/icll_cpu", path=None, metric="probe/dfa_accuracy"):
    """Draw `metric@K` (seed mean) against K, the in-context strings seen, one line per model,
    from WORKDIR/results.csv (the sweep's Figures plot one column against another, so this one
    is drawn here): `python experiments/sweeps/icll_cpu.py [WORKDIR]` writes
    experiments/sweeps/figures/icll_cpu_by_strings_seen.png."""
    from research.probes import plots
    from research.sweep.results import read_csv
    rows = read_csv(pathlib.Path(workdir) / "results.csv")
    points = []
    for name, _, _ in MODELS:
        for k in STRINGS_SEEN:
            v = [r[f"{metric}@{k}"] for r in rows if r.get("model") == name
                 and isinstance(r.get(f"{metric}@{k}"), float)]
            if v:
                points.append({"model": name, "strings seen": k, metric: sum(v) / len(v)})
    if not points:
        raise ValueError(f"no row of {workdir}/results.csv has {metric}@K")
    path = path or pathlib.Path(__file__).with_name("figures") / "icll_cpu_by_strings_seen.png"
    return plots.plot_lines(points, "strings seen", metric, path, group="model",
                            title=f"Random DFAs (CPU): {metric.split('/')[-1]} vs strings seen "
                                  "(2 seeds)")


if __name__ == "__main__":
    import sys
    print(strings_seen_figure(*sys.argv[1:2]))

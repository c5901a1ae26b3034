"""State collapse on two CPU cores (the Stuffed Mamba seed: Chen, Han, Liu, Sun and Liu 2024,
"Stuffed Mamba: State Collapse and State Capacity of RNN-Based Long-Context Modeling"): a
recurrent model trained at length L fails beyond some longer length, and the recurrent state's
norm shows why (it keeps growing, or saturates, past the training length); training on longer
sequences (one of the paper's mitigations) moves the failure point out.

Task: `Passkey` (a KEY token and 2 digits hidden at a uniform depth in random filler; QUERY at
the end asks for the digits; the 2 digit positions are scored, chance 1/10), vocab 32. Models
at d_model 32 (2 layers, 2 heads, width-4 short conv, d_ff = d_model), 2 seeds each, with equal
recurrent state (1024 floats per sequence over the 2 layers):
- GLA (`state_size_cpu`'s: no output gate, init_half_life 1024, expand_k 1) trained at L = 64;
- Mamba2 (d_state 8, expand 2: 2 heads x 8 x 32 per layer) trained at L = 64;
- the mitigation: the same GLA trained at L = 256 (batch 8 instead of 32: equal tokens per step).
Training: AdamW at a constant lr 3e-3 after 50 warmup steps, evaluation every 100 steps on 4
batches, stop at 0.99 eval accuracy, at most 500 steps.

After training, `compare` probes every run (cached in its run folder as collapse_probe.json):
passkey accuracy at lengths 64, 128, 256, 512 and 1024 (`research.probes.length_extrapolation`,
128 examples each, depth uniform) and the recurrent state norm along a 1024-token passkey
sequence (`research.probes.state_norms`: Frobenius norm per head, averaged over heads, layers and
4 sequences). The failure point of a run is the first evaluated length where its accuracy drops
below the above-chance threshold (5 x chance = 0.5).

Published findings to compare with: models trained at short L fail beyond a length somewhat
above L while the state norm grows; training on longer sequences (or stronger forgetting)
moves that point out.
"""

import json
import pathlib
import runpy

from research.sweep import Figure, Run, with_seeds

_F = runpy.run_path(str(pathlib.Path(__file__).with_name("_findings.py")))
TITLE = "State collapse on CPU: passkey beyond the training length, state norm, training longer"
VOCAB = 32
PASSKEY_LEN = 2
D_MODEL = 32
STEPS = 500
SEEDS = (0, 1)
EVAL_LENGTHS = (64, 128, 256, 512, 1024)
WORKDIR = "runs/state_collapse_cpu"
# (name, mixer, training length, batch, extra model fields)
MODELS = (("gla", "gla", 64, 32, {}), ("mamba2", "mamba2", 64, 32, {"d_state": 8}),
          ("gla-L256", "gla", 256, 8, {}))


def config(mixer, train_len, batch_size, d_model=D_MODEL, vocab=VOCAB, steps=STEPS,
           fields=None, **kw):
    """Train `mixer` on passkey retrieval at length `train_len`."""
    return _F["config"](_F["model"](mixer, d_model, vocab, n_layers=kw.pop("n_layers", 2),
                                    **(fields or {})),
                        "Passkey", {"vocab_size": vocab, "seq_len": train_len,
                                    "passkey_len": PASSKEY_LEN},
                        steps=steps, batch_size=batch_size, target=0.99, **kw)


RUNS = []
for seed in SEEDS:
    RUNS += with_seeds([Run(name=name, config=config(m, L, b, fields=f),
                            tags={"model": name, "mixer": m, "train_len": L})
                        for name, m, L, b, f in MODELS], [seed])

FIGURES = [
    Figure("accuracy_at_train_length", x="model", y="eval/accuracy",
           title="Passkey (CPU): accuracy at the training length (mean of 2 seeds)"),
]


def probe_run(run_dir, lengths, num_examples=128, batch_size=16, norm_examples=4, chunk=16):
    """Passkey accuracy at each of `lengths` and the state norm along max(lengths) tokens for
    the trained run in `run_dir` (cached in run_dir/collapse_probe.json)."""
    from research.probes.capacity import length_extrapolation
    from research.probes.dynamics import state_norms
    from research.probes.runner import eval_task_of
    from research.train.trainer import restore_model
    run_dir = pathlib.Path(run_dir)
    cache = run_dir / "collapse_probe.json"
    key = {"lengths": list(lengths), "num_examples": num_examples,
           "norm_examples": norm_examples, "chunk": chunk}
    if cache.exists():
        saved = json.loads(cache.read_text())
        if saved.get("key") == key:
            return saved
    model, cfg, step = restore_model(run_dir)
    task = eval_task_of(cfg)
    acc = length_extrapolation(model, task, [n / task.seq_len for n in lengths],
                               num_examples, batch_size)
    longest = max(lengths) - max(lengths) % chunk
    tokens = task.with_(seq_len=longest).batch(range(norm_examples))["tokens"]
    norms = state_norms(model, tokens, chunk)
    per_pos = [float(sum(float(layer["norm"][i].mean()) for layer in norms["layers"]) /
                     max(len(norms["layers"]), 1)) for i in range(len(norms["positions"]))]
    out = {"key": key, "step": step, "train_len": task.seq_len,
           "accuracy": {str(r["seq_len"]): r.get("accuracy") for r in acc},
           "positions": [int(p) for p in norms["positions"]], "state_norm": per_pos}
    cache.write_text(json.dumps(out, indent=1) + "\n")
    return out


def _failure_point(acc, lengths, thr):
    """The first length of `lengths` with accuracy < thr (None: it never fails)."""
    for n in lengths:
        if acc.get(str(n)) is None or acc[str(n)] < thr:
            return n
    return None


def compare(rows, lengths=EVAL_LENGTHS, workdir=None, name="state_collapse_cpu",
            base="gla", mitigated="gla-L256", num_examples=128):
    """The failure point beyond the training length of each model, the state norm
    there, and whether the mitigation (`mitigated` against `base`) moves the point out; every
    verdict by the report's rule (each seed above chance at its training length, 2 seeds)."""
    from research.probes import plots
    from research.sweep.report import chance_threshold
    chance = 1 / 10
    thr = chance_threshold(chance)
    workdir = pathlib.Path(workdir) if workdir else _F["find_workdir"](WORKDIR)
    probes = {}  # model -> [probe of each seed]
    for r in rows:
        run_dir = workdir / "runs" / str(r.get("name"))
        if r.get("status") == "done" and (run_dir / "config.json").exists():
            probes.setdefault(r["model"], []).append(probe_run(run_dir, lengths, num_examples))
    lines = ["Published (Chen et al. 2024, \"Stuffed Mamba\"): a recurrent model trained at "
             "length L fails beyond some longer length while its state norm grows (state "
             "collapse); training on longer sequences, or forgetting more, moves that point.",
             "",
             f"Rule: a run counts as working at a length when its passkey accuracy is >= "
             f"{thr:.3f} (max(5 x chance, chance + 0.1), chance = 0.1 per digit). A model "
             "\"fails beyond L\" when both seeds work at the training length and both stop "
             "working at some evaluated longer length; the mitigation \"moves the point\" when "
             "its earliest failure point over seeds lies beyond the latest of the base model's "
             "(a run that never fails counts as beyond the longest length). Fewer than 2 seeds, "
             "or a seed not working at its training length: not resolved.", "",
             "Passkey accuracy per evaluation length (mean over seeds, range in brackets), "
             "failure point per seed, and the state norm (mean over layers and heads) at the "
             "training length and at the longest length:", "",
             "| model | train_len | " + " | ".join(f"L={n}" for n in lengths) +
             " | failure point (per seed) | state norm at train_len | state norm at "
             f"{max(lengths)} | fails beyond train_len | why |",
             "|" + "---|" * (len(lengths) + 7)]
    fail = {}
    curves, norm_rows = [], []
    for m, ps in probes.items():
        cells = []
        for n in lengths:
            v = [p["accuracy"].get(str(n)) for p in ps if p["accuracy"].get(str(n)) is not None]
            cells.append(f"{sum(v) / len(v):.3f} ({min(v):.3f}-{max(v):.3f})" if len(v) > 1
                         else (f"{v[0]:.3f}" if v else ""))
            if v:
                curves.append({"model": m, "seq_len": n, "accuracy": sum(v) / len(v)})
        train_len = ps[0]["train_len"]
        fps = [_failure_point(p["accuracy"], [n for n in lengths if n >= train_len], thr)
               for p in ps]
        fail[m] = fps
        at_train = [p["accuracy"].get(str(train_len)) for p in ps]
        pos = ps[0]["positions"]
        i_train = min(range(len(pos)), key=lambda i: abs(pos[i] - train_len))
        n_train = sum(p["state_norm"][i_train] for p in ps) / len(ps)
        n_last = sum(p["state_norm"][-1] for p in ps) / len(ps)
        for i, q in enumerate(pos):
            norm_rows.append({"model": m, "position": q,
                              "state_norm": sum(p["state_norm"][i] for p in ps) / len(ps)})
        if len(ps) < 2:
            verdict, why = "not resolved", f"only {len(ps)} seed"
        elif any(a is None or a < thr for a in at_train):
            verdict, why = "not resolved", (f"a seed below {thr:.3f} at its training length "
                                            f"({', '.join(f'{a:.3f}' for a in at_train)})")
        elif all(f is not None for f in fps):
            verdict, why = "holds", ""
        elif all(f is None for f in fps):
            verdict, why = "fails", f"works up to {max(lengths)} on every seed"
        else:
            verdict, why = "not resolved", "the seeds disagree"
        fp = ", ".join(str(f) if f else f">{max(lengths)}" for f in fps)
        lines.append(f"| {m} | {train_len} | " + " | ".join(cells) +
                     f" | {fp} | {n_train:.3g} | {n_last:.3g} | {verdict} | {why} |")
    if not probes:
        lines.append("| (no finished run) |" + " |" * (len(lengths) + 7))
    lines.append("")
    # the mitigation
    ok = {m: m in probes and len(probes[m]) >= 2 and all(
        p["accuracy"].get(str(p["train_len"])) is not None and
        p["accuracy"][str(p["train_len"])] >= thr for p in probes[m]) for m in (base, mitigated)}
    big = max(lengths) * 2
    if not all(ok.values()):
        miss = [m for m, v in ok.items() if not v]
        mv, why = "not resolved", (f"{', '.join(miss)}: fewer than 2 seeds or a seed not "
                                   "working at its training length")
    else:
        latest_base = max(f or big for f in fail[base])
        earliest_mit = min(f or big for f in fail[mitigated])
        if earliest_mit > latest_base:
            mv, why = "holds", ""
        elif earliest_mit < min(f or big for f in fail[base]):
            mv, why = "fails", "the mitigated model fails earlier"
        else:
            mv, why = "not resolved", "the failure points overlap over seeds"
    def _fp(m):
        if m not in fail:
            return "no run"
        return ", ".join(str(f) if f else f">{max(lengths)}" for f in fail[m])
    lines.append(f"Mitigation (training on longer sequences): {mitigated} against {base} — "
                 f"failure points {_fp(mitigated)} vs {_fp(base)}: **{mv}**" +
                 (f" ({why})." if why else "."))
    if curves:
        figs = pathlib.Path(__file__).absolute().parent / "figures"
        rel = _F["find_report_dir"]()
        import os
        for stem, data, x, y, kw in (
                ("accuracy_vs_length", curves, "seq_len", "accuracy",
                 {"ylim": (0, 1.02), "vline": min(p[0]["train_len"] for p in probes.values())}),
                ("state_norm", norm_rows, "position", "state_norm", {})):
            path = plots.plot_lines(data, x, y, figs / f"{name}_{stem}.png", group="model",
                                    logx=True, title=f"Passkey (CPU): {y} vs {x} "
                                    "(mean of seeds)", **kw)
            link = pathlib.Path(os.path.relpath(path, rel)).as_posix()
            lines += ["", f"![{stem}]({link})"]
    return "\n".join(lines)

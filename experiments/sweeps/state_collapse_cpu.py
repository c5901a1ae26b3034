"""State collapse on two CPU cores (the Stuffed Mamba seed: Chen, Han, Liu, Sun and Liu 2024,
"Stuffed Mamba: State Collapse and State Capacity of RNN-Based Long-Context Modeling"): a
recurrent model trained at length L fails beyond some longer length even when the needle is
recent, and the recurrent state's norm shows why (it keeps growing past the training length);
forgetting more (here a decay floor, one of the paper's mitigations) moves the failure point out.

Task: `Passkey` (a KEY token and 2 digits hidden in random filler; QUERY at the end asks for the
digits; the 2 digit positions are scored, chance 1/10), vocab 32, trained at L = 64 with the
depth uniform. Models at d_model 32 (2 layers, 2 heads, width-4 short conv, d_ff = d_model),
2 seeds each, with equal recurrent state (1024 floats per sequence over the 2 layers):
- GLA (`state_size_cpu`'s: no output gate, init_half_life 1024, expand_k 1);
- DeltaNet (its defaults: L2-normalised q/k, data-dependent beta);
- the mitigation, gla-floor: the same GLA with `max_half_life` 64, a decay floor (every
  per-token decay <= 2^(-1/64), so the state holds about 92 tokens' worth of writes at most).
Training: AdamW at a constant lr 3e-3 after 50 warmup steps, batch 64 (at batch 32 GLA seed 0
and Mamba2 stayed at chance in 500 steps: passkey has only 2 scored tokens per sequence, and the
larger batch doubles that signal), evaluation every 100 steps on 4 batches, stop at 0.99 eval
accuracy, at most 400 steps. (Mamba2 left out: at batch 32 it was still climbing at 0.37-0.50
after 500 steps, more than this budget allows.)

After training, `compare` probes every run (cached in its run folder as collapse_probe.json)
at lengths 64, 128, 256, 512, 1024 and 2048 (1x-32x), 128 examples each: passkey accuracy with
the KEY 32 tokens before the QUERY (the "recent needle": a distance seen in training, so a
failure at a longer length is the state's, not the distance's), passkey accuracy at a uniform
depth (`research.probes.length_extrapolation`), and the recurrent state norm along a 2048-token
passkey sequence (`research.probes.state_norms`: Frobenius norm per head, averaged over heads,
layers and 4 sequences). A run's failure point is the first evaluated length where its
recent-needle accuracy drops below the above-chance threshold (5 x chance = 0.5).

Published findings to compare with: models trained at short L fail beyond a length somewhat
above L, even for recent needles, while the state norm grows; stronger forgetting, state
normalisation or training on longer sequences moves that point out.
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
STEPS = 400
BATCH = 64
FLOOR = 64.0  # gla-floor's max_half_life (tokens): the decay floor
NEEDLE_DISTANCE = 32  # the "recent needle" probe: KEY this many tokens before the QUERY
SEEDS = (0, 1)
EVAL_LENGTHS = (64, 128, 256, 512, 1024, 2048)
WORKDIR = "runs/state_collapse_cpu"
# (name, mixer, training length, batch, extra model fields)
MODELS = (("gla", "gla", 64, BATCH, {}), ("deltanet", "deltanet", 64, BATCH, {}),
          ("gla-floor", "gla", 64, BATCH, {"max_half_life": FLOOR}))

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


def _recent_depth(task, seq_len, distance):
    """The depth that puts the KEY `distance` tokens before the QUERY at `seq_len` (clipped to
    the start of shorter sequences)."""
    t = task.with_(seq_len=seq_len)
    return min(1.0, max(0.0, (t.haystack_len - distance) / (t.haystack_len - t.passkey_len - 1)))


def probe_run(run_dir, lengths, num_examples=128, batch_size=16, norm_examples=4, chunk=16,
              needle_distance=NEEDLE_DISTANCE):
    """For the trained run in `run_dir` (cached in run_dir/collapse_probe.json): passkey accuracy
    at each of `lengths` with the needle `min(needle_distance, L_train / 2)` tokens before the
    query ("recent": within what training saw, so a failure is the state's, not the distance's)
    and at a uniform depth, and the state norm along max(lengths) tokens."""
    from research.probes.capacity import length_extrapolation
    from research.probes.dynamics import state_norms
    from research.probes.evaluate import evaluate_task
    from research.probes.runner import eval_task_of
    from research.train.trainer import restore_model
    run_dir = pathlib.Path(run_dir)
    cache = run_dir / "collapse_probe.json"
    key = {"lengths": list(lengths), "num_examples": num_examples,
           "norm_examples": norm_examples, "chunk": chunk}
    if cache.exists():
        saved = json.loads(cache.read_text())
        # a probe cached before the recent-needle probe existed has no "recent_accuracy";
        # compare then judges it on its uniform-depth accuracy
        if saved.get("key") == key and saved.get("needle_request", needle_distance) == \
                needle_distance:
            return saved
    model, cfg, step = restore_model(run_dir)
    task = eval_task_of(cfg)
    dist = min(needle_distance, task.seq_len // 2)
    acc = length_extrapolation(model, task, [n / task.seq_len for n in lengths],
                               num_examples, batch_size)
    recent = {str(n): evaluate_task(model, task.with_(seq_len=n, depth=_recent_depth(
        task, n, dist)), num_examples, batch_size).get("accuracy") for n in lengths}
    longest = max(lengths) - max(lengths) % chunk
    tokens = task.with_(seq_len=longest).batch(range(norm_examples))["tokens"]
    norms = state_norms(model, tokens, chunk)
    per_pos = [float(sum(float(layer["norm"][i].mean()) for layer in norms["layers"]) /
                     max(len(norms["layers"]), 1)) for i in range(len(norms["positions"]))]
    out = {"key": key, "step": step, "train_len": task.seq_len,
           "needle_request": needle_distance, "needle_distance": dist,
           "accuracy": {str(r["seq_len"]): r.get("accuracy") for r in acc},
           "recent_accuracy": recent,
           "positions": [int(p) for p in norms["positions"]], "state_norm": per_pos}
    cache.write_text(json.dumps(out, indent=1) + "\n")
    return out


def _failure_point(acc, lengths, thr):
    """The first length of `lengths` with accuracy < thr (None: it never fails)."""
    for n in lengths:
        if acc.get(str(n)) is None or acc[str(n)] < thr:
            return n
    return None


def _norm_at(p, n):
    """The state norm of probe `p` at the probed position nearest to `n` tokens."""
    pos = p["positions"]
    return p["state_norm"][min(range(len(pos)), key=lambda i: abs(pos[i] - n))]


def _num(x):
    return "-" if x is None else f"{x:.3f}"


def _cell(v):
    v = [x for x in v if x is not None]
    if not v:
        return ""
    return (f"{sum(v) / len(v):.3f} ({min(v):.3f}-{max(v):.3f})" if len(v) > 1
            else f"{v[0]:.3f}")


def compare(rows, lengths=EVAL_LENGTHS, workdir=None, name="state_collapse_cpu",
            base="gla", mitigated=None, num_examples=128):
    """Where each model fails beyond its training length (passkey with a recent needle: the
    state's failure, not the needle's distance), the state norm there, and whether the
    mitigation (`mitigated` against `base`) moves the failure point out; every verdict by the
    report's rule (each seed above chance at its training length, 2 seeds). `mitigated` None:
    the first model named `base`-something (here gla-floor)."""
    from research.probes import plots
    from research.sweep.report import chance_threshold
    chance = 1 / 10
    thr = chance_threshold(chance)
    workdir = pathlib.Path(workdir) if workdir else _F["find_workdir"](WORKDIR)
    probes = {}  # model -> [(seed, probe)]
    for r in rows:
        run_dir = workdir / "runs" / str(r.get("name"))
        if r.get("status") == "done" and (run_dir / "config.json").exists():
            probes.setdefault(r["model"], []).append(
                (r.get("seed"), probe_run(run_dir, lengths, num_examples)))
    if mitigated is None:
        mitigated = next((m for m in probes if m.startswith(f"{base}-")), f"{base}-floor")
    for ps in probes.values():  # probes cached before the recent-needle probe existed
        for _, p in ps:
            p.setdefault("recent_accuracy", p["accuracy"])
    big = max(lengths) * 2
    fmt_fp = lambda f: str(f) if f else f">{max(lengths)}"  # noqa: E731
    lines = ["Published (Chen et al. 2024, \"Stuffed Mamba\"): a recurrent model trained at "
             "length L fails beyond some longer length even when the needle is recent, while "
             "its state norm grows (state collapse); forgetting more (e.g. a decay floor), "
             "state normalisation or training on longer sequences moves that point.", "",
             f"Rule: a run works at a length when its recent-needle passkey accuracy (KEY "
             f"min({NEEDLE_DISTANCE}, L_train / 2) tokens before the QUERY) is >= {thr:.3f} "
             "(max(5 x chance, chance + 0.1), chance = 0.1 per digit); its failure point is the "
             "first evaluated length >= L_train where it does not. A model \"fails beyond "
             "L_train\" (holds) when both seeds work at the training length and both fail at "
             "some evaluated length; \"fails\" (not reproduced) when both work at every length. "
             "The mitigation \"moves the point\" (holds) when its earliest failure point over "
             "seeds lies beyond the latest of the base model's (never failing counts as beyond "
             "the longest length); \"fails\" when its latest lies before the base's earliest. "
             "Fewer than 2 seeds, or a seed not working at its training length: not resolved.",
             "", "Per seed: recent-needle accuracy at each length (uniform-depth accuracy in "
             "brackets), failure point, and the state norm (Frobenius, mean over layers and "
             "heads, 4 sequences) after L_train and after the longest length:", "",
             "| run | L_train | " + " | ".join(f"L={n}" for n in lengths) +
             f" | failure point | state norm at L_train | state norm at {max(lengths)} |",
             "|" + "---|" * (len(lengths) + 5)]
    for m, ps in probes.items():
        for seed, p in ps:
            cells = [f"{_num(p['recent_accuracy'].get(str(n)))} "
                     f"({_num(p['accuracy'].get(str(n)))})" for n in lengths]
            fp = _failure_point(p["recent_accuracy"],
                                [n for n in lengths if n >= p["train_len"]], thr)
            lines.append(f"| {m} s{seed} | {p['train_len']} | " + " | ".join(cells) +
                         f" | {fmt_fp(fp)} | {_norm_at(p, p['train_len']):.3g} | "
                         f"{p['state_norm'][-1]:.3g} |")
    if not probes:
        lines.append("| (no finished run) |" + " |" * (len(lengths) + 4))
    lines += ["", "Per model (mean over seeds, range in brackets), recent needle:", "",
              "| model | L_train | " + " | ".join(f"L={n}" for n in lengths) +
              " | failure points | fails beyond L_train | why |",
              "|" + "---|" * (len(lengths) + 5)]
    fail = {}
    curves, norm_rows = [], []
    for m, ps in probes.items():
        ps = [p for _, p in ps]
        cells = []
        for n in lengths:
            v = [p["recent_accuracy"].get(str(n)) for p in ps]
            u = [p["accuracy"].get(str(n)) for p in ps]
            cells.append(_cell(v))
            for what, vals in (("recent needle", v), ("uniform depth", u)):
                vals = [x for x in vals if x is not None]
                if vals:
                    curves.append({"model": f"{m} ({what})", "seq_len": n,
                                   "accuracy": sum(vals) / len(vals)})
        train_len = ps[0]["train_len"]
        fps = [_failure_point(p["recent_accuracy"], [n for n in lengths if n >= train_len], thr)
               for p in ps]
        fail[m] = fps
        at_train = [p["recent_accuracy"].get(str(train_len)) for p in ps]
        for i, q in enumerate(ps[0]["positions"]):
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
        lines.append(f"| {m} | {train_len} | " + " | ".join(cells) +
                     f" | {', '.join(fmt_fp(f) for f in fps)} | {verdict} | {why} |")
    if not probes:
        lines.append("| (no finished run) |" + " |" * (len(lengths) + 4))
    lines.append("")
    ok = {m: m in probes and len(probes[m]) >= 2 and all(
        p["recent_accuracy"].get(str(p["train_len"])) is not None and
        p["recent_accuracy"][str(p["train_len"])] >= thr for _, p in probes[m])
        for m in (base, mitigated)}
    if not all(ok.values()):
        miss = [m for m, v in ok.items() if not v]
        mv, why = "not resolved", (f"{', '.join(miss)}: fewer than 2 seeds or a seed not "
                                   "working at its training length")
    else:
        latest_base = max(f or big for f in fail[base])
        earliest_mit = min(f or big for f in fail[mitigated])
        if earliest_mit > latest_base:
            mv, why = "holds", ""
        elif max(f or big for f in fail[mitigated]) < min(f or big for f in fail[base]):
            mv, why = "fails", "the mitigated model fails earlier on every seed"
        else:
            mv, why = "not resolved", "the failure points overlap over seeds"

    def _fp(m):
        return ", ".join(fmt_fp(f) for f in fail[m]) if m in fail else "no run"
    lines.append(f"Mitigation: {mitigated} against {base} — recent-needle "
                 f"failure points {_fp(mitigated)} vs {_fp(base)}: **{mv}**" +
                 (f" ({why})." if why else "."))
    if curves:
        figs = pathlib.Path(__file__).absolute().parent / "figures"
        rel = _F["find_report_dir"]()
        import os
        for stem, data, x, y, kw in (
                ("accuracy_vs_length", curves, "seq_len", "accuracy",
                 {"ylim": (0, 1.02),
                  "vline": min(p["train_len"] for ps in probes.values() for _, p in ps)}),
                ("state_norm", norm_rows, "position", "state_norm", {})):
            path = plots.plot_lines(data, x, y, figs / f"{name}_{stem}.png", group="model",
                                    logx=True, title=f"Passkey (CPU): {y} vs {x} "
                                    "(mean of seeds)", **kw)
            link = pathlib.Path(os.path.relpath(path, rel)).as_posix()
            lines += ["", f"![{stem}]({link})"]
    return "\n".join(lines)

"""The report's comparison rule: an ordering holds only with every model above chance on every
seed and each gap beyond the seed spread; it fails only on a reversal beyond the spread; anything
else is "not resolved", with the reason. Plus seeds in sweep specs and seed means in figures."""

import pytest

from research.sweep.report import (
    chance_threshold,
    judge_order,
    ordering_table,
    recall_comparison,
    rule_text,
    seed_values,
    spread,
)

ORDER = ("deltanet", "gla", "retnet")
CHANCE = 1 / 128  # MQAR at vocab 256: uniform over the value half
THR = chance_threshold(CHANCE)


def _rows(points):
    """{(state_size, mixer): [y per seed]} -> result rows (two learning rates per seed, the
    second worse, so the best over lrs is the listed value)."""
    rows = []
    for (size, mixer), ys in points.items():
        for seed, y in enumerate(ys):
            for lr, drop in ((1e-3, 0.0), (3e-3, 0.05)):
                rows.append({"mixer": mixer, "state_size": size, "seed": seed, "lr": lr,
                             "eval/accuracy": max(0.0, y - drop)})
    return rows


def test_chance_threshold():
    assert chance_threshold(1 / 128) == pytest.approx(1 / 128 + 0.1)
    assert chance_threshold(0.1) == pytest.approx(0.5)
    assert chance_threshold(0.5, factor=1.0, offset=0.2) == pytest.approx(0.7)
    with pytest.raises(ValueError, match="chance"):
        chance_threshold(-0.1)
    with pytest.raises(ValueError, match="factor"):
        chance_threshold(0.1, factor=0.5)


def test_seed_values_best_per_seed():
    rows = _rows({(64, "gla"): [0.6, 0.7]}) + [{"mixer": "gla", "state_size": 64, "seed": 1,
                                                 "eval/accuracy": float("nan")}]
    assert seed_values(rows, "mixer", "state_size", "eval/accuracy") == {64: {"gla": [0.6, 0.7]}}
    assert spread([0.6, 0.7]) == pytest.approx(0.1) and spread([0.5]) == 0.0


def test_holds():
    pts = {"deltanet": [0.95, 0.97], "gla": [0.70, 0.74], "retnet": [0.40, 0.45]}
    assert judge_order(pts, ORDER, THR) == ("holds", [])


def test_fails_on_a_reversal_beyond_the_spread():
    pts = {"deltanet": [0.95, 0.97], "gla": [0.40, 0.42], "retnet": [0.70, 0.71]}
    verdict, why = judge_order(pts, ORDER, THR)
    assert verdict == "fails" and why == ["retnet above gla by 0.295 (seed spread 0.020)"]


@pytest.mark.parametrize("pts,reason", [
    # both at chance: the old table said "yes" here
    ({"deltanet": [0.98, 0.99], "gla": [0.009, 0.010], "retnet": [0.008, 0.008]},
     "at chance: gla 0.009, retnet 0.008 (< 0.108)"),
    # one seed per point
    ({"deltanet": [0.98], "gla": [0.7], "retnet": [0.4]},
     "only 1 seed of deltanet, gla, retnet (need 2)"),
    # gap smaller than the seed spread
    ({"deltanet": [0.95, 0.97], "gla": [0.60, 0.80], "retnet": [0.55, 0.60]},
     "gla - retnet = +0.125 within the seed spread 0.200"),
    # a model without runs at this state size
    ({"deltanet": [0.95, 0.97], "gla": [0.60, 0.62]}, "no run of retnet"),
    # a reversal within the spread is no failure either
    ({"deltanet": [0.95, 0.97], "gla": [0.50, 0.70], "retnet": [0.62, 0.64]},
     "gla - retnet = -0.030 within the seed spread 0.200"),
    # a tie (both at 1.0) is not a strict order
    ({"deltanet": [1.0, 1.0], "gla": [1.0, 1.0], "retnet": [0.5, 0.52]},
     "deltanet - gla = +0.000 within the seed spread 0.000"),
])
def test_not_resolved(pts, reason):
    verdict, why = judge_order(pts, ORDER, THR)
    assert verdict == "not resolved" and reason in why


def test_one_low_seed_is_at_chance():
    pts = {"deltanet": [0.95, 0.97], "gla": [0.05, 0.74], "retnet": [0.40, 0.45]}
    verdict, why = judge_order(pts, ORDER, THR)
    assert verdict == "not resolved" and why == ["at chance: gla 0.050 (< 0.108)"]


def test_judge_order_validates():
    with pytest.raises(ValueError, match="order"):
        judge_order({"a": [1.0]}, ("a",), 0.1)
    with pytest.raises(ValueError, match="min_seeds"):
        judge_order({"a": [1.0], "b": [0.5]}, ("a", "b"), 0.1, min_seeds=0)


def test_ordering_table_rows():
    rows = _rows({
        (1024, "deltanet"): [0.98, 0.99], (1024, "gla"): [0.009, 0.010],
        (1024, "retnet"): [0.008, 0.008],
        (4096, "deltanet"): [0.95, 0.97], (4096, "gla"): [0.70, 0.74],
        (4096, "retnet"): [0.40, 0.45],
        (8192, "deltanet"): [0.95, 0.97], (8192, "gla"): [0.40, 0.42],
        (8192, "retnet"): [0.70, 0.71],
    })
    table = ordering_table(rows, ORDER, chance=CHANCE, by="state_size")
    lines = table.splitlines()
    assert lines[0] == "| state_size | deltanet | gla | retnet | deltanet > gla > retnet | why |"
    assert lines[2].startswith("| 1024 | 0.985 (0.980-0.990) | 0.009 (0.009-0.010) |")
    assert "| not resolved | at chance: gla 0.009, retnet 0.008 (< 0.108) |" in lines[2]
    assert "yes" not in table
    assert lines[3].endswith("| holds |  |")
    assert "| fails | retnet above gla" in lines[4]


def test_recall_comparison_states_the_rule_and_attention():
    rows = _rows({(1024, "deltanet"): [0.98, 0.99], (1024, "gla"): [0.009, 0.010]})
    rows += [{"mixer": "attention", "state_size": 8192, "seed": s, "eval/accuracy": 0.99}
             for s in (0, 1)]
    text = recall_comparison(rows, ("deltanet", "gla"), chance=CHANCE,
                             chance_note="uniform over 128 values")
    assert rule_text(CHANCE, "uniform over 128 values") in text
    assert ">= 0.108 on every seed" in text and "uniform over 128 values" in text
    assert "| 1024 |" in text and "not resolved" in text and "at chance: gla" in text
    assert "near 1.0, as published" in text and "over 2 run(s)" in text


def test_with_seeds_and_seed_means_in_figures(tmp_path):
    from research import ModelConfig
    from research.sweep import Figure, Run, Sweep, task_config, with_seeds
    from research.sweep.results import make_figures, mean_over

    cfg = task_config(ModelConfig(vocab_size=32, d_model=16, n_layers=1, n_heads=2), "MQAR",
                      {"vocab_size": 32, "seq_len": 16, "num_kv_pairs": 2}, steps=4)
    runs = with_seeds([Run("a", cfg, {"mixer": "gla"})], [0, 3])
    assert [r.name for r in runs] == ["a-s0", "a-s3"]
    assert [r.tags for r in runs] == [{"mixer": "gla", "seed": 0}, {"mixer": "gla", "seed": 3}]
    assert [r.config.train.seed for r in runs] == [0, 3]
    for bad in ([], [1, 1], [-1], [True]):
        with pytest.raises(ValueError, match="seeds"):
            with_seeds(runs, bad)
    rows = [{"name": "a-s0", "mixer": "gla", "seed": 0, "state_size": 8, "eval/accuracy": 0.2},
            {"name": "a-s3", "mixer": "gla", "seed": 3, "state_size": 8, "eval/accuracy": 0.4}]
    mean = mean_over(rows, "eval/accuracy", "seed", ["mixer", "seed"])
    assert len(mean) == 1 and mean[0]["eval/accuracy"] == pytest.approx(0.3)
    sweep = Sweep(name="s", path=str(tmp_path / "s.py"), runs=tuple(runs),
                  figures=(Figure("f", x="state_size", y="eval/accuracy", group="mixer"),))
    (png,) = make_figures(sweep, tmp_path, rows)
    assert png.stat().st_size > 5000


def test_recall_comparison_published_sentence():
    rows = _rows({(512, "gsa"): [0.9, 0.92], (512, "gla"): [0.5, 0.55]})
    text = recall_comparison(rows, ("gsa", "gla"), chance=CHANCE, published="GSA > GLA (paper).")
    assert text.startswith("GSA > GLA (paper).") and "| 512 |" in text and "| holds |" in text

"""The tiny sweep over the new mixers (experiments/sweeps/new_mixers_tiny.py) end to end through
`python -m experiments.sweep`: every run trains, and the table and figure are written."""

import pathlib

from experiments import sweep as sweep_cli
from research.layers import MIXER_CLASSES
from research.sweep import read_csv

SWEEP = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "sweeps" / "new_mixers_tiny.py"


def test_new_mixers_tiny_sweep_writes_its_table(tmp_path, capsys):
    code = sweep_cli.main([str(SWEEP), "--workdir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 0, err
    rows = {r["name"]: r for r in read_csv(tmp_path / "results.csv")}
    want = {"gla", "lightnet", "mom", "jrt", "gla-ngram"} | (
        {"mamba", "s4d", "ttt_linear"} & set(MIXER_CLASSES))
    assert set(rows) == want
    for r in rows.values():
        assert r["status"] == "done" and r["step"] == 8, r
        assert 0.0 <= r["eval/accuracy"] <= 1.0 and r["state_size"] > 0
    assert rows["gla-ngram"]["state_size"] == rows["gla"]["state_size"] + 2 * 16  # 2 x L tokens
    md = (tmp_path / "results.md").read_text()
    assert "| lightnet |" in md and "accuracy_by_mixer.png" in md
    assert (tmp_path / "accuracy_by_mixer.png").stat().st_size > 5000

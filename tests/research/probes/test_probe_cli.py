"""`python -m experiments.probe --workdir RUN` on a freshly trained tiny run."""

import json

from experiments import probe as probe_cli


def test_probe_cli_writes_json_and_png(tmp_path, capsys):
    from research.train.config import get_preset
    from research.train.trainer import run as train
    workdir = tmp_path / "run"
    train(get_preset("test-tiny"), workdir, verbose=False)
    code = probe_cli.main(["--workdir", str(workdir), "--num-examples", "8", "--batch-size", "8",
                           "--factors", "1,2", "--probe", "task", "--probe", "length",
                           "--probe", "decay", "--probe", "state_norm"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "task/accuracy" in out
    probes = workdir / "probes"
    assert set(json.loads((probes / "length.json").read_text())[1]) >= {"factor", "accuracy"}
    assert json.loads((probes / "task.json").read_text())["num_examples"] == 8
    for name in ("length", "decay", "state_norm"):
        assert (probes / f"{name}.png").stat().st_size > 1000
    assert not (probes / "kv_pairs.json").exists()


def test_probe_cli_errors(tmp_path, capsys):
    assert probe_cli.main(["--workdir", str(tmp_path)]) == 2
    assert "config.json" in capsys.readouterr().err

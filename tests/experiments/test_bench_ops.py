"""The op benchmark (`make demo` before the training stack; `python -m experiments.bench_ops`)
runs end to end and reports a speedup column."""

from experiments import bench_ops


def test_bench_ops_runs_and_reports(capsys):
    rows = bench_ops.main(["--ops", "gla", "delta_rule", "--lengths", "64", "--head-dim", "16"])
    out = capsys.readouterr().out
    assert "device: cpu" in out and "xla f+b" in out
    assert {r["op"] for r in rows} == {"gla", "delta_rule"}
    assert all(r["speedup_fwdbwd"] > 0 for r in rows)

"""experiments/bench_kernels.py runs end to end on CPU (--small: interpret mode) and writes a
results file (its own section, the others kept) that says no GPU run is recorded; its check column compares pallas with reference."""

from experiments import bench_kernels


def test_bench_kernels_small_writes_results(tmp_path, capsys):
    out = tmp_path / "BENCHMARKS.md"
    other = "<!-- aot_compile:begin -->\nkept\n<!-- aot_compile:end -->\n"
    out.write_text("# Kernel benchmarks\n\n" + other)
    rows = bench_kernels.main(["--small", "--ops", "simple_gla", "--iters", "1", "--write", str(out)])
    assert len(rows) == 1 and rows[0]["check"].startswith("ok"), rows
    assert rows[0]["pallas_fb"] > 0 and rows[0]["xla_fb"] > 0
    text = out.read_text()
    assert "No GPU run has been recorded yet" in text
    assert "| simple_gla | 1,128,2,32 | ok" in text
    assert "device: cpu" in capsys.readouterr().out
    assert other in text, "--write must keep the file's other sections"
    assert text.count("<!-- sweep:bench-kernels -->") == 1

"""experiments.bench_tpu_aot on a small shape: libtpu compiles an op (both paths) and the
triangular inverse for one v5e chip; the table lands in its BENCHMARKS.md section."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                reason="needs libtpu (TPU compilation on CPU)")


def test_small_shape_table(tmp_path):
    md, js = tmp_path / "BENCHMARKS.md", tmp_path / "rows.json"
    md.write_text("# Kernel benchmarks\n\n<!-- sweep:gpu-check -->\nkept\n<!-- /sweep:gpu-check -->\n")
    cmd = [sys.executable, "-m", "experiments.bench_tpu_aot", "--ops", "simple_gla",
           "--shape", "1,128,1,128,128", "--inverse", "--write", str(md), "--json", str(js)]
    res = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ), capture_output=True, text=True,
                         timeout=600, check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = json.loads(js.read_text())["rows"]
    assert [(r["op"], r["impl"]) for r in rows][:2] == [("simple_gla", "pallas"),
                                                        ("simple_gla", "xla")]
    assert {r["impl"] for r in rows[2:]} == {"auto", "doubling", "solve"}
    for r in rows:
        assert "error" not in r, r
        # every input is read and o written at least once; the temporaries are non-negative
        assert r["fwd_bytes"] >= 0.99 * r["fwd_floor"] > 0 and r["fwd_temp"] >= 0
        assert r["fb_bytes"] >= 0.99 * r["fb_floor"] > 0 and r["saved"] >= r["saved_inputs"] >= 0
    # q, k, v bf16 [1, 128, 1, 128] and g float32 [1, 128, 1]; o bf16
    assert rows[0]["in_bytes"] == 3 * 128 * 128 * 2 + 128 * 4
    assert rows[0]["fwd_floor"] == rows[0]["in_bytes"] + 128 * 128 * 2
    # on TPU, "auto" is the triangular solve
    by = {r["impl"]: r for r in rows[2:]}
    assert by["auto"]["fwd_bytes"] == by["solve"]["fwd_bytes"]
    text = md.read_text()
    assert "<!-- sweep:gpu-check -->\nkept" in text
    assert "<!-- sweep:tpu-aot-v5e -->" in text and "| simple_gla | pallas |" in text


def test_bad_shape_is_a_value_error():
    from experiments.bench_tpu_aot import parse_shape

    with pytest.raises(ValueError, match="B,T,H,K,V"):
        parse_shape("8,2048,16")

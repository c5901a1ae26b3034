"""experiments.aot_compile: the trainer's own step compiled for a v5p:2x2x2 slice (8 abstract
chips, libtpu's compiler, the Mosaic kernels) on this CPU host, executing nothing."""

import os

os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # before libtpu loads in this process

import pathlib  # noqa: E402

import pytest  # noqa: E402

import research  # noqa: E402

pytest.importorskip("libtpu", reason="the tpu-aot extra (libtpu) is not installed")

from experiments import aot_compile  # noqa: E402

# tiny model: d_model 64, 1 layer, 2 heads (gsa 16 slots, mamba2 d_state 16), T=256
TINY = ("model.n_layers=1", "model.impl=pallas", "model.chunk_size=64")
MESHES = ("fsdp=8", "data=2,sequence=4")
# the default suite compiles three of the cases (~40 s each on 2 idle cores); -m slow: all
DEFAULT = (("gla", "fsdp=8"), ("deltanet", "data=2,sequence=4"),
           ("sliding_window_attention", "data=2,sequence=4"))


def _compile(mixer: str, mesh: str, tmp_path: pathlib.Path, *extra: str) -> dict:
    return aot_compile.main(["--topology", "v5p-8", "--preset", f"tiny-{mixer}",
                             "--seq-len", "256", "--per-chip-batch", "1", "--mesh", mesh,
                             "--out", str(tmp_path / f"{mixer}.json"), *TINY, *extra])


def _check(rec: dict, mixer: str) -> None:
    assert rec["chips"] == 8 and rec["fits"]
    assert rec["flops_per_chip"] > 0 and rec["temporaries_gib"] > 0
    assert rec["impl"] == "pallas"
    if mixer not in ("attention", "sliding_window_attention"):
        assert rec["mosaic_kernel_calls"] > 0  # the compiled Mosaic kernels, not interpret mode


@pytest.mark.parametrize(("mixer", "mesh"), DEFAULT)
def test_tiny_train_step_compiles_for_v5p(mixer, mesh, tmp_path):
    _check(_compile(mixer, mesh, tmp_path), mixer)


@pytest.mark.slow
@pytest.mark.parametrize("mesh", MESHES)
@pytest.mark.parametrize("mixer", research.MIXERS)
def test_every_mixer_train_step_compiles_for_v5p(mixer, mesh, tmp_path):
    _check(_compile(mixer, mesh, tmp_path), mixer)


def test_write_keeps_the_rest_of_the_file(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Kernel benchmarks\n\nother text\n")
    rec = {"preset": "gla-340m", "topology": "v5p-8", "mesh": {"data": 1, "fsdp": 8,
           "sequence": 1, "tensor": 1}, "per_chip_batch": 4, "seq_len": 2048,
           "impl": "pallas", "remat": False, "arguments_gib": 1.0, "temporaries_gib": 2.0,
           "outputs_gib": 1.0, "total_gib": 3.0, "fits": True, "hbm_gib": 95.0,
           "flops_per_chip": 2.6e13, "compile_s": 60.0, "command": "python -m x --a 1"}
    aot_compile.write_section(path, rec)
    aot_compile.write_section(path, {**rec, "temporaries_gib": 5.0})  # same command: replaced
    aot_compile.write_section(path, {**rec, "command": "python -m x --a 2"})
    text = path.read_text()
    assert text.startswith("# Kernel benchmarks\n\nother text\n")
    assert text.count(aot_compile.SECTION_BEGIN) == text.count(aot_compile.SECTION_END) == 1
    rows = [ln for ln in text.splitlines() if ln.startswith("| gla-340m")]
    assert len(rows) == 2 and "| 5.00 |" in rows[0] and "fsdp=8" in rows[0]
    path.write_text(text + "\n# Later section\n")
    aot_compile.write_section(path, {**rec, "command": "python -m x --a 3"})
    assert path.read_text().rstrip().endswith("# Later section")


def test_bad_arguments():
    with pytest.raises(ValueError, match="topology must be one of"):
        aot_compile.resolve_topology("v9-8")
    with pytest.raises(ValueError, match="--mesh items must look like AXIS=INT"):
        aot_compile.parse_mesh("pipeline=2")
    assert aot_compile.parse_mesh("fsdp=2,sequence=4") == {"data": -1, "fsdp": 2, "sequence": 4,
                                                            "tensor": 1}
    assert aot_compile.resolve_topology("v5e-1") == ("v5e:2x2", "v5e", 1)


def test_large_presets_get_the_memory_settings():
    mesh = {"data": 1, "fsdp": 8, "sequence": 1, "tensor": 1}
    big = aot_compile.build_config("deltanet-340m", 2048, 32, [], mesh)
    assert big.train.loss_chunk_size == 512
    assert big.train.remat_policy == "save_dots_and_kernels"
    off = aot_compile.build_config("gla-1.3b", 2048, 32, ["train.loss_chunk_size=0",
                                                           "train.remat_policy=none"], mesh)
    assert (off.train.loss_chunk_size, off.train.remat_policy) == (0, "none")
    tiny = aot_compile.build_config("tiny-gla", 256, 8, [], mesh)
    assert (tiny.train.loss_chunk_size, tiny.train.remat_policy) == (0, "none")
    rec = {"preset": "deltanet-340m", "topology": "v5p-8", "mesh": mesh, "per_chip_batch": 4,
           "seq_len": 2048, "impl": "pallas", "remat": False,
           "remat_policy": "save_dots_and_kernels", "loss_chunk_size": 512,
           "arguments_gib": 1.0, "temporaries_gib": 2.0, "outputs_gib": 1.0, "total_gib": 3.0,
           "fits": True, "hbm_gib": 95.0, "flops_per_chip": 2.6e13, "compile_s": 60.0,
           "command": "python -m x"}
    assert "| False; save_dots_and_kernels; loss chunk 512 |" in aot_compile.table_row(rec)

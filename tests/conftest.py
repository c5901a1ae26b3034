"""Test-wide settings (CPU, no preallocation, quiet logs) and shared helpers: `rel_rms` (import it:
`from conftest import rel_rms`) and the `pallas_flavour` fixture."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The suite's time goes mostly to XLA compiling tiny programs for the CPU: LLVM at -O0 without
# its expensive passes compiles them in ~0.6x the time (same IEEE semantics; programs run once or
# a few steps). Set before JAX starts, so subprocesses inherit it; CHUNKWISE_TEST_FULL_OPT=1 keeps
# XLA's defaults, as does an XLA_FLAGS that already chooses an optimization level.
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
if (os.environ.get("CHUNKWISE_TEST_FULL_OPT", "") in ("", "0")
        and "optimization_level" not in os.environ.get("XLA_FLAGS", "")):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + FAST_COMPILE_FLAGS).strip()
# Pallas interpret mode runs kernel bodies in host callbacks that dispatch jax ops themselves;
# with asynchronous CPU dispatch these can wait on each other. Tests run synchronously.
import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_cpu_enable_async_dispatch", False)

from pallas_kernels.benchmark import rel_rms  # noqa: E402, F401  (one definition for the tests)


@pytest.fixture
def pallas_flavour(request, monkeypatch):
    """Runs the test with the Pallas kernels built for flavour `request.param` ("tpu" or
    "triton"; parametrize with `indirect=True`), traced afresh (caches cleared before and after,
    so nothing traced for the other flavour is reused). The TPU flavour interprets two cores (the
    "parallel" grid axes split between them, as on a megacore chip) with the race detector on,
    and the test fails if the interpreter ran no kernel or any kernel raced. Yields the
    `_backend.Backend`."""
    from jax._src.pallas.mosaic.interpret import interpret_pallas_call as ipc
    from jax.experimental.pallas import tpu as pltpu

    from pallas_kernels.pallas import _backend

    kind = request.param
    detectors = []

    class Recording(ipc.RaceDetectionState):  # the interpreter makes one per kernel run
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            detectors.append(self)

    monkeypatch.setattr(ipc, "RaceDetectionState", Recording)
    jax.clear_caches()
    interpret = None
    if kind == "tpu":
        interpret = pltpu.InterpretParams(detect_races=True, num_cores_or_threads=2)
    with _backend.use_backend(kind, interpret=interpret) as backend:
        yield backend
    jax.clear_caches()
    if kind == "tpu":
        assert detectors, "the TPU interpreter ran no kernel"
        assert not any(d.races_found for d in detectors), "a kernel raced"


@pytest.fixture(scope="module")
def xla_cache(tmp_path_factory):
    """A persistent XLA compilation cache in a temporary folder for a module's trainings (the
    seed enters the programs as an argument, so a model's second seed reuses its first seed's
    init, train and eval programs); the previous settings are restored afterwards. Yields the
    folder: `xla_cache_env(folder)` gives the environment that makes subprocesses use it too."""
    from jax.experimental.compilation_cache import compilation_cache as cc
    names = {"jax_compilation_cache_dir": str(tmp_path_factory.mktemp("xla_cache")),
             "jax_persistent_cache_min_compile_time_secs": 0.0,
             "jax_persistent_cache_min_entry_size_bytes": 0}
    old = {n: getattr(jax.config, n) for n in names}
    for n, v in names.items():
        jax.config.update(n, v)
    cc.reset_cache()
    yield names["jax_compilation_cache_dir"]
    for n, v in old.items():
        jax.config.update(n, v)
    cc.reset_cache()


def xla_cache_env(folder) -> dict[str, str]:
    """Environment variables that make a subprocess's JAX use the persistent compilation cache in
    `folder` (the `xla_cache` fixture's), every program cached however fast it compiled."""
    return {"JAX_COMPILATION_CACHE_DIR": str(folder),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}

# chunkwise: `make demo` runs the main job, `make test` runs the test suite.
# Both set everything up on a fresh machine (a .venv at the repo root, Python 3.12).
SHELL := /bin/bash
PY312 := $(shell command -v python3.12 >/dev/null 2>&1 && python3.12 -c 'import sys' >/dev/null 2>&1 && command -v python3.12 || echo /root/.pyenv/versions/3.12.1/bin/python3.12)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test test-slow demo bench-ops bench ablation lint

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PY312) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,text,tpu-aot]'
	@touch $(STAMP)

test: setup
	$(PY) -m pytest -q -n 2 --dist loadgroup --durations=40

test-slow: setup
	$(PY) -m pytest -q -m slow

# The CPU jobs pin JAX to the CPU (unless JAX_PLATFORMS is set): libtpu, installed for the
# ahead-of-time TPU compilations, otherwise probes for a TPU and prints initialisation errors.
demo bench-ops ablation gpu-check: export JAX_PLATFORMS ?= cpu

# The main job: a small GLA learns MQAR on this CPU (stops at 0.9 eval accuracy), then is probed.
demo: setup
	$(PY) -m experiments.train --preset mqar-tiny --workdir runs/demo
	$(PY) -m experiments.probe --workdir runs/demo --probe task --probe length --probe decay --probe state_norm --factors 1,2,4 --num-examples 64

# Every op, token-by-token reference vs the chunked XLA path, on this CPU.
bench-ops: setup
	$(PY) -m experiments.bench_ops

# The small ablation: GLA, DeltaNet and attention on MQAR at two state sizes (< 10 min on 2 CPU cores).
ablation: setup
	$(PY) -m experiments.sweep experiments/sweeps/demo.py --workdir runs/ablation

bench: setup
	$(PY) -m experiments.bench_kernels

.PHONY: bench-tpu gpu-wheels gpu-check

# HBM traffic of every op on one v5e chip, compiled ahead of time by libtpu on this CPU.
bench-tpu: setup
	$(PY) -m pip install --quiet -e '.[peers]'
	$(PY) -m experiments.bench_tpu_aot --impls pallas xla --peers --write BENCHMARKS.md

# Wheels for the prepared GPU run (experiments/gpu_requirements.txt), into wheels/ (git-ignored).
gpu-wheels: setup
	$(PY) -m pip download --no-deps --quiet -d wheels -r experiments/gpu_requirements.txt

# The prepared GPU run's CPU dry run (the GPU run itself: experiments/gpu_check.sh --out DIR).
gpu-check: setup
	$(PY) -m experiments.gpu_check --dry-run --out runs/gpu_check_dry

lint: setup
	$(PY) -m ruff check .

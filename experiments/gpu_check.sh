#!/usr/bin/env bash
# The prepared GPU run (see experiments/gpu_check.py): experiments/gpu_check.sh --out DIR [...]
# Uses $PYTHON, else python (or python3) on PATH: on a GPU machine, the one with jax[cuda] and torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$(command -v python || command -v python3)}"
exec "$PY" -m experiments.gpu_check "$@"

#!/usr/bin/env bash
# The test command of the README: builds ./.venv (see setup_env.sh), then runs the CPU test suite.
# GPU tests (marked `gpu`) are skipped without CUDA; on a GPU machine run benchmarks/gpu_check.py instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python -m pytest -q "$@"

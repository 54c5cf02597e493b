#!/usr/bin/env bash
# The test command of the README: builds ./.venv (see setup_env.sh), then runs the CPU test suite.
# GPU tests (marked `gpu`) are skipped without CUDA; on a GPU machine run benchmarks/gpu_check.py instead.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "[test.sh] 1/2 the environment (./.venv; first time about 6 minutes, then about 30 s)"
bash scripts/setup_env.sh
echo "[test.sh] 2/2 the test suite on CPU (2 to 4 minutes; pytest prints a dot per test)"
exec .venv/bin/python -m pytest -q "$@"

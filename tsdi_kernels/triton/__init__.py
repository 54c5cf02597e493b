"""Triton kernels for CUDA (they also run on CPU tensors under TRITON_INTERPRET=1).

One file per kernel family; each ends with its launcher (allocation, grid, block sizes, no validation:
tsdi_kernels/ops.py validates before calling):
    sample.py      debias_sample(logits, bias, positions, temperature, top_k, top_p, seed, strength) -> int64 [B]
    accumulate.py  logit_mean_update(mean, m2, count, aligned, reference, mask, normalize) -> int64 [2]
    compile_check.py  compiles every kernel/configuration for sm_90 / sm_80 without a GPU (python -m ...)
"""
from .accumulate import logit_mean_update
from .sample import debias_sample

__all__ = ["debias_sample", "logit_mean_update"]

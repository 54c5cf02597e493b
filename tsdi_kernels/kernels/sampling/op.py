"""torch.ops.tsdi.debias_sample and torch.ops.tsdi.debias_probs: schema, validation, fake kernel, dispatch.

    torch.ops.tsdi.debias_sample(...)  -> one trip through the dispatcher to _debias_sample_impl (CPU / CUDA key)
        validate (metadata here; per-row values in one host check) -> backend for the device:
            cpp       tsdi_kernels._C.debias_sample   (csrc/sample.cpp, called directly: no second dispatch)
            triton    triton_impl.debias_sample       (imported on first CUDA use)
            reference reference.debias_sample
        -> a negative token is a row status code (status.py), raised as a ValueError naming the row.
Meta / fake tensors run the metadata checks only, so torch.compile reports bad calls at trace time."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import status
from ..library import EXTENSION, LIB, backend_for, values_checkable
from ..validation import check_logits, check_row_param, fail
from . import reference

# one fused pass: debias, temperature, top-k, top-p, Gumbel-max draw keyed by (seed, position, token)
LIB.define("debias_sample(Tensor logits, Tensor? bias, Tensor positions, Tensor temperature, Tensor top_k, "
           "Tensor top_p, Tensor seed, float strength=1.0) -> Tensor")
# the exact distribution debias_sample draws from (greedy rows one-hot), float32 [B, V]
LIB.define("debias_probs(Tensor logits, Tensor? bias, Tensor positions, Tensor temperature, Tensor top_k, "
           "Tensor top_p, float strength=1.0) -> Tensor")


def check_meta(op, logits, bias, positions, temperature, top_k, top_p, seed, strength) -> None:
    """Shape / dtype / device checks (no data is read)."""
    check_logits(op, "logits", logits, 2, "[B, V]")
    batch, vocab = logits.shape
    if vocab == 0:
        fail(op, "`logits` has an empty vocabulary dimension (V = 0)")
    device = logits.device
    if bias is not None:
        if bias.dim() != 2 or bias.dtype != torch.float32:
            fail(op, f"`bias` must be a float32 tensor [L, V], got {bias.dtype} {list(bias.shape)}")
        if bias.shape[1] != vocab:
            fail(op, f"`bias` has V = {bias.shape[1]} columns but `logits` has V = {vocab}")
        if bias.device != device:
            fail(op, f"`bias` is on {bias.device} but `logits` is on {device}")
    check_row_param(op, "positions", positions, batch, torch.int64, device)
    check_row_param(op, "temperature", temperature, batch, torch.float32, device)
    check_row_param(op, "top_k", top_k, batch, torch.int64, device)
    check_row_param(op, "top_p", top_p, batch, torch.float32, device)
    if seed is not None:
        check_row_param(op, "seed", seed, batch, torch.int64, device)
    if not math.isfinite(strength):
        fail(op, f"`strength` must be finite, got {strength}")


_VALUE_PROBLEMS = (
    "`positions` must be >= 0",
    "`temperature` must be >= 0 (0 = greedy) and not NaN",
    "`top_k` must be >= 0 (0 = disabled)",
    "`top_p` must be in (0, 1] (1 = disabled)",
)


def _check_values(op, positions, temperature, top_k, top_p) -> None:
    """One host synchronisation for all per-row range checks."""
    bad = torch.stack([
        (positions < 0).any(),
        ~(temperature >= 0).all(),  # also catches NaN
        (top_k < 0).any(),
        ~((top_p > 0) & (top_p <= 1)).all(),
    ]).tolist()
    for flag, msg in zip(bad, _VALUE_PROBLEMS):
        if flag:
            fail(op, msg)


def _raise_row_status(op: str, codes: Tensor) -> None:
    """codes: int64 [B]; negative entries are status codes of bad rows."""
    if codes.numel() == 0 or not values_checkable(codes) or int(codes.min()) >= 0:
        return
    row = int((codes < 0).nonzero()[0, 0])
    fail(op, status.message(int(codes[row]), row))


def _prepare(op, logits, bias, positions, temperature, top_k, top_p, seed, strength):
    check_meta(op, logits, bias, positions, temperature, top_k, top_p, seed, strength)
    if values_checkable(logits):
        _check_values(op, positions, temperature, top_k, top_p)
    if logits.stride(1) != 1:
        logits = logits.contiguous()  # kernels take any row stride but need unit stride along V
    if bias is not None:
        bias = bias.contiguous()
    return logits, bias, [t.contiguous() for t in (positions, temperature, top_k, top_p)]


def _triton_sample(*args):
    from .triton_impl import debias_sample

    return debias_sample(*args)


_SAMPLE = {
    "cpp": lambda *args: EXTENSION.debias_sample(*args),
    "triton": _triton_sample,
    "reference": reference.debias_sample,
}
# debias_probs has no Triton kernel: on CUDA the reference serves it
_PROBS = {
    "cpp": lambda *args: EXTENSION.debias_probs(*args),
    "triton": reference.debias_probs,
    "reference": reference.debias_probs,
}


def _debias_sample_impl(logits, bias, positions, temperature, top_k, top_p, seed, strength=1.0):
    op = "debias_sample"
    logits, bias, (positions, temperature, top_k, top_p) = _prepare(
        op, logits, bias, positions, temperature, top_k, top_p, seed, strength)
    seed = seed.contiguous()
    if logits.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=logits.device)
    kernel = _SAMPLE[backend_for(logits.device.type)]
    tokens = kernel(logits, bias, positions, temperature, top_k, top_p, seed, float(strength))
    _raise_row_status(op, tokens)
    return tokens


def _debias_probs_impl(logits, bias, positions, temperature, top_k, top_p, strength=1.0):
    op = "debias_probs"
    logits, bias, (positions, temperature, top_k, top_p) = _prepare(
        op, logits, bias, positions, temperature, top_k, top_p, None, strength)
    kernel = _PROBS[backend_for(logits.device.type)]
    probs, codes = kernel(logits, bias, positions, temperature, top_k, top_p, float(strength))
    _raise_row_status(op, codes)
    return probs


for _key in ("CPU", "CUDA"):
    LIB.impl("debias_sample", _debias_sample_impl, _key)
    LIB.impl("debias_probs", _debias_probs_impl, _key)


@torch.library.register_fake("tsdi::debias_sample", lib=LIB)
def _debias_sample_fake(logits, bias, positions, temperature, top_k, top_p, seed, strength=1.0):
    check_meta("debias_sample", logits, bias, positions, temperature, top_k, top_p, seed, strength)
    return logits.new_empty((logits.shape[0],), dtype=torch.int64)


@torch.library.register_fake("tsdi::debias_probs", lib=LIB)
def _debias_probs_fake(logits, bias, positions, temperature, top_k, top_p, strength=1.0):
    check_meta("debias_probs", logits, bias, positions, temperature, top_k, top_p, None, strength)
    return logits.new_empty(logits.shape, dtype=torch.float32)

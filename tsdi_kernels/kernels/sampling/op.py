"""torch.ops.tsdi.debias_sample and torch.ops.tsdi.debias_probs: schema, validation, fake kernel, dispatch.

    torch.ops.tsdi.debias_sample(...)  -> one trip through the dispatcher to _debias_sample_impl (CPU / CUDA key)
        validate metadata (no data read) -> backend for the device:
            cpp       tsdi_kernels._C.debias_sample   (csrc/sample.cpp, called directly: no second dispatch)
            triton    triton_impl.debias_sample       (imported on first CUDA use; the reference on a device
                                                       where it cannot compile or launch: fallback.py)
            reference reference.debias_sample
        -> a negative token is a row status code (status.py; per-row parameter ranges are checked in the kernels'
       pass), raised as a ValueError naming the argument and row on CPU; on CUDA left on the device (no host
       synchronisation) for `check_tokens` at the caller's next sync point.
Meta / fake tensors run the metadata checks only, so torch.compile reports bad calls at trace time."""
from __future__ import annotations

import torch
from torch import Tensor

from .. import fallback, status
from ..library import EXTENSION, LIB, backend_for, reference_notice, values_checkable
from ..validation import check_logits, check_no_grad, check_row_param, check_strength, fail
from . import reference

# one fused pass: debias, temperature, top-k, top-p, min-p, Gumbel-max draw keyed by (seed, position, token).
# min_p [B] float32 in [0, 1] (0 disables) comes last, optional: calls written before it keep working.
LIB.define("debias_sample(Tensor logits, Tensor? bias, Tensor positions, Tensor temperature, Tensor top_k, "
           "Tensor top_p, Tensor seed, float strength=1.0, Tensor? min_p=None) -> Tensor")
# the exact distribution debias_sample draws from (greedy rows one-hot), float32 [B, V]
LIB.define("debias_probs(Tensor logits, Tensor? bias, Tensor positions, Tensor temperature, Tensor top_k, "
           "Tensor top_p, float strength=1.0, Tensor? min_p=None) -> Tensor")


def check_meta(op, logits, bias, positions, temperature, top_k, top_p, seed, strength, min_p=None) -> None:
    """Shape / dtype / device checks (no data is read)."""
    check_logits(op, "logits", logits, 2, "[B, V]")
    batch, vocab = logits.shape
    device = logits.device
    if bias is not None:
        if bias.dim() != 2 or bias.dtype != torch.float32:
            fail(op, f"`bias` must be a float32 tensor [L, V], got {bias.dtype} {list(bias.shape)}")
        if bias.shape[1] != vocab:
            fail(op, f"`bias` has V = {bias.shape[1]} columns but `logits` has V = {vocab}")
        if bias.device != device:
            fail(op, f"`bias` is on {bias.device} but `logits` is on {device}")
        check_no_grad(op, "bias", bias)
    check_row_param(op, "positions", positions, batch, torch.int64, device)
    check_row_param(op, "temperature", temperature, batch, torch.float32, device)
    check_row_param(op, "top_k", top_k, batch, torch.int64, device)
    check_row_param(op, "top_p", top_p, batch, torch.float32, device)
    if seed is not None:
        check_row_param(op, "seed", seed, batch, torch.int64, device)
    if min_p is not None:
        check_row_param(op, "min_p", min_p, batch, torch.float32, device)
    check_strength(strength, f"tsdi.{op}: `strength`")


def raise_row_status(op: str, codes: Tensor) -> None:
    """codes: int64 [B]; a negative entry is the status.py code of a bad row -> ValueError naming it.
    Reads the codes on the host: free on CPU, a synchronisation on a GPU (see `check_tokens`)."""
    if codes.numel() == 0 or not values_checkable(codes) or int(codes.min()) >= 0:
        return
    row = int((codes < 0).nonzero()[0, 0])
    fail(op, status.message(int(codes[row]), row))


def check_tokens(tokens: Tensor) -> Tensor:
    """Raise the ValueError of the first bad row of `debias_sample`'s output, else return `tokens`.

    On CUDA `torch.ops.tsdi.debias_sample` never synchronises with the host: a row with invalid parameters, NaN
    or no finite logit comes back as a negative token id (its status.py code), which no embedding accepts. Call
    this where the decode loop synchronises anyway (tsdi_kernels.generate does, once per step, together with
    its stopping check). On CPU the op raises by itself."""
    raise_row_status("debias_sample", tokens)
    return tokens


def _prepare(op, logits, bias, positions, temperature, top_k, top_p, seed, strength, min_p):
    check_meta(op, logits, bias, positions, temperature, top_k, top_p, seed, strength, min_p)
    if logits.stride(1) != 1:
        logits = logits.contiguous()  # kernels take any row stride but need unit stride along V
    if bias is not None:
        bias = bias.contiguous()
    return logits, bias


def _triton_sample(logits, bias, positions, temperature, top_k, top_p, seed, strength, min_p=None):
    from .triton_impl import debias_sample

    rows = [t.contiguous() for t in (positions, temperature, top_k, top_p, seed)]  # the kernels index b directly
    return debias_sample(logits, bias, *rows, strength, None if min_p is None else min_p.contiguous()), None


def _reference_sample(*args):
    return reference.debias_sample(*args), None


# Each backend returns (int64 [B] tokens with status codes of bad rows, index of the first bad row or None when
# the backend does not know it: the op then reads it from the tokens).
_SAMPLE = {
    "cpp": lambda *args: EXTENSION.debias_sample(*args),
    "triton": lambda *args: fallback.run("debias_sample", args[0].device, _triton_sample, _reference_sample, args),
    "reference": _reference_sample,
}
# debias_probs has no Triton kernel: on CUDA the reference serves it
_PROBS = {
    "cpp": lambda *args: EXTENSION.debias_probs(*args),
    "triton": reference.debias_probs,  # the reference handles any strides
    "reference": reference.debias_probs,
}


def _debias_sample_impl(logits, bias, positions, temperature, top_k, top_p, seed, strength=1.0, min_p=None):
    op = "debias_sample"
    logits, bias = _prepare(op, logits, bias, positions, temperature, top_k, top_p, seed, strength, min_p)
    if logits.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=logits.device)
    backend = backend_for(logits.device.type)
    if backend == "reference":
        reference_notice(logits.device.type)
    tokens, bad_row = _SAMPLE[backend](logits, bias, positions, temperature, top_k, top_p, seed, float(strength),
                                       min_p)
    if bad_row is not None:
        if bad_row >= 0:
            fail(op, status.message(int(tokens[bad_row]), bad_row))
    elif logits.device.type == "cpu":  # on a GPU the codes stay on the device: see check_tokens
        raise_row_status(op, tokens)
    return tokens


def _debias_probs_impl(logits, bias, positions, temperature, top_k, top_p, strength=1.0, min_p=None):
    op = "debias_probs"
    logits, bias = _prepare(op, logits, bias, positions, temperature, top_k, top_p, None, strength, min_p)
    kernel = _PROBS[backend_for(logits.device.type)]
    probs, codes = kernel(logits, bias, positions, temperature, top_k, top_p, float(strength), min_p)
    raise_row_status(op, codes)  # debias_probs is not a decode-loop op: it may synchronise
    return probs


for _key in ("CPU", "CUDA"):
    LIB.impl("debias_sample", _debias_sample_impl, _key)
    LIB.impl("debias_probs", _debias_probs_impl, _key)


@torch.library.register_fake("tsdi::debias_sample", lib=LIB)
def _debias_sample_fake(logits, bias, positions, temperature, top_k, top_p, seed, strength=1.0, min_p=None):
    check_meta("debias_sample", logits, bias, positions, temperature, top_k, top_p, seed, strength, min_p)
    return logits.new_empty((logits.shape[0],), dtype=torch.int64)


@torch.library.register_fake("tsdi::debias_probs", lib=LIB)
def _debias_probs_fake(logits, bias, positions, temperature, top_k, top_p, strength=1.0, min_p=None):
    check_meta("debias_probs", logits, bias, positions, temperature, top_k, top_p, None, strength, min_p)
    return logits.new_empty(logits.shape, dtype=torch.float32)

"""torch.ops.tsdi.logit_mean_update: schema, validation, fake kernel, dispatch.

    torch.ops.tsdi.logit_mean_update(...) -> _logit_mean_update_impl (CPU / CUDA key): validate metadata ->
        cpp: tsdi_kernels._C.logit_mean_update (csrc/accumulate.cpp, called directly) | triton (the reference on a
        device where it cannot compile or launch: fallback.py) | reference
    -> each backend returns int64 [2]: (b, t) of the first counted non-finite row or (-1, -1); the statistics are
       left untouched then, and the error names the row."""
from __future__ import annotations

import torch

from .. import fallback
from ..library import EXTENSION, LIB, backend_for, reference_notice, values_checkable
from ..validation import LOGIT_DTYPES, check_logits, check_no_grad, fail
from . import reference

# Chan/Welford merge of mean/M2/count of log_softmax(aligned) - log_softmax(reference), in place
LIB.define("logit_mean_update(Tensor(a!) mean, Tensor(b!) m2, Tensor(c!) count, Tensor aligned, Tensor? reference, "
           "Tensor? mask, bool normalize=True) -> ()")

OP = "logit_mean_update"


def check_meta(mean, m2, count, aligned, reference_, mask) -> None:
    check_logits(OP, "aligned", aligned, 3, "[B, L, V]")
    batch, length, vocab = aligned.shape
    if length == 0:
        fail(OP, "`aligned` has no answer positions (L = 0)")
    device = aligned.device
    if reference_ is not None:
        if reference_.dtype not in LOGIT_DTYPES:
            fail(OP, f"`reference` must be float32, bfloat16 or float16, got {reference_.dtype}")
        if reference_.shape != aligned.shape:
            fail(OP, f"`reference` has shape {list(reference_.shape)} but `aligned` has {list(aligned.shape)}"
                     " (the two models must share the vocabulary)")
        if reference_.device != device:
            fail(OP, f"`reference` is on {reference_.device} but `aligned` is on {device}")
        check_no_grad(OP, "reference", reference_)
    for name, t in (("mean", mean), ("m2", m2)):
        if t.dtype != torch.float32 or t.shape != (length, vocab):
            fail(OP, f"`{name}` must be float32 [L, V] = [{length}, {vocab}], got {t.dtype} {list(t.shape)}")
        if t.device != device:
            fail(OP, f"`{name}` is on {t.device} but `aligned` is on {device}")
        if not t.is_contiguous():
            fail(OP, f"`{name}` must be contiguous (it is updated in place)")
        check_no_grad(OP, name, t)
    if count.dtype != torch.int64 or count.shape != (length,) or count.device != device:
        fail(OP, f"`count` must be int64 [L] = [{length}] on {device}, got {count.dtype} {list(count.shape)} "
                 f"on {count.device}")
    if not count.is_contiguous():
        fail(OP, "`count` must be contiguous (it is updated in place)")
    if mask is not None:
        if mask.dtype != torch.bool or mask.shape != (batch, length) or mask.device != device:
            fail(OP, f"`mask` must be bool [B, L] = [{batch}, {length}] on {device}, got {mask.dtype} "
                     f"{list(mask.shape)} on {mask.device}")


def _triton_update(*args):
    from .triton_impl import logit_mean_update

    progress = {}
    return fallback.run(OP, args[3].device, lambda *a: logit_mean_update(*a, progress=progress),
                        reference.logit_mean_update, args,
                        undoable=lambda: not progress.get("statistics_written", False))


_UPDATE = {
    "cpp": lambda *args: EXTENSION.logit_mean_update(*args),
    "triton": _triton_update,
    "reference": reference.logit_mean_update,
}


def _logit_mean_update_impl(mean, m2, count, aligned, reference_, mask, normalize=True):
    check_meta(mean, m2, count, aligned, reference_, mask)
    if aligned.shape[0] == 0:
        return
    if values_checkable(count) and int(count.min()) < 0:
        # before the update: a negative count would turn the Chan merge into -inf / NaN silently. One host read
        # (estimation runs this once per batch of model forwards, not per decoded token).
        fail(OP, "`count` must be >= 0 (the number of rows already folded into `mean` and `m2`)")
    aligned = aligned.contiguous()
    reference_ = None if reference_ is None else reference_.contiguous()
    mask = None if mask is None else mask.contiguous()
    backend = backend_for(aligned.device.type)
    if backend == "reference":
        reference_notice(aligned.device.type)
    where = _UPDATE[backend](mean, m2, count, aligned, reference_, mask, bool(normalize))
    if values_checkable(aligned):
        b, t = where.tolist()
        if b >= 0:
            fail(OP, f"`aligned` or `reference` has a non-finite value (NaN or inf) at batch row {b}, position {t};"
                     " the running statistics were left unchanged")


for _key in ("CPU", "CUDA"):
    LIB.impl("logit_mean_update", _logit_mean_update_impl, _key)


@torch.library.register_fake("tsdi::logit_mean_update", lib=LIB)
def _logit_mean_update_fake(mean, m2, count, aligned, reference_, mask, normalize=True):
    check_meta(mean, m2, count, aligned, reference_, mask)

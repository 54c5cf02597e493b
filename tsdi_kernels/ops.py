"""torch.ops.tsdi: the single place where op schemas, input validation, fake kernels and backends live.

    user / API layer -> torch.ops.tsdi.<op>  (schema below, validation here)
                          |-- CPU : C++ kernels (tsdi_kernels._C, private ops tsdi::_cpu_*) or the reference
                          |-- CUDA: Triton kernels (tsdi_kernels.triton) or the reference
                          `-- Meta/Fake: shape-only kernels for torch.compile

Validation is split in two: metadata (shapes, dtypes, devices; free, also run by the fake kernels so
torch.compile reports bad calls at trace time) and values (ranges of the per-row parameters, NaN / no finite
logit, which the kernels report as negative status codes in their fused pass). Value checks read device memory,
so on CUDA they are skipped while a CUDA graph is being captured.
"""
from __future__ import annotations

import contextlib
import importlib.util
import math
import os
from typing import Optional

import torch
from torch import Tensor

from . import reference

# --- schemas: written once, here -----------------------------------------------------------------------------
SCHEMAS = {
    # one fused pass: debias, temperature, top-k, top-p, Gumbel-max draw keyed by (seed, position, token)
    "debias_sample": "debias_sample(Tensor logits, Tensor? bias, Tensor positions, Tensor temperature, "
    "Tensor top_k, Tensor top_p, Tensor seed, float strength=1.0) -> Tensor",
    # the exact distribution debias_sample draws from (greedy rows one-hot), float32 [B, V]
    "debias_probs": "debias_probs(Tensor logits, Tensor? bias, Tensor positions, Tensor temperature, "
    "Tensor top_k, Tensor top_p, float strength=1.0) -> Tensor",
    # Chan/Welford merge of mean/M2/count of log_softmax(aligned) - log_softmax(reference), in place
    "logit_mean_update": "logit_mean_update(Tensor(a!) mean, Tensor(b!) m2, Tensor(c!) count, Tensor aligned, "
    "Tensor? reference, Tensor? mask, bool normalize=True) -> ()",
}

_lib = torch.library.Library("tsdi", "FRAGMENT")
for _schema in SCHEMAS.values():
    _lib.define(_schema)

LOGIT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# --- backends -------------------------------------------------------------------------------------------------


def _load_extension() -> Optional[str]:
    """Import the C++ kernels; returns None on success, else why they are unavailable."""
    if os.environ.get("TSDI_DISABLE_EXTENSION", "0") == "1":
        return "disabled by TSDI_DISABLE_EXTENSION=1"
    try:
        from . import _C  # noqa: F401  (registers tsdi::_cpu_* on import)
    except ImportError as exc:  # not built, or built against another torch (undefined symbols)
        return f"{type(exc).__name__}: {exc}"
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


EXTENSION_ERROR = _load_extension()
HAS_EXTENSION = EXTENSION_ERROR is None


def _has_triton() -> bool:
    """Whether triton is installed; found without importing it (the import costs ~0.5 s and only CUDA needs it)."""
    return importlib.util.find_spec("triton") is not None


_backend = {
    "cpu": os.environ.get("TSDI_CPU_BACKEND", "cpp" if HAS_EXTENSION else "reference"),
    "cuda": os.environ.get("TSDI_CUDA_BACKEND", "triton" if _has_triton() else "reference"),
}
_AVAILABLE = {"cpu": ("cpp", "reference"), "cuda": ("triton", "reference")}


def _check_backend(device: str, name: str) -> None:
    if device not in _AVAILABLE:
        raise ValueError(f"device must be one of {sorted(_AVAILABLE)}, got {device!r}")
    if name not in _AVAILABLE[device]:
        raise ValueError(f"backend for {device} must be one of {_AVAILABLE[device]}, got {name!r}")
    if name == "cpp" and not HAS_EXTENSION:
        raise RuntimeError(f"the C++ extension tsdi_kernels._C is not available ({EXTENSION_ERROR})")
    if name == "triton" and not _has_triton():
        raise RuntimeError("triton is not installed")


for _dev, _name in _backend.items():
    _check_backend(_dev, _name)


def backends() -> dict:
    """Which kernel serves each op on each device, e.g. {'debias_sample': {'cpu': 'cpp', 'cuda': 'triton'}, ...}.
    debias_probs has no Triton kernel: on CUDA it runs the reference."""
    out = {}
    for op in SCHEMAS:
        cuda = _backend["cuda"] if op != "debias_probs" else "reference"
        out[op] = {"cpu": _backend["cpu"], "cuda": cuda}
    return out


@contextlib.contextmanager
def use_backend(device: str, name: str):
    """Temporarily route `device` ('cpu' or 'cuda') to backend `name` ('cpp' / 'triton' / 'reference')."""
    _check_backend(device, name)
    old = _backend[device]
    _backend[device] = name
    try:
        yield
    finally:
        _backend[device] = old


def _backend_for(t: Tensor) -> str:
    return _backend["cuda"] if t.device.type == "cuda" else "reference" if t.device.type != "cpu" else _backend["cpu"]


def _values_checkable(t: Tensor) -> bool:
    """Value checks synchronise with the device; a CUDA graph capture forbids that."""
    return not (t.device.type == "cuda" and torch.cuda.is_current_stream_capturing())


# --- validation -----------------------------------------------------------------------------------------------


def _fail(op: str, msg: str) -> None:
    raise ValueError(f"tsdi.{op}: {msg}")


def _check_row_param(op: str, name: str, t: Tensor, batch: int, dtype: torch.dtype, device: torch.device) -> None:
    if not isinstance(t, Tensor):
        _fail(op, f"`{name}` must be a tensor, got {type(t).__name__}")
    if t.dtype != dtype:
        _fail(op, f"`{name}` must have dtype {dtype}, got {t.dtype}")
    if t.shape != (batch,):
        _fail(op, f"`{name}` must have shape [B] = [{batch}], got {list(t.shape)}")
    if t.device != device:
        _fail(op, f"`{name}` is on {t.device} but `logits` is on {device}")


def check_sampling_meta(op, logits, bias, positions, temperature, top_k, top_p, seed, strength) -> None:
    """Shape / dtype / device checks of debias_sample and debias_probs (no data is read)."""
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        _fail(op, f"`logits` must be a 2-D tensor [B, V], got {getattr(logits, 'shape', type(logits).__name__)}")
    if logits.dtype not in LOGIT_DTYPES:
        _fail(op, f"`logits` must be float32, bfloat16 or float16, got {logits.dtype}")
    batch, vocab = logits.shape
    if vocab == 0:
        _fail(op, "`logits` has an empty vocabulary dimension (V = 0)")
    device = logits.device
    if bias is not None:
        if bias.dim() != 2 or bias.dtype != torch.float32:
            _fail(op, f"`bias` must be a float32 tensor [L, V], got {bias.dtype} {list(bias.shape)}")
        if bias.shape[1] != vocab:
            _fail(op, f"`bias` has V = {bias.shape[1]} columns but `logits` has V = {vocab}")
        if bias.device != device:
            _fail(op, f"`bias` is on {bias.device} but `logits` is on {device}")
    _check_row_param(op, "positions", positions, batch, torch.int64, device)
    _check_row_param(op, "temperature", temperature, batch, torch.float32, device)
    _check_row_param(op, "top_k", top_k, batch, torch.int64, device)
    _check_row_param(op, "top_p", top_p, batch, torch.float32, device)
    if seed is not None:
        _check_row_param(op, "seed", seed, batch, torch.int64, device)
    if not math.isfinite(strength):
        _fail(op, f"`strength` must be finite, got {strength}")


def _check_sampling_values(op, positions, temperature, top_k, top_p) -> None:
    """One host synchronisation for all per-row range checks."""
    bad = torch.stack([
        (positions < 0).any(),
        ~(temperature >= 0).all(),  # also catches NaN
        (top_k < 0).any(),
        ~((top_p > 0) & (top_p <= 1)).all(),
    ]).tolist()
    problems = [
        "`positions` must be >= 0",
        "`temperature` must be >= 0 (0 = greedy) and not NaN",
        "`top_k` must be >= 0 (0 = disabled)",
        "`top_p` must be in (0, 1] (1 = disabled)",
    ]
    for flag, msg in zip(bad, problems):
        if flag:
            _fail(op, msg)


def _raise_row_status(op: str, status: Tensor) -> None:
    """status: int64 [B], negative entries are reference.ERR_* codes."""
    if status.numel() == 0 or not _values_checkable(status) or int(status.min()) >= 0:
        return
    row = int((status < 0).nonzero()[0, 0])
    code = int(status[row])
    if code == reference.ERR_NAN:
        _fail(op, f"row {row} of `logits` (minus strength * `bias`) contains NaN")
    _fail(op, f"row {row} of `logits` (minus strength * `bias`) has no finite value or contains +inf")


def _prepare_sampling(op, logits, bias, positions, temperature, top_k, top_p, seed, strength):
    check_sampling_meta(op, logits, bias, positions, temperature, top_k, top_p, seed, strength)
    if _values_checkable(logits):
        _check_sampling_values(op, positions, temperature, top_k, top_p)
    if logits.stride(1) != 1:
        logits = logits.contiguous()  # kernels take any row stride but need unit stride along V
    if bias is not None:
        bias = bias.contiguous()
    return logits, bias


# --- debias_sample --------------------------------------------------------------------------------------------


def _debias_sample_impl(logits, bias, positions, temperature, top_k, top_p, seed, strength=1.0):
    op = "debias_sample"
    logits, bias = _prepare_sampling(op, logits, bias, positions, temperature, top_k, top_p, seed, strength)
    if logits.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=logits.device)
    backend = _backend_for(logits)
    args = (logits, bias, positions, temperature, top_k, top_p, seed, float(strength))
    if backend == "cpp":
        tokens = torch.ops.tsdi._cpu_debias_sample(*args)
    elif backend == "triton":
        from .triton import debias_sample as triton_debias_sample

        tokens = triton_debias_sample(*args)
    else:
        tokens = reference.debias_sample(*args)
    _raise_row_status(op, tokens)
    return tokens


def _debias_probs_impl(logits, bias, positions, temperature, top_k, top_p, strength=1.0):
    op = "debias_probs"
    logits, bias = _prepare_sampling(op, logits, bias, positions, temperature, top_k, top_p, None, strength)
    args = (logits, bias, positions, temperature, top_k, top_p, float(strength))
    if _backend_for(logits) == "cpp":
        probs, status = torch.ops.tsdi._cpu_debias_probs(*args)
    else:
        probs, status = reference.debias_probs(*args)
    _raise_row_status(op, status)
    return probs


# --- logit_mean_update ----------------------------------------------------------------------------------------


def check_accumulator_meta(mean, m2, count, aligned, reference_, mask) -> None:
    op = "logit_mean_update"
    if not isinstance(aligned, Tensor) or aligned.dim() != 3:
        _fail(op, f"`aligned` must be a 3-D tensor [B, L, V], got {getattr(aligned, 'shape', type(aligned).__name__)}")
    if aligned.dtype not in LOGIT_DTYPES:
        _fail(op, f"`aligned` must be float32, bfloat16 or float16, got {aligned.dtype}")
    batch, length, vocab = aligned.shape
    device = aligned.device
    if reference_ is not None:
        if reference_.dtype not in LOGIT_DTYPES:
            _fail(op, f"`reference` must be float32, bfloat16 or float16, got {reference_.dtype}")
        if reference_.shape != aligned.shape:
            _fail(op, f"`reference` has shape {list(reference_.shape)} but `aligned` has {list(aligned.shape)}"
                      " (the two models must share the vocabulary)")
        if reference_.device != device:
            _fail(op, f"`reference` is on {reference_.device} but `aligned` is on {device}")
    for name, t in (("mean", mean), ("m2", m2)):
        if t.dtype != torch.float32 or t.shape != (length, vocab):
            _fail(op, f"`{name}` must be float32 [L, V] = [{length}, {vocab}], got {t.dtype} {list(t.shape)}")
        if t.device != device:
            _fail(op, f"`{name}` is on {t.device} but `aligned` is on {device}")
        if not t.is_contiguous():
            _fail(op, f"`{name}` must be contiguous (it is updated in place)")
    if count.dtype != torch.int64 or count.shape != (length,) or count.device != device:
        _fail(op, f"`count` must be int64 [L] = [{length}] on {device}, got {count.dtype} {list(count.shape)} "
                  f"on {count.device}")
    if not count.is_contiguous():
        _fail(op, "`count` must be contiguous (it is updated in place)")
    if mask is not None:
        if mask.dtype != torch.bool or mask.shape != (batch, length) or mask.device != device:
            _fail(op, f"`mask` must be bool [B, L] = [{batch}, {length}] on {device}, got {mask.dtype} "
                      f"{list(mask.shape)} on {mask.device}")


def _logit_mean_update_impl(mean, m2, count, aligned, reference_, mask, normalize=True):
    op = "logit_mean_update"
    check_accumulator_meta(mean, m2, count, aligned, reference_, mask)
    if aligned.shape[0] == 0:
        return
    aligned = aligned.contiguous()
    reference_ = None if reference_ is None else reference_.contiguous()
    mask = None if mask is None else mask.contiguous()
    backend = _backend_for(aligned)
    args = (mean, m2, count, aligned, reference_, mask, bool(normalize))
    if backend == "cpp":
        where = torch.ops.tsdi._cpu_logit_mean_update(*args)
    elif backend == "triton":
        from .triton import logit_mean_update as triton_logit_mean_update

        where = triton_logit_mean_update(*args)
    else:
        where = reference.logit_mean_update(*args)
    if _values_checkable(aligned):
        b, t = where.tolist()
        if b >= 0:
            _fail(op, f"`aligned` or `reference` has a non-finite value (NaN or inf) at batch row {b}, position {t};"
                      " the running statistics were left unchanged")


# --- registration ---------------------------------------------------------------------------------------------

for _key in ("CPU", "CUDA"):
    _lib.impl("debias_sample", _debias_sample_impl, _key)
    _lib.impl("debias_probs", _debias_probs_impl, _key)
    _lib.impl("logit_mean_update", _logit_mean_update_impl, _key)


@torch.library.register_fake("tsdi::debias_sample")
def _debias_sample_fake(logits, bias, positions, temperature, top_k, top_p, seed, strength=1.0):
    check_sampling_meta("debias_sample", logits, bias, positions, temperature, top_k, top_p, seed, strength)
    return logits.new_empty((logits.shape[0],), dtype=torch.int64)


@torch.library.register_fake("tsdi::debias_probs")
def _debias_probs_fake(logits, bias, positions, temperature, top_k, top_p, strength=1.0):
    check_sampling_meta("debias_probs", logits, bias, positions, temperature, top_k, top_p, None, strength)
    return logits.new_empty(logits.shape, dtype=torch.float32)


@torch.library.register_fake("tsdi::logit_mean_update")
def _logit_mean_update_fake(mean, m2, count, aligned, reference_, mask, normalize=True):
    check_accumulator_meta(mean, m2, count, aligned, reference_, mask)

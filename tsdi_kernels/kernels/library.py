"""The `tsdi` operator library, the compiled extension, and which backend serves each device.

Backends per device type:
    cpu  : "cpp" (tsdi_kernels._C, the C++ kernels in csrc/) or "reference" (pure PyTorch)
    cuda : "triton" (the Triton kernels) or "reference"
The process-wide default comes from TSDI_CPU_BACKEND / TSDI_CUDA_BACKEND, else the fastest available one.
`use_backend` overrides it for the calling thread (a contextvars.ContextVar: each thread and asyncio task sees
its own override), so two threads switching backends never leave each other on the wrong one.
TSDI_DISABLE_EXTENSION=1 skips the C++ extension (the package then runs its CPU ops on the reference)."""
from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import os
import threading
from typing import Optional

import torch

LIB = torch.library.Library("tsdi", "FRAGMENT")

AVAILABLE = {"cpu": ("cpp", "reference"), "cuda": ("triton", "reference")}


def _load_extension():
    """(module, None) on success, else (None, why the C++ kernels are unavailable)."""
    if os.environ.get("TSDI_DISABLE_EXTENSION", "0") == "1":
        return None, "disabled by TSDI_DISABLE_EXTENSION=1"
    try:
        from .. import _C
    except (ImportError, OSError) as exc:  # not built, or built against another torch (undefined symbols)
        return None, f"{type(exc).__name__}: {exc}"
    return _C, None


EXTENSION, EXTENSION_ERROR = _load_extension()
HAS_EXTENSION = EXTENSION is not None


def has_triton() -> bool:
    """Whether triton is installed; found without importing it (the import costs ~0.5 s and only CUDA needs it)."""
    return importlib.util.find_spec("triton") is not None


def check_backend(device: str, name: str) -> None:
    if device not in AVAILABLE:
        raise ValueError(f"device must be one of {sorted(AVAILABLE)}, got {device!r}")
    if name not in AVAILABLE[device]:
        raise ValueError(f"backend for {device} must be one of {AVAILABLE[device]}, got {name!r}")
    if name == "cpp" and not HAS_EXTENSION:
        raise RuntimeError(f"the C++ extension tsdi_kernels._C is not available ({EXTENSION_ERROR})")
    if name == "triton" and not has_triton():
        raise RuntimeError("triton is not installed")


_DEFAULTS = {
    "cpu": os.environ.get("TSDI_CPU_BACKEND", "cpp" if HAS_EXTENSION else "reference"),
    "cuda": os.environ.get("TSDI_CUDA_BACKEND", "triton" if has_triton() else "reference"),
}
for _device, _name in _DEFAULTS.items():
    check_backend(_device, _name)
_DEFAULTS_LOCK = threading.Lock()
_OVERRIDE: contextvars.ContextVar[Optional[dict]] = contextvars.ContextVar("tsdi_backend_override", default=None)


def backend_for(device_type: str) -> str:
    """The backend serving tensors of `device_type` in the calling thread ("reference" for any other device)."""
    override = _OVERRIDE.get()
    if override is not None and device_type in override:
        return override[device_type]
    return _DEFAULTS.get(device_type, "reference")


def set_backend(device: str, name: str) -> None:
    """Change the process-wide default backend of `device` (threads inside `use_backend` keep their override)."""
    check_backend(device, name)
    with _DEFAULTS_LOCK:
        _DEFAULTS[device] = name


@contextlib.contextmanager
def use_backend(device: str, name: str):
    """Route `device` ('cpu' or 'cuda') to backend `name` ('cpp' / 'triton' / 'reference') in this thread only."""
    check_backend(device, name)
    token = _OVERRIDE.set({**(_OVERRIDE.get() or {}), device: name})
    try:
        yield
    finally:
        _OVERRIDE.reset(token)


def backends() -> dict:
    """Which kernel serves each op on each device in this thread, e.g.
    {'debias_sample': {'cpu': 'cpp', 'cuda': 'triton'}, ...}. debias_probs has no Triton kernel: on CUDA it runs
    the reference."""
    cpu, cuda = backend_for("cpu"), backend_for("cuda")
    return {
        "debias_sample": {"cpu": cpu, "cuda": cuda},
        "debias_probs": {"cpu": cpu, "cuda": "reference"},
        "logit_mean_update": {"cpu": cpu, "cuda": cuda},
    }


def values_checkable(t: torch.Tensor) -> bool:
    """Value checks synchronise with the device; a CUDA graph capture forbids that."""
    return not (t.device.type == "cuda" and torch.cuda.is_current_stream_capturing())

"""The `tsdi` operator library, the compiled extension, and which backend serves each device.

Backends per device type:
    cpu  : "cpp" (tsdi_kernels._C, the C++ kernels in csrc/) or "reference" (pure PyTorch)
    cuda : "triton" (the Triton kernels) or "reference"
The process-wide default comes from TSDI_CPU_BACKEND / TSDI_CUDA_BACKEND, else the fastest available one.
`use_backend` overrides it for the calling thread (a contextvars.ContextVar: each thread and asyncio task sees
its own override), so two threads switching backends never leave each other on the wrong one.
TSDI_DISABLE_EXTENSION=1 skips the C++ extension (the package then runs its CPU ops on the reference).

Triton older than TRITON_FLOOR is refused by name: `import tsdi_kernels` works (CPU users are unaffected), CUDA
ops run on the reference with one warning at the first CUDA call, and asking for the Triton backend explicitly
(TSDI_CUDA_BACKEND=triton, set_backend, use_backend) raises the RuntimeError that names the version."""
from __future__ import annotations

import contextlib
import contextvars
import importlib.metadata
import importlib.util
import os
import re
import threading
import warnings
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


# The first Triton whose tl.rand(seed, offset) uses all 64 bits of an int64 offset (the low and high words as two
# Philox counters, triton/language/random.py); 3.2 and 3.3 drop the high word, so the noise of token v at position
# t (offset v + t * 2**32) would differ from philox.py's, and every sampled token from the CPU's, silently.
# pyproject.toml's `triton` extra carries the same floor.
TRITON_FLOOR = (3, 4)


def triton_version() -> Optional[str]:
    """The installed Triton's version, read without importing it (the import costs ~0.5 s and only CUDA needs it):
    from triton/__init__.py's __version__ line (any distribution: triton, pytorch-triton), else the metadata."""
    spec = importlib.util.find_spec("triton")
    if spec is None:
        return None
    try:
        with open(spec.origin, encoding="utf-8") as f:
            found = re.search(r"""^__version__\s*=\s*['"]([^'"]+)['"]""", f.read(), re.M)
        if found:
            return found.group(1)
    except (OSError, TypeError):  # no readable __init__.py (e.g. a zipped install): ask the metadata
        pass
    try:
        return importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def triton_problem() -> Optional[str]:
    """Why the Triton backend cannot serve CUDA tensors (not installed, too old), or None when it can."""
    version = triton_version()
    if version is None:
        return "triton is not installed"
    numbers = re.match(r"(\d+)\.(\d+)", version)
    if numbers is None or tuple(int(n) for n in numbers.groups()) < TRITON_FLOOR:
        floor = ".".join(map(str, TRITON_FLOOR))
        return (f"triton {version} is older than {floor}, the first version whose tl.rand uses all 64 bits of "
                f"the noise offset (the CPU and GPU would draw different tokens): pip install 'triton>={floor}'")
    return None


def has_triton() -> bool:
    """Whether a Triton this package can use (installed, at least TRITON_FLOOR) is there."""
    return triton_problem() is None


def check_backend(device: str, name: str) -> None:
    if device not in AVAILABLE:
        raise ValueError(f"device must be one of {sorted(AVAILABLE)}, got {device!r}")
    if name not in AVAILABLE[device]:
        raise ValueError(f"backend for {device} must be one of {AVAILABLE[device]}, got {name!r}")
    if name == "cpp" and not HAS_EXTENSION:
        raise RuntimeError(f"the C++ extension tsdi_kernels._C is not available ({EXTENSION_ERROR})")
    if name == "triton" and not has_triton():
        raise RuntimeError(triton_problem())


_DEFAULTS = {
    "cpu": os.environ.get("TSDI_CPU_BACKEND", "cpp" if HAS_EXTENSION else "reference"),
    "cuda": os.environ.get("TSDI_CUDA_BACKEND", "triton" if has_triton() else "reference"),
}
for _device, _name in _DEFAULTS.items():
    check_backend(_device, _name)
_DEFAULTS_LOCK = threading.Lock()
_OVERRIDE: contextvars.ContextVar[Optional[dict]] = contextvars.ContextVar("tsdi_backend_override", default=None)
# Set when an installed Triton was refused (too old) and CUDA defaulted to the reference: warned once, at the
# first CUDA call that runs on that default (see reference_notice).
_REFUSED_TRITON: list = [None if "TSDI_CUDA_BACKEND" in os.environ or triton_version() is None
                         else triton_problem()]


def reference_notice(device_type: str) -> None:
    """Warn once when a CUDA op runs on the reference only because the installed Triton was refused. Called by
    the ops when `backend_for` answered "reference" for CUDA: a list read, no work otherwise."""
    if device_type != "cuda" or _REFUSED_TRITON[0] is None:
        return
    override = _OVERRIDE.get()
    if override is not None and "cuda" in override:
        return  # the caller chose the backend
    with _DEFAULTS_LOCK:
        message, _REFUSED_TRITON[0] = _REFUSED_TRITON[0], None
    if message is not None:
        warnings.warn(f"tsdi_kernels: CUDA ops run on the PyTorch reference (slower): {message}", RuntimeWarning,
                      stacklevel=3)


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
        if device == "cuda":
            _REFUSED_TRITON[0] = None  # the caller chose the backend


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

"""When a Triton kernel cannot compile or launch on a device, the op falls back to the reference there.

A user's GPU may be one the kernels were never compiled for (an older architecture, a Triton that lowers them
differently, a ptxas that rejects them): failing the user's generation for that would be worse than running the
readable PyTorch reference, which computes the same results (slower). The first failure of an op on a device warns
ONCE, naming the op, the device and the cause; from then on the op runs the reference on that device without
trying again (compiling costs seconds and would fail the same way).

Not swallowed: ValueErrors (bad arguments, bad rows: they name the argument and are the caller's to see), out of
memory (the reference needs more memory, not less), and failures after a kernel already updated an output in
place (re-running the op on the reference would apply the update twice)."""
from __future__ import annotations

import threading
import warnings

import torch

_FAILED: dict = {}  # (op, torch.device) -> the cause, "ExceptionType: first line"
_LOCK = threading.Lock()
# errors that belong to the caller or to the machine, never a reason to switch to the reference
PASSED_THROUGH = (ValueError, torch.OutOfMemoryError)


def failed_cause(op: str, device: torch.device):
    """The cause recorded for `op` on `device`, or None while its Triton kernel is in use."""
    return _FAILED.get((op, device))


def run(op: str, device: torch.device, triton_fn, reference_fn, args, *, undoable=lambda: True):
    """triton_fn(*args), or reference_fn(*args) once `op`'s Triton kernel failed on `device`. `undoable()` is asked
    after a failure: False when the failed call already wrote an in-place output (then the error is raised)."""
    if (op, device) not in _FAILED:
        try:
            return triton_fn(*args)
        except PASSED_THROUGH:
            raise
        except Exception as exc:  # compile (CompilationError, ptxas), resources, driver / launch errors
            if not undoable():
                raise
            _record(op, device, exc)
    return reference_fn(*args)


def _record(op: str, device: torch.device, exc: Exception) -> None:
    lines = str(exc).strip().splitlines()
    cause = f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"
    with _LOCK:
        first = (op, device) not in _FAILED
        _FAILED.setdefault((op, device), cause)
    if first:
        warnings.warn(f"tsdi_kernels: the Triton kernel of {op} cannot run on {device} ({cause}); {device} runs "
                      "the PyTorch reference from now on (same results, slower)", RuntimeWarning, stacklevel=4)


def reset() -> None:
    """Forget recorded failures (tests; or after installing another Triton in a long-lived process)."""
    with _LOCK:
        _FAILED.clear()

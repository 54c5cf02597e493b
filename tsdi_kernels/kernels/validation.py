"""Argument checks shared by the op families: one error format, `tsdi.<op>: <argument> ...` as a ValueError."""
from __future__ import annotations

import math

import torch
from torch import Tensor

LOGIT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# |strength| above this is refused everywhere (op, HF, vLLM): bias entries reach tens of nats on tokens neither
# model emits, so strengths in the hundreds push logits by thousands of nats, swamping every other token's score.
MAX_STRENGTH = 100.0


def check_strength(value, what: str = "`strength`") -> float:
    """`value` as a float if it is a number (not a bool), finite, with |value| <= MAX_STRENGTH; else ValueError
    starting with `what`. The one strength check: the ops, the HF integration and the vLLM processor call it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    if abs(value) > MAX_STRENGTH:
        raise ValueError(f"{what} must lie in [-{MAX_STRENGTH:g}, {MAX_STRENGTH:g}], got {value!r}")
    return float(value)


def fail(op: str, msg: str) -> None:
    raise ValueError(f"tsdi.{op}: {msg}")


def check_row_param(op: str, name: str, t: Tensor, batch: int, dtype: torch.dtype, device: torch.device) -> None:
    """A per-row parameter: a [B] tensor of `dtype` on the logits' device."""
    if not isinstance(t, Tensor):
        fail(op, f"`{name}` must be a tensor, got {type(t).__name__}")
    if t.dtype != dtype:
        fail(op, f"`{name}` must have dtype {dtype}, got {t.dtype}")
    if t.shape != (batch,):
        fail(op, f"`{name}` must have shape [B] = [{batch}], got {list(t.shape)}")
    if t.device != device:
        fail(op, f"`{name}` is on {t.device} but `logits` is on {device}")


def check_logits(op: str, name: str, t, dims: int, shape_text: str) -> None:
    if not isinstance(t, Tensor) or t.dim() != dims:
        fail(op, f"`{name}` must be a {dims}-D tensor {shape_text}, got {getattr(t, 'shape', type(t).__name__)}")
    if t.dtype not in LOGIT_DTYPES:
        fail(op, f"`{name}` must be float32, bfloat16 or float16, got {t.dtype}")
    if t.shape[-1] == 0:
        fail(op, f"`{name}` has an empty vocabulary dimension (V = 0)")
    check_no_grad(op, name, t)


def check_no_grad(op: str, name: str, t) -> None:
    """The tsdi ops are not differentiable (a sampled token has no gradient; the statistics are running sums), on
    every backend alike: an input that requires grad is refused rather than given a backend-dependent answer."""
    if t is not None and t.requires_grad:
        fail(op, f"`{name}` requires grad, but the tsdi ops are not differentiable: pass `{name}.detach()` or "
                 "call under torch.no_grad()")

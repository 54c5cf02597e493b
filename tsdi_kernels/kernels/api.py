"""Python API over torch.ops.tsdi: scalars or per-row tensors in, validated ops underneath."""
from __future__ import annotations

import functools
from typing import Optional, Union

import torch
from torch import Tensor

from .sampling import op as _sampling_op  # noqa: F401  (defines torch.ops.tsdi.debias_*)

RowParam = Union[int, float, Tensor]


def _per_row(name: str, value: RowParam, batch: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Broadcast a scalar / 0-d / [B] value to a [B] tensor of `dtype` on `device`."""
    if isinstance(value, Tensor):
        if value.dim() == 0:
            value = value.reshape(1).expand(batch)
        if value.dim() != 1 or value.shape[0] != batch:
            raise ValueError(f"`{name}` must be a scalar or a tensor of shape [B] = [{batch}], got {list(value.shape)}")
        if value.is_floating_point() and dtype == torch.int64:
            raise ValueError(f"`{name}` must be an integer tensor, got {value.dtype}")
        return value.to(device=device, dtype=dtype)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"`{name}` must be a number or a tensor, got {type(value).__name__}")
    if dtype == torch.int64:
        if not float(value).is_integer():
            raise ValueError(f"`{name}` must be an integer, got {value}")
        if not -(2**63) <= value < 2**63:
            raise ValueError(f"`{name}` must fit in int64 [-2**63, 2**63), got {value}")
    return _constant(value, batch, dtype, device)


def _constant(value, batch: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A [B] tensor filled with a scalar parameter: cached, except while a CUDA graph is being captured. A tensor
    created during capture is only recorded (its fill runs at replay, not now), lives in the graph's private
    pool, and would hold garbage for every later eager call that found it in the cache: during capture the
    parameter is created for this call alone (captured once, filled at every replay)."""
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return torch.full((batch,), value, dtype=dtype, device=device)
    return _cached_constant(value, batch, dtype, device)


@functools.lru_cache(maxsize=4096)
def _cached_constant(value, batch: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A decode loop passes the same temperature, top-k, top-p and seed every step, and positions 0, 1, 2, ...
    again for every prompt; creating them costs ~2.5 us each on CPU (and a host-to-device copy on a GPU), more
    than the fused kernel at small B. The ops never write to their parameters, so a cached tensor is safe to
    share. 4096 entries of at most B * 8 bytes each."""
    return torch.full((batch,), value, dtype=dtype, device=device)


def _sampling_args(logits, positions, temperature, top_k, top_p):
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        raise ValueError(f"`logits` must be a 2-D tensor [B, V], got {getattr(logits, 'shape', type(logits).__name__)}")
    batch, device = logits.shape[0], logits.device
    return (
        _per_row("positions", positions, batch, torch.int64, device),
        _per_row("temperature", temperature, batch, torch.float32, device),
        _per_row("top_k", top_k, batch, torch.int64, device),
        _per_row("top_p", top_p, batch, torch.float32, device),
    )


def _min_p_arg(min_p: RowParam, logits) -> Optional[Tensor]:
    """None for the scalar 0 (min-p off: the op's default, no tensor built), else a [B] float32 tensor. Called
    after _sampling_args, which has checked `logits`."""
    if isinstance(min_p, (int, float)) and not isinstance(min_p, bool) and min_p == 0:
        return None
    return _per_row("min_p", min_p, logits.shape[0], torch.float32, logits.device)


def debias_sample(
    logits: Tensor,
    bias: Optional[Tensor] = None,
    *,
    positions: RowParam = 0,
    temperature: RowParam = 1.0,
    top_k: RowParam = 0,
    top_p: RowParam = 1.0,
    seed: RowParam = 0,
    strength: float = 1.0,
    min_p: RowParam = 0.0,
) -> Tensor:
    """Draw one token per row from the debiased, temperature-scaled, top-k / top-p filtered distribution.

    Parameters
    ----------
    logits : [B, V] float32 / bfloat16 / float16
    bias : [L, V] float32 or None. Row ``positions[b]`` is subtracted (times ``strength``) when it is < L.
    positions, temperature, top_k, top_p, seed : scalar or [B]. ``temperature=0`` is greedy, ``top_k=0`` and
        ``top_p=1`` disable the filters. The noise of row b is a pure function of (seed[b], positions[b]).
    min_p : scalar or [B] in [0, 1], after top-p as in HF's MinPLogitsWarper: drops a token whose probability is
        below ``min_p`` times the top token's. 0 (the default) disables it.

    Returns
    -------
    int64 [B] token ids.

    Examples
    --------
    >>> logits = torch.randn(4, 32000)
    >>> bias = torch.zeros(8, 32000)
    >>> tokens = debias_sample(logits, bias, positions=0, temperature=0.7, top_k=50, top_p=0.9, seed=1234)
    """
    positions, temperature, top_k, top_p = _sampling_args(logits, positions, temperature, top_k, top_p)
    seed = _per_row("seed", seed, logits.shape[0], torch.int64, logits.device)
    return torch.ops.tsdi.debias_sample(logits, bias, positions, temperature, top_k, top_p, seed, float(strength),
                                        _min_p_arg(min_p, logits))


def debias_probs(
    logits: Tensor,
    bias: Optional[Tensor] = None,
    *,
    positions: RowParam = 0,
    temperature: RowParam = 1.0,
    top_k: RowParam = 0,
    top_p: RowParam = 1.0,
    strength: float = 1.0,
    min_p: RowParam = 0.0,
) -> Tensor:
    """float32 [B, V]: the exact distribution :func:`debias_sample` draws from (greedy rows are one-hot)."""
    positions, temperature, top_k, top_p = _sampling_args(logits, positions, temperature, top_k, top_p)
    return torch.ops.tsdi.debias_probs(logits, bias, positions, temperature, top_k, top_p, float(strength),
                                       _min_p_arg(min_p, logits))

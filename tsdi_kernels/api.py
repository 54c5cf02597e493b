"""Python API over torch.ops.tsdi: scalars or per-row tensors in, validated ops underneath."""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor

from . import ops  # noqa: F401  (registers torch.ops.tsdi.*)

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
    if dtype == torch.int64 and not float(value).is_integer():
        raise ValueError(f"`{name}` must be an integer, got {value}")
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
) -> Tensor:
    """Draw one token per row from the debiased, temperature-scaled, top-k / top-p filtered distribution.

    Parameters
    ----------
    logits : [B, V] float32 / bfloat16 / float16
    bias : [L, V] float32 or None. Row ``positions[b]`` is subtracted (times ``strength``) when it is < L.
    positions, temperature, top_k, top_p, seed : scalar or [B]. ``temperature=0`` is greedy, ``top_k=0`` and
        ``top_p=1`` disable the filters. The noise of row b is a pure function of (seed[b], positions[b]).

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
    return torch.ops.tsdi.debias_sample(logits, bias, positions, temperature, top_k, top_p, seed, float(strength))


def debias_probs(
    logits: Tensor,
    bias: Optional[Tensor] = None,
    *,
    positions: RowParam = 0,
    temperature: RowParam = 1.0,
    top_k: RowParam = 0,
    top_p: RowParam = 1.0,
    strength: float = 1.0,
) -> Tensor:
    """float32 [B, V]: the exact distribution :func:`debias_sample` draws from (greedy rows are one-hot)."""
    positions, temperature, top_k, top_p = _sampling_args(logits, positions, temperature, top_k, top_p)
    return torch.ops.tsdi.debias_probs(logits, bias, positions, temperature, top_k, top_p, float(strength))


def sample_variance(m2: Tensor, count: Tensor) -> Tensor:
    """Unbiased variance [L, V] from Welford's M2 [L, V] and count [L]: M2 / (n - 1), NaN where n < 2."""
    n = count.to(torch.float32)[:, None]
    return torch.where(n > 1, m2 / (n - 1).clamp(min=1), torch.full_like(m2, math.nan))


def standard_error(m2: Tensor, count: Tensor) -> Tensor:
    """Standard error of the mean [L, V]: sqrt(variance / n)."""
    n = count.to(torch.float32)[:, None]
    return torch.sqrt(sample_variance(m2, count) / n.clamp(min=1))


class LogitMeanAccumulator:
    """Running mean / M2 / count over [L, V] of log_softmax(aligned) - log_softmax(reference).

    >>> acc = LogitMeanAccumulator(L=16, V=32000)
    >>> acc.update(aligned_logits, reference_logits)   # [B, 16, 32000] each, any batch size
    >>> acc.mean, acc.stderr(), acc.count
    """

    def __init__(self, L: int, V: int, *, normalize: bool = True, device: Union[str, torch.device] = "cpu"):
        if not isinstance(L, int) or L <= 0:
            raise ValueError(f"`L` must be a positive integer, got {L!r}")
        if not isinstance(V, int) or V <= 0:
            raise ValueError(f"`V` must be a positive integer, got {V!r}")
        self.normalize = bool(normalize)
        self.mean = torch.zeros(L, V, dtype=torch.float32, device=device)
        self.m2 = torch.zeros(L, V, dtype=torch.float32, device=device)
        self.count = torch.zeros(L, dtype=torch.int64, device=device)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.mean.shape)

    def update(self, aligned: Tensor, reference: Optional[Tensor] = None, mask: Optional[Tensor] = None) -> None:
        """Fold a batch [B, L, V] of logits (optionally masked [B, L]) into the running statistics."""
        torch.ops.tsdi.logit_mean_update(self.mean, self.m2, self.count, aligned, reference, mask, self.normalize)

    def variance(self) -> Tensor:
        """Unbiased sample variance [L, V] (NaN where fewer than two rows were seen)."""
        return sample_variance(self.m2, self.count)

    def stderr(self) -> Tensor:
        """Standard error of the mean [L, V]: sqrt(variance / count)."""
        return standard_error(self.m2, self.count)

    def merge(self, mean: Tensor, m2: Tensor, count: Tensor) -> None:
        """Chan's parallel merge of another accumulator's statistics (e.g. from another rank) into this one."""
        n_a = self.count.to(torch.float64)[:, None]
        n_b = count.to(torch.float64).to(self.mean.device)[:, None]
        n = (n_a + n_b).clamp(min=1)
        delta = mean.double().to(self.mean.device) - self.mean.double()
        new_mean = self.mean.double() + delta * n_b / n
        new_m2 = self.m2.double() + m2.double().to(self.mean.device) + delta * delta * n_a * n_b / n
        self.mean.copy_(new_mean)
        self.m2.copy_(new_m2)
        self.count += count.to(self.count.device)

    def state_dict(self) -> dict:
        return {"mean": self.mean, "m2": self.m2, "count": self.count, "normalize": self.normalize}

    def load_state_dict(self, state: dict) -> None:
        for name in ("mean", "m2", "count"):
            src = state[name]
            if src.shape != getattr(self, name).shape:
                raise ValueError(f"state `{name}` has shape {list(src.shape)}, expected {list(getattr(self, name).shape)}")
            getattr(self, name).copy_(src)
        self.normalize = bool(state.get("normalize", self.normalize))

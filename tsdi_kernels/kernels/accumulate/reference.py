"""Readable pure-PyTorch definition of logit_mean_update (the oracle and the fallback; op.py validates)."""
from __future__ import annotations

import torch


def logit_mean_update(mean, m2, count, aligned, reference, mask, normalize: bool = True) -> torch.Tensor:
    """Chan/Welford merge of the batch statistics of d = aligned - reference over B into (mean, m2, count).

    d[b, t, :] = log_softmax(aligned[b, t]) - log_softmax(reference[b, t])   (normalize=True)
               = aligned[b, t] - reference[b, t]                              (normalize=False)
    For each position t with n_b counted rows (mask[b, t]):
        mean_b = sum_b d / n_b, M2_b = sum_b (d - mean_b)^2
        n = n_a + n_b, delta = mean_b - mean_a
        mean <- mean_a + delta * n_b / n,  M2 <- M2_a + M2_b + delta^2 * n_a * n_b / n,  count <- n
    Returns int64 [2]: (b, t) of the first counted non-finite input row, or (-1, -1)."""
    d = aligned.float()
    if normalize:
        d = torch.log_softmax(d, dim=-1)
    if reference is not None:
        r = reference.float()
        d = d - (torch.log_softmax(r, dim=-1) if normalize else r)
    counted = torch.ones(d.shape[:2], dtype=torch.bool, device=d.device) if mask is None else mask
    bad = (~torch.isfinite(d).all(dim=-1)) & counted
    if bad.any():
        b, t = bad.nonzero()[0].tolist()
        return torch.tensor([b, t], dtype=torch.int64)
    w = counted.to(torch.float32)[..., None]
    d = torch.where(counted[..., None], d, torch.zeros_like(d))
    n_b = w.sum(dim=0)  # [L, 1]
    mean_b = d.sum(dim=0) / n_b.clamp(min=1)
    m2_b = (w * (d - mean_b) ** 2).sum(dim=0)
    n_a = count.to(torch.float32)[:, None]
    n = n_a + n_b
    delta = mean_b - mean
    new_mean = mean + delta * (n_b / n.clamp(min=1))
    new_m2 = m2 + (m2_b + delta * delta * (n_a * n_b / n.clamp(min=1)))
    new_count = count + n_b[:, 0].to(torch.int64)
    # Commit the three in one call into C++: Python cannot deliver a KeyboardInterrupt between them, so a batch
    # is applied fully or not at all (an interrupt between `mean` and `m2` would leave a half-applied batch).
    torch._foreach_copy_([mean, m2, count], [new_mean, new_m2, new_count])
    return torch.tensor([-1, -1], dtype=torch.int64)

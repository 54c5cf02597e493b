"""Readable pure-PyTorch definition of debias_sample / debias_probs.

The oracle of the test suite and the CPU/CUDA fallback when no compiled kernel serves a device.
It does no argument validation (op.py does), but it reports the data-dependent errors the kernels report:

    debias_sample   -> int64 [B]; a negative entry is an error code for that row (ERR_NAN, ERR_NO_FINITE)
    debias_probs    -> (float32 [B, V], int64 [B] status codes, 0 = ok)

Sampling semantics (Hugging Face, exactly):
    z = (logits.float() - strength * bias[positions[b]]) / T          (bias only where positions[b] < L)
    T == 0      -> argmax of the debiased logits, ties to the lowest index (top-k / top-p do not apply)
    top_k = k>0 -> TopKLogitsWarper: keep z >= (k-th largest z); ties with the k-th value are kept
    top_p = p<1 -> TopPLogitsWarper on what top-k kept: keep a token iff the probability mass ranked strictly
                   above it is < p * TOP_P_SCALE (the top token always kept; semantics.py: a mass equal to p
                   drops the token on every backend, as HF's rule does in exact arithmetic). Rank = z
                   descending; equal z are ranked by index descending (HF's ascending stable torch.sort).
    min_p = q>0 -> MinPLogitsWarper on what top-p kept: keep z - z_max >= fl32(log(q) * MIN_P_LOG_SCALE)
                   (semantics.py; z_max, the top token, is kept by top-k and top-p). min_p = None: 0 everywhere.
    draw        -> Gumbel-max over the kept set: argmax_v z_v + g_v, g_v = -log(-log(u_v)),
                   u_v = philox_uniform(seed[b], positions[b], v). Exact in distribution; ties to lowest index.
"""
from __future__ import annotations

import torch

from ..semantics import MIN_P_LOG_SCALE, TOP_P_SCALE
from ..status import ERR_MIN_P, ERR_NAN, ERR_NO_FINITE, ERR_POSITION, ERR_TEMPERATURE, ERR_TOP_K, ERR_TOP_P
from .philox import gumbel_noise


def debiased_logits(logits, bias, positions, strength: float) -> torch.Tensor:
    """float32 [B, V]: logits - strength * bias[positions[b]], the bias applied only where positions[b] < L."""
    z = logits.float()
    if bias is None or bias.shape[0] == 0:
        return z
    in_range = positions < bias.shape[0]
    rows = bias[positions.clamp(min=0, max=bias.shape[0] - 1)]  # rows of bad positions are never used
    return torch.where(in_range[:, None], z - strength * rows, z)


def _row_status(z: torch.Tensor, positions, temperature, top_k, top_p, min_p) -> torch.Tensor:
    """int64 [B]: 0 or the status code of each row (status.py; parameters first, then NaN, then no finite)."""
    status = torch.zeros(z.shape[0], dtype=torch.int64, device=z.device)
    no_finite = ~torch.isfinite(z).any(dim=1) | (z == float("inf")).any(dim=1)
    status[no_finite] = ERR_NO_FINITE
    status[torch.isnan(z).any(dim=1)] = ERR_NAN
    if min_p is not None:
        status[~((min_p >= 0) & (min_p <= 1))] = ERR_MIN_P
    status[~((top_p > 0) & (top_p <= 1))] = ERR_TOP_P
    status[top_k < 0] = ERR_TOP_K
    status[~(temperature >= 0)] = ERR_TEMPERATURE
    status[(positions < 0) | (positions >= 2**32)] = ERR_POSITION  # the Philox counter holds 32 bits of it
    return status


def _top_k_mask(z: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """bool [B, V] of what TopKLogitsWarper keeps (k = 0 keeps everything)."""
    vocab = z.shape[1]
    k = top_k.clamp(min=1, max=vocab)
    sorted_desc = torch.sort(z, dim=1, descending=True).values
    kth = sorted_desc.gather(1, (k - 1)[:, None])
    return (z >= kth) | (top_k == 0)[:, None]


def _top_p_mask(z: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """bool [B, V] of what TopPLogitsWarper keeps: mass ranked strictly above < p * TOP_P_SCALE (p = 1 keeps
    everything)."""
    # Ascending stable sort, then flip: descending by value, equal values by index descending (HF's order).
    asc_vals, asc_idx = torch.sort(z, dim=1, stable=True)
    vals, idx = asc_vals.flip(1), asc_idx.flip(1)
    probs = torch.softmax(vals, dim=1)
    mass_above = torch.cumsum(probs, dim=1) - probs
    keep_sorted = mass_above < (top_p * TOP_P_SCALE)[:, None]  # float32 * float32 constant: one rounding
    keep_sorted[:, 0] = True
    keep = torch.zeros_like(keep_sorted).scatter(1, idx, keep_sorted)
    return keep | (top_p >= 1.0)[:, None]


def min_p_threshold(min_p: torch.Tensor) -> torch.Tensor:
    """float32 [B]: the largest z - z_max that min-p drops is below this (semantics.py); -inf where min_p = 0."""
    return (min_p.double().log() * MIN_P_LOG_SCALE).float()


def _min_p_mask(z: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """bool [B, V] of what MinPLogitsWarper keeps: z - z_max >= the row's threshold (z_max: the row's largest z)."""
    z_max = z.max(dim=1, keepdim=True).values
    return (z - z_max) >= min_p_threshold(min_p)[:, None]


def _filtered(logits, bias, positions, temperature, top_k, top_p, strength, min_p=None):
    """(scaled, keep, greedy, status, safe): temperature-scaled debiased logits, the kept set, greedy rows, status
    codes, and the debiased logits with bad rows zeroed (greedy rows take their argmax)."""
    z = debiased_logits(logits, bias, positions, strength)
    status = _row_status(z, positions, temperature, top_k, top_p, min_p)
    safe = torch.where(status[:, None] == 0, z, torch.zeros_like(z))
    # T so small that max(z) / T overflows float32: no finite scaled logit is left to compare; the row is decided
    # as its T -> 0 limit, greedy (status.py).
    greedy = (temperature == 0) | ((temperature > 0) & ~torch.isfinite(safe.max(dim=1).values / temperature))
    scaled = safe / torch.where(greedy, torch.ones_like(temperature), temperature)[:, None]
    keep = _top_k_mask(scaled, top_k)
    scaled_k = scaled.masked_fill(~keep, float("-inf"))
    keep &= _top_p_mask(scaled_k, top_p)
    if min_p is not None:
        keep &= _min_p_mask(scaled, min_p.clamp(0, 1))  # bad rows (status) are discarded anyway
    return scaled, keep, greedy, status, safe


def debias_probs(logits, bias, positions, temperature, top_k, top_p, strength: float = 1.0, min_p=None):
    """(float32 [B, V] probabilities debias_sample draws from, int64 [B] status)."""
    scaled, keep, greedy, status, safe = _filtered(logits, bias, positions, temperature, top_k, top_p, strength,
                                                   min_p)
    probs = torch.softmax(scaled.masked_fill(~keep, float("-inf")), dim=1)
    one_hot = torch.zeros_like(probs).scatter_(1, safe.argmax(dim=1, keepdim=True), 1.0)
    probs = torch.where(greedy[:, None], one_hot, probs)
    return probs, status


def debias_sample(logits, bias, positions, temperature, top_k, top_p, seed, strength: float = 1.0, min_p=None):
    """int64 [B] tokens (negative = status code of a bad row)."""
    scaled, keep, greedy, status, safe = _filtered(logits, bias, positions, temperature, top_k, top_p, strength,
                                                   min_p)
    noise = gumbel_noise(seed, positions, scaled.shape[1])
    perturbed = (scaled + noise).masked_fill(~keep, float("-inf"))
    tokens = torch.where(greedy, safe.argmax(dim=1), perturbed.argmax(dim=1))
    return torch.where(status < 0, status, tokens)

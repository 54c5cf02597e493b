"""Readable pure-PyTorch definitions of the tsdi ops.

This module is the oracle of the test suite and the CPU/CUDA fallback when no compiled kernel serves a device.
It does no argument validation (ops.py does), but it reports the data-dependent errors the kernels report:

    debias_sample   -> int64 [B]; a negative entry is an error code for that row (ERR_NAN, ERR_NO_FINITE)
    debias_probs    -> (float32 [B, V], int64 [B] status codes, 0 = ok)
    logit_mean_update -> int64 [2]: (b, t) of the first counted non-finite input row, or (-1, -1); the running
                         statistics are left untouched when an error is reported.

Sampling semantics (Hugging Face, exactly):
    z = (logits.float() - strength * bias[positions[b]]) / T          (bias only where positions[b] < L)
    T == 0      -> argmax of the debiased logits, ties to the lowest index (top-k / top-p do not apply)
    top_k = k>0 -> TopKLogitsWarper: keep z >= (k-th largest z); ties with the k-th value are kept
    top_p = p<1 -> TopPLogitsWarper on what top-k kept: keep a token iff the probability mass ranked strictly
                   above it is < p (the top token always kept). Rank = z descending; equal z are ranked by
                   index descending, which is the order HF's ascending stable torch.sort produces.
    draw        -> Gumbel-max over the kept set: argmax_v z_v + g_v, g_v = -log(-log(u_v)),
                   u_v = philox_uniform(seed[b], positions[b], v). Exact in distribution; ties to lowest index.
"""
from __future__ import annotations

import torch

ERR_NAN = -1  # a row of the debiased logits contains NaN
ERR_NO_FINITE = -2  # a row has no finite debiased logit, or contains +inf

_M32 = 0xFFFFFFFF
_PHILOX_KEY_A, _PHILOX_KEY_B = 0x9E3779B9, 0xBB67AE85
_PHILOX_ROUND_A, _PHILOX_ROUND_B = 0xD2511F53, 0xCD9E8D57
# Triton's uint_to_uniform_float scale for 32-bit draws: the largest float with (2**31 - 1) * scale < 1.
_UNIFORM_SCALE = 4.6566127342e-10


def _mul32(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of the 64-bit product a * b for uint32 values held in int64 tensors.
    a * b can reach 2**64 and overflow int64, so split a into 16-bit halves: a = ah * 2**16 + al."""
    ah, al = a >> 16, a & 0xFFFF
    p_hi = ah * b  # < 2**48
    p_lo = al * b  # < 2**48
    hi = (p_hi + (p_lo >> 16)) >> 16
    lo = (p_lo + ((p_hi & 0xFFFF) << 16)) & _M32
    return hi, lo


def philox_uint32(seed: torch.Tensor, c0: torch.Tensor, c1: torch.Tensor) -> torch.Tensor:
    """First output word of Philox4x32-10 with counter (c0, c1, 0, 0) and key (seed_lo, seed_hi).

    Bit-identical to Triton's `tl.randint(seed, offset)` with a 64-bit offset = c0 + (c1 << 32)
    (triton/language/random.py). All arguments are int64 tensors (broadcastable); returns uint32 values in int64."""
    k0 = seed & _M32
    k1 = (seed >> 32) & _M32  # arithmetic shift, then mask: the two's-complement high word of a uint64 seed
    c0 = c0 & _M32
    c1 = c1 & _M32
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    k0, k1, c1 = torch.broadcast_tensors(k0, k1, c1)
    for _ in range(10):
        hi_b, lo_b = _mul32(_PHILOX_ROUND_B, c2)
        hi_a, lo_a = _mul32(_PHILOX_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + _PHILOX_KEY_A) & _M32
        k1 = (k1 + _PHILOX_KEY_B) & _M32
    return c0


def uint_to_uniform(x: torch.Tensor) -> torch.Tensor:
    """Triton's uint_to_uniform_float for uint32 input: reinterpret as int32, fold negatives (x -> -x-1),
    convert to float32 and scale. Result in [0, 1)."""
    x = torch.where(x >= 2**31, x - 2**32, x)
    x = torch.where(x < 0, -x - 1, x)
    return x.to(torch.float32) * torch.tensor(_UNIFORM_SCALE, dtype=torch.float32)


def philox_uniform(seed: torch.Tensor, position: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    """u(seed, position, token) in [0, 1): the noise shared by every backend (Triton: tl.rand semantics with a
    64-bit offset token + position * 2**32)."""
    return uint_to_uniform(philox_uint32(seed, token, position))


def gumbel_noise(seed: torch.Tensor, positions: torch.Tensor, vocab: int) -> torch.Tensor:
    """float32 [B, V] Gumbel(0, 1) noise g = -log(-log(u)) keyed by (seed[b], positions[b], v)."""
    v = torch.arange(vocab, dtype=torch.int64, device=seed.device)
    u = philox_uniform(seed[:, None], positions[:, None], v[None, :])
    return -torch.log(-torch.log(u))


def debiased_logits(logits, bias, positions, strength: float) -> torch.Tensor:
    """float32 [B, V]: logits - strength * bias[positions[b]], the bias applied only where positions[b] < L."""
    z = logits.float()
    if bias is None or bias.shape[0] == 0:
        return z
    in_range = positions < bias.shape[0]
    rows = bias[positions.clamp(max=bias.shape[0] - 1)]
    return torch.where(in_range[:, None], z - strength * rows, z)


def _row_status(z: torch.Tensor) -> torch.Tensor:
    """int64 [B]: 0, ERR_NAN or ERR_NO_FINITE for each row of z."""
    status = torch.zeros(z.shape[0], dtype=torch.int64, device=z.device)
    no_finite = ~torch.isfinite(z).any(dim=1) | (z == float("inf")).any(dim=1)
    status[no_finite] = ERR_NO_FINITE
    status[torch.isnan(z).any(dim=1)] = ERR_NAN
    return status


def _top_k_mask(z: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """bool [B, V] of what TopKLogitsWarper keeps (k = 0 keeps everything)."""
    vocab = z.shape[1]
    k = top_k.clamp(min=1, max=vocab)
    sorted_desc = torch.sort(z, dim=1, descending=True).values
    kth = sorted_desc.gather(1, (k - 1)[:, None])
    return (z >= kth) | (top_k == 0)[:, None]


def _top_p_mask(z: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """bool [B, V] of what TopPLogitsWarper keeps: mass ranked strictly above < p (p = 1 keeps everything)."""
    # Ascending stable sort, then flip: descending by value, equal values by index descending (HF's order).
    asc_vals, asc_idx = torch.sort(z, dim=1, stable=True)
    vals, idx = asc_vals.flip(1), asc_idx.flip(1)
    probs = torch.softmax(vals, dim=1)
    mass_above = torch.cumsum(probs, dim=1) - probs
    keep_sorted = mass_above < top_p[:, None]
    keep_sorted[:, 0] = True
    keep = torch.zeros_like(keep_sorted).scatter(1, idx, keep_sorted)
    return keep | (top_p >= 1.0)[:, None]


def _filtered(logits, bias, positions, temperature, top_k, top_p, strength):
    """(z, keep, greedy, status): temperature-scaled debiased logits, the kept set, greedy rows, status codes."""
    z = debiased_logits(logits, bias, positions, strength)
    status = _row_status(z)
    greedy = temperature == 0
    safe = torch.where(status[:, None] == 0, z, torch.zeros_like(z))
    scaled = safe / torch.where(greedy, torch.ones_like(temperature), temperature)[:, None]
    keep = _top_k_mask(scaled, top_k)
    scaled_k = scaled.masked_fill(~keep, float("-inf"))
    keep &= _top_p_mask(scaled_k, top_p)
    return scaled, keep, greedy, status, safe


def debias_probs(logits, bias, positions, temperature, top_k, top_p, strength: float = 1.0):
    """(float32 [B, V] probabilities debias_sample draws from, int64 [B] status)."""
    scaled, keep, greedy, status, safe = _filtered(logits, bias, positions, temperature, top_k, top_p, strength)
    probs = torch.softmax(scaled.masked_fill(~keep, float("-inf")), dim=1)
    one_hot = torch.zeros_like(probs).scatter_(1, safe.argmax(dim=1, keepdim=True), 1.0)
    probs = torch.where(greedy[:, None], one_hot, probs)
    return probs, status


def debias_sample(logits, bias, positions, temperature, top_k, top_p, seed, strength: float = 1.0):
    """int64 [B] tokens (negative = status code of a bad row)."""
    scaled, keep, greedy, status, safe = _filtered(logits, bias, positions, temperature, top_k, top_p, strength)
    noise = gumbel_noise(seed, positions, scaled.shape[1])
    perturbed = (scaled + noise).masked_fill(~keep, float("-inf"))
    tokens = torch.where(greedy, safe.argmax(dim=1), perturbed.argmax(dim=1))
    return torch.where(status < 0, status, tokens)


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
    mean += delta * (n_b / n.clamp(min=1))
    m2 += m2_b + delta * delta * (n_a * n_b / n.clamp(min=1))
    count += n_b[:, 0].to(torch.int64)
    return torch.tensor([-1, -1], dtype=torch.int64)

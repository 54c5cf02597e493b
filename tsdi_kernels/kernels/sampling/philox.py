"""Philox4x32-10 noise in pure PyTorch, bit-identical to Triton's `tl.randint` / `tl.rand`.

The C++ kernels (csrc/philox.h) and the Triton kernels produce the same numbers, so every backend draws the same
token for the same (seed, position, token) key."""
from __future__ import annotations

import torch

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

"""Fused debias + temperature + top-k + top-p + min-p + Gumbel-max sampler (Triton).

Semantics are exactly reference.py beside this file (read its docstring); this header gives the algorithm.
Per row b, with s_v = z_v / T and z_v = logits[b, v] - strength * bias[positions[b], v] (fp32):

  kernel 1 `_stream_kernel`, grid (B, S): program (b, j) streams its chunk of the vocabulary ONCE, in tiles of
    BLOCK (512), keeping in registers: row status flags (NaN / +inf / any finite), the greedy argmax of z, the
    online max m and sum of exp(s - m), and one of
      - unfiltered rows (k = 0 or k >= V, and p = 1): the Gumbel-max winner argmax s_v + g_v of the chunk; the
        Philox noise is only generated for tiles whose max s + G_MAX can still beat the running best;
      - filtered rows: a candidate buffer holding every "near" token of the chunk (s >= m_run - span, span from
        k, p and V so that far tokens provably cannot be kept or drawn, see the kernel) whose packed key
        key(s_v) << 32 | v is >= a cutoff that only rises. The packed key orders tokens exactly as HF's top-p
        does (s descending, equal s by index descending), so the buffer is a PREFIX of the (near) HF ranking.
        When it holds more than KEEP (512) keys it is sorted in registers and cut to its KEEP / 2 best (the
        cutoff rises to the last kept key); in top-k rows with k <= TOP_J (serving: k = 50) to its k + 1 best
        and their ties, since only a split's top-k can reach the row's: later tokens are appended only if they
        beat the split's running (k + 1)-th. It lives in a small global scratch [B, S, KEEP + BLOCK] int64
        (L1/L2 resident: Triton has no indexable shared memory). Real LLM rows DO cut: at T = 0.7 nearly every
        token is near, so a split's second tile overflows the buffer (benchmarks/sampler_merges.py, k50 p0.9 on
        SmolLM2 rows: 46 cuts per row at 24 splits of 2048 tokens, that overflow and the final sort of each
        split; 15 at 8 splits, 4.4 at 2), each a 1024-key sort (116 of the loop's 136 static barriers).
  kernel 2 `_finish_kernel`, grid (B,): merges the S partials with one vector load each (fixed reduction
    order: deterministic), merges the buffers of the splits whose max is near the row max (on real LLM logits
    nearly every split; top-k rows with k <= TOP_J merge once over all splits, see below) into the row's top-KEEP
    prefix (a sort of 2 * KEEP keys per such split), then applies the exact HF rule
    on the prefix: k-th largest value (ties kept), probabilities exp(s - m) / Z_k, exclusive cumulative sum in
    rank order < p (top token always kept), and Gumbel-max over the kept candidates. The prefix provably
    contains the kept set when (a) no buffer was cut, or (b) top-k: the prefix holds >= k tokens and ends
    strictly below the k-th value, or (c) top-p alone: the prefix's mass >= p (every token outside it has at
    least that much mass ranked above it).
  kernel 3 `_fallback_kernel`, grid (B,): exits at once unless (a)-(c) failed (flat rows whose top-KEEP mass
    < p, or k > KEEP / 2 after a cut); those rows are solved exactly by radix selection over the row: 8 passes
    (4 bits each) for the k-th largest value, 1 pass for Z_k, 16 passes over the 64-bit packed key for the top-p
    boundary, 1 pass for the Gumbel-max: a bounded worst case of 26 more reads of such a row.

Min-p (HAS_MIN_P, a per-row threshold t = fl32(log(min_p) * MIN_P_LOG_SCALE), semantics.py) keeps s - m >= t
among what top-k and top-p keep (m: the row max of s). A min-p row without top-k and top-p is a filtered row;
tokens below m_run + t (less a margin) are never candidates; kernel 2 drops s - m < t from the kept set, and its
prefix suffices when it is complete or its last value lies below the threshold; else kernel 3 decides the row.
Without HAS_MIN_P the kernels compile exactly as before (no load, no register).

Why the worst case is not "one more pass": the exact HF boundary of a flat row is an order statistic of up to
V values (a selection); without an indexable on-chip buffer of V entries that needs log-many passes (radix
select, as torch.topk does). The common case reads the logits once, writes 8 bytes per row.

Bytes moved (common case): B * V * elem (logits, read once) + B * V * 4 when a bias row applies (fp32 rows,
L2 hits when rows share positions) + scratch of B * S * (16 + 8 * KEEP) bytes (L2) + 8 * B out.
B=64, V=128256, bf16: 16.4 MB of logits, ~5.5 us at 3 TB/s. Splits on 132 SMs, as many as fit
in ONE wave of 4 resident programs per SM (triton_launch.split_vocab): S = 63 at B = 1 and 8 (63 / 504 programs),
8 at B = 64 (512), 2 at B = 256 (512); 528 fit.
Noise: u = uint_to_uniform_float(philox(seed, v + position * 2**32)), g = -log(-log(u)), as philox.py
(on the GPU tl.log is an approximate log, hence "same tokens up to float rounding").
No host synchronisation: grids and scratch sizes depend on shapes only (CUDA-graph capturable).
"""
from __future__ import annotations

import os

import numpy as np
import torch
import triton
import triton.language as tl

from .. import status as _status
from ..semantics import MIN_P_LOG_SCALE as _MIN_P_LOG_SCALE
from ..semantics import TOP_P_SCALE as _TOP_P_SCALE
from ..triton_launch import on_device, sm_count, split_vocab

# Largest Gumbel noise -log(-log(u)) for u <= (2**31 - 1) * 4.6566127342e-10 is 16.64; 20 leaves room for
# an approximate log on the GPU. A tile whose max s + G_MAX cannot beat the running best needs no noise.
G_MAX = tl.constexpr(20.0)
# A token more than G_SPAN below the max cannot win the Gumbel-max: it would need g_v - g_top > G_SPAN, but
# g <= 16.64 and g_top >= -log(-log(4.66e-10)) = -3.07 unless u_top == 0 exactly (probability 2**-31).
G_SPAN = tl.constexpr(21.0)
INT64_MIN = tl.constexpr(-(2**63))
INT64_MAX = tl.constexpr(2**63 - 1)
# row flags written by kernel 1 and merged by kernel 2
FLAG_NAN = tl.constexpr(1)
FLAG_PINF = tl.constexpr(2)
FLAG_FINITE = tl.constexpr(4)
FLAG_CUT = tl.constexpr(8)  # a candidate buffer was cut: the candidates are a strict prefix of the ranking
ERR_NAN = tl.constexpr(_status.ERR_NAN)
ERR_NO_FINITE = tl.constexpr(_status.ERR_NO_FINITE)
ERR_POSITION = tl.constexpr(_status.ERR_POSITION)
ERR_TEMPERATURE = tl.constexpr(_status.ERR_TEMPERATURE)
ERR_TOP_K = tl.constexpr(_status.ERR_TOP_K)
ERR_TOP_P = tl.constexpr(_status.ERR_TOP_P)
ERR_MIN_P = tl.constexpr(_status.ERR_MIN_P)
MIN_P_LOG_SCALE = tl.constexpr(_MIN_P_LOG_SCALE)
# top-p keeps a token iff the mass above it is < top_p * TOP_P_SCALE (semantics.py: ties at top_p drop the token)
TOP_P_SCALE = tl.constexpr(_TOP_P_SCALE)
# Per-split partials: 4 floats (max, sum of exp, greedy value, unfiltered value) and PART_I int64 slots (greedy
# index, unfiltered index, candidate count, flags, cutoff key of the candidate buffer, cuts that dropped keys;
# padded to a power of two).
PART_I = tl.constexpr(8)
# Top-k rows with k <= TOP_J (the serving case, e.g. k = 50): every split ends with its candidates sorted, and
# kernel 2 gathers the row's top-k from the splits' first TOP_J keys in ONE merge (see _finish_kernel).
# TOP_J = min(64, KEEP / 2): a cut split of such a row keeps at least min(k + 1, KEEP / 2) >= k keys.
TOP_J_MAX = 64
NEEDS_FALLBACK = tl.constexpr(-1000)  # internal (below every status.py code): kernel 2 could not decide the row


if os.environ.get("TRITON_INTERPRET", "0") == "1":
    # The interpreter runs Triton's bitonic tl.sort op by op (~3 s for 256 keys), so under TRITON_INTERPRET=1
    # the descending sort is numpy's; compiled kernels use tl.sort (exercised by the GPU tests).
    def _sort_desc(x):
        from triton.runtime.interpreter import TensorHandle

        data = np.ascontiguousarray(np.sort(x.handle.data)[::-1])
        return tl.core.tensor(TensorHandle(data, x.handle.dtype), x.type)
else:
    @triton.jit
    def _sort_desc(x):
        return tl.sort(x, descending=True)


@triton.jit
def _param_status(position, temperature, top_k, top_p, min_p):
    """status.py code of a row's parameters (0 = valid), checked in the kernel: no separate pass, no host sync."""
    return tl.where((position < 0) | (position >= 4294967296), ERR_POSITION,  # 32-bit Philox counter word
                    tl.where(~(temperature >= 0.0), ERR_TEMPERATURE,
                             tl.where(top_k < 0, ERR_TOP_K, tl.where(~((top_p > 0.0) & (top_p <= 1.0)), ERR_TOP_P,
                                      tl.where(~((min_p >= 0.0) & (min_p <= 1.0)), ERR_MIN_P, 0)))))


@triton.jit
def _min_p_params(min_p_ptr, i_b, HAS_MIN_P: tl.constexpr):
    """(min_p, threshold t) of row b: keep s - m >= t; (0, -inf) without min-p. t = fl32(log(min_p) * (1 + 2**-18))
    with the log and the product in float64, rounded once: the reference's and the C++ kernel's threshold."""
    if HAS_MIN_P:
        min_p = tl.load(min_p_ptr + i_b)
        q = tl.minimum(tl.maximum(min_p, 0.0), 1.0).to(tl.float64)  # a bad min_p is reported, never used
        thr = tl.where(q > 0.0, (tl.log(tl.where(q > 0.0, q, 1.0)) * MIN_P_LOG_SCALE).to(tl.float32), float("-inf"))
    else:
        min_p = 0.0
        thr = float("-inf")
    return min_p, thr


@triton.jit
def _row_params(i_b, positions_ptr, temperature_ptr, top_k_ptr, top_p_ptr, seed_ptr, min_p_ptr,
                HAS_MIN_P: tl.constexpr):
    """Row b's sampling parameters, read the same way by all three kernels (a load a kernel does not use is
    removed by the compiler)."""
    position = tl.load(positions_ptr + i_b)
    temperature = tl.load(temperature_ptr + i_b)
    top_k = tl.load(top_k_ptr + i_b)
    top_p = tl.load(top_p_ptr + i_b)
    seed = tl.load(seed_ptr + i_b)
    min_p, min_thr = _min_p_params(min_p_ptr, i_b, HAS_MIN_P)
    return position, temperature, top_k, top_p, seed, min_p, min_thr


@triton.jit
def _order_key(s):
    """int32 key with the order of the float32 values s (-0.0 is mapped to +0.0 first, as torch ties them)."""
    s = tl.where(s == 0.0, 0.0, s)
    bits = s.to(tl.int32, bitcast=True)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


@triton.jit
def _key_to_float(key):
    """Inverse of _order_key (the map is an involution on the bits)."""
    bits = key ^ ((key >> 31) & 0x7FFFFFFF)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _near_span(top_k, top_p, vocab):
    """How far below the max a token must be to provably not matter (see _stream_kernel).
    1 - top_p >= 2**-24 for every float32 top_p < 1, so the clamp changes no value: it only keeps log(0) out of
    the top_p = 1 lanes, whose result tl.where discards."""
    no_top_k = (top_k == 0) | (top_k >= vocab)
    k_f = tl.where(no_top_k, vocab, top_k).to(tl.float32)
    return tl.where(top_p >= 1.0, G_SPAN,
                    tl.log(k_f) + tl.maximum(1.0 - tl.log(tl.maximum(1.0 - top_p, 1e-30)), tl.where(no_top_k, 0.0, 17.5)))


@triton.jit
def _gumbel(seed, position, o_v):
    """g = -log(-log(u)), u = Triton's tl.rand(seed, v + position * 2**32): reference.philox_uniform."""
    offset = o_v.to(tl.int64) + position * 4294967296
    u = tl.rand(seed, offset)
    return -tl.log(-tl.log(u))


@triton.jit
def _debiased_tile(p_logits, p_bias, o_v, m_v, bias_end, strength, HAS_BIAS: tl.constexpr):
    """z = logits.float() - strength * bias_row (fp32, as torch), -inf outside the vocabulary.
    bias_end is V when the row's position has a bias row (position < L), else 0."""
    b_z = tl.load(p_logits + o_v, mask=m_v, other=float("-inf")).to(tl.float32)
    if HAS_BIAS:
        m_b = m_v & (o_v < bias_end)
        b_bias = tl.load(p_bias + o_v, mask=m_b, other=0.0)
        b_z = tl.where(m_b, b_z - strength * b_bias, b_z)
    return b_z


@triton.jit
def _scaled_tile(p_logits, p_bias, o_v, vocab, bias_end, strength, temperature, HAS_BIAS: tl.constexpr):
    """(offsets, in-vocabulary mask, s = z / T) of one tile: what each pass of the fallback kernel re-reads (the
    row sits in L2; recomputing s is cheaper than storing it)."""
    m_v = o_v < vocab
    return o_v, m_v, _debiased_tile(p_logits, p_bias, o_v, m_v, bias_end, strength, HAS_BIAS) / temperature


@triton.jit
def _stream_kernel(
    logits_ptr, stride_b, bias_ptr, n_bias_rows, positions_ptr, temperature_ptr, top_k_ptr, top_p_ptr, seed_ptr,
    min_p_ptr, strength, vocab, chunk, part_f_ptr, part_i_ptr, cand_ptr,
    HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr, KEEP: tl.constexpr, TOP_J: tl.constexpr, HAS_MIN_P: tl.constexpr,
):
    SLOTS: tl.constexpr = KEEP + BLOCK
    HALF: tl.constexpr = KEEP // 2
    i_b = tl.program_id(0)
    i_s = tl.program_id(1)
    n_split = tl.num_programs(1)
    position, temperature, top_k, top_p, seed, min_p, min_thr = _row_params(
        i_b, positions_ptr, temperature_ptr, top_k_ptr, top_p_ptr, seed_ptr, min_p_ptr, HAS_MIN_P)
    # a row with invalid parameters is streamed as a cheap greedy row without bias; kernel 2 reports its code
    bad_param = _param_status(position, temperature, top_k, top_p, min_p) != 0
    greedy = (temperature == 0.0) | bad_param
    position = tl.where(bad_param, n_bias_rows, position)
    inv_scale = tl.where(greedy, 1.0, temperature)  # reference: scaled = z / where(greedy, 1, T)
    no_top_k = (top_k == 0) | (top_k >= vocab)
    unfiltered = (~greedy) & no_top_k & (top_p >= 1.0) & (min_thr == float("-inf"))
    filtered = (~greedy) & (~unfiltered)
    # Candidates are only tokens with s >= m_run - near_span ("near"); far tokens provably do not matter:
    #   top-p (k = 0): far mass <= V e^-span = (1 - p) / e, so mass ranked above a far token > p: dropped;
    #   top-k and top-p: the same with k in place of V, and the far survivors' share of Z_k is
    #     <= k e^-span < 2.5e-8 (fp32 rounding) with span >= ln k + 17.5;
    #   top-k alone: far survivors cannot win the Gumbel-max (G_SPAN).
    near_span = _near_span(top_k, top_p, vocab)
    if HAS_MIN_P:
        # min-p drops s < m + t and m_run <= m; 1/1024 of t plus 1e-3 more cover the rounding of m_run - span
        near_span = tl.minimum(near_span, -min_thr * (1.0 + 1.0 / 1024) + 1e-3)
    bias_end = tl.where(position < n_bias_rows, vocab, 0)
    p_logits = logits_ptr + i_b.to(tl.int64) * stride_b
    p_bias = bias_ptr + tl.minimum(position, tl.maximum(n_bias_rows - 1, 0)) * vocab
    p_cand = cand_ptr + (i_b * n_split + i_s).to(tl.int64) * SLOTS
    o_blk = tl.arange(0, BLOCK)
    o_slot = tl.arange(0, SLOTS)
    start = i_s * chunk
    end = tl.minimum(start + chunk, vocab)

    # Per-lane state, reduced once after the loop: a block reduction costs a shared-memory round trip and a
    # barrier, so the loop only reduces what it branches on (the tile max of s, the candidate count).
    v_flags = tl.zeros((BLOCK,), tl.int32)  # status bits of the debiased row (before temperature)
    v_gval = tl.full((BLOCK,), float("-inf"), tl.float32)  # greedy: per-lane max z, first index
    v_gidx = tl.zeros((BLOCK,), tl.int32) + vocab
    v_z = tl.zeros((BLOCK,), tl.float32)  # per-lane sum of exp(s - m_run)
    m_run = float("-inf")  # online softmax of s: running max
    u_val = float("-inf")  # unfiltered Gumbel-max
    u_idx = tl.zeros((), tl.int64) + vocab
    count = tl.zeros((), tl.int32)
    cutoff = tl.zeros((), tl.int64) + INT64_MIN
    flags = tl.zeros((), tl.int32)
    n_cut = tl.zeros((), tl.int32)  # cuts that dropped keys: reported per row by kernel 2 (benchmarks)
    # top-k rows with k <= TOP_J end with their candidates sorted (kernel 2 gathers their first TOP_J keys): the
    # loop runs one more iteration past `end`, which loads nothing and only sorts, so that the kernel keeps ONE
    # sort site (each tl.sort site costs ~10 s of compile time).
    sort_at_end = filtered & (top_k > 0) & (top_k <= TOP_J)
    for v0 in range(start, end + BLOCK, BLOCK):
        o_v = v0 + o_blk
        m_v = o_v < end
        b_z = _debiased_tile(p_logits, p_bias, o_v, m_v, bias_end, strength, HAS_BIAS)
        # reference._row_status: NaN, +inf, any finite (lanes past the end hold -inf: none of the three)
        v_flags = v_flags | tl.where(b_z != b_z, FLAG_NAN, 0) | tl.where(b_z == float("inf"), FLAG_PINF, 0) \
            | tl.where(tl.abs(b_z) < float("inf"), FLAG_FINITE, 0)
        # greedy: strict > keeps each lane's first maximum; ties across lanes go to the lowest index below
        m_better = b_z > v_gval
        v_gval = tl.where(m_better, b_z, v_gval)
        v_gidx = tl.where(m_better, o_v, v_gidx)
        b_s = b_z / inv_scale
        # online max / sum of exp: one scalar rescale per tile (-inf tiles leave the state as it is)
        s_max = tl.max(b_s, axis=0)
        m_new = tl.maximum(m_run, s_max)
        if m_new > float("-inf"):
            v_z = v_z * tl.exp(m_run - m_new) + tl.exp(b_s - m_new)
            m_run = m_new
        if unfiltered:
            if s_max + G_MAX > u_val:
                b_g = tl.where(m_v, b_s + _gumbel(seed, position, o_v), float("-inf"))
                t_best = tl.max(b_g, axis=0)
                if t_best > u_val:
                    u_val = t_best
                    u_idx = tl.min(tl.where(b_g == t_best, o_v, 2147483647), axis=0).to(tl.int64)
        if filtered:
            b_key = (_order_key(b_s).to(tl.int64) << 32) | o_v.to(tl.int64)
            m_near = m_v & (b_s > float("-inf")) & (b_s >= m_run - near_span)
            m_new_c = m_near & (b_key >= cutoff)
            n_new = tl.sum(m_new_c.to(tl.int32), axis=0)
            if n_new > 0:
                # append at count .. count + n_new - 1 (count <= KEEP and n_new <= BLOCK: fits in SLOTS)
                o_dst = count + tl.cumsum(m_new_c.to(tl.int32), axis=0) - 1
                tl.store(p_cand + o_dst, b_key, mask=m_new_c)
                count += n_new
            if (count > KEEP) | (sort_at_end & (v0 >= end) & (count > 0)):
                # cut to the n_keep best keys; the cutoff rises to the last kept one. n_keep = HALF (amortised:
                # the next cut needs HALF new candidates), except in top-k rows with k <= TOP_J, where only the
                # split's top-k can reach the row's top-k: keep the keys whose value ties or beats the k-th and
                # one more (at most HALF), so the cutoff's VALUE is below the split's k-th (kernel 2 needs the
                # ties of the row's k-th value) and later tokens are appended only if they beat it.
                # At the end of such a row: sort (kernel 2 reads the first TOP_J keys), cut the same way.
                tl.debug_barrier()
                b_buf = tl.load(p_cand + o_slot, mask=o_slot < count, other=INT64_MIN)
                b_buf = _sort_desc(b_buf)
                # smallest packed key with the k-th key's value (count < k: INT64_MIN, nothing is dropped);
                # the slot index in int32: an int64 compare over the 1024 slots spills at the 128-register cap
                k_slot = tl.where(sort_at_end, top_k - 1, -1).to(tl.int32)
                tie_floor = (tl.max(tl.where(o_slot == k_slot, b_buf, INT64_MIN), axis=0) >> 32) << 32
                n_tie = tl.sum((b_buf >= tie_floor).to(tl.int32), axis=0)
                n_keep = tl.where(sort_at_end, tl.minimum(n_tie + 1, HALF), HALF)
                dropped = count > n_keep
                cutoff = tl.where(dropped, tl.min(tl.where(o_slot < n_keep, b_buf, INT64_MAX), axis=0), cutoff)
                tl.debug_barrier()
                tl.store(p_cand + o_slot, b_buf, mask=o_slot < n_keep)
                count = tl.minimum(count, n_keep)
                flags = flags | tl.where(dropped, FLAG_CUT, 0)
                n_cut += dropped.to(tl.int32)
                tl.debug_barrier()
    flags = flags | tl.max(v_flags & FLAG_NAN, axis=0) | tl.max(v_flags & FLAG_PINF, axis=0) \
        | tl.max(v_flags & FLAG_FINITE, axis=0)
    z_run = tl.sum(v_z, axis=0)
    g_val = tl.max(v_gval, axis=0)
    g_idx = tl.min(tl.where(v_gval == g_val, v_gidx, 2147483647), axis=0).to(tl.int64)
    i_part = (i_b * n_split + i_s) * 4
    i_part_i = (i_b * n_split + i_s) * PART_I
    tl.store(part_f_ptr + i_part + 0, m_run)
    tl.store(part_f_ptr + i_part + 1, z_run)
    tl.store(part_f_ptr + i_part + 2, g_val)
    tl.store(part_f_ptr + i_part + 3, u_val)
    tl.store(part_i_ptr + i_part_i + 0, g_idx)
    tl.store(part_i_ptr + i_part_i + 1, u_idx)
    tl.store(part_i_ptr + i_part_i + 2, count.to(tl.int64))
    tl.store(part_i_ptr + i_part_i + 3, flags.to(tl.int64))
    # the buffer holds every token of the split with key >= cutoff (INT64_MIN: never cut, every near token)
    tl.store(part_i_ptr + i_part_i + 4, cutoff)
    tl.store(part_i_ptr + i_part_i + 5, n_cut.to(tl.int64))


@triton.jit
def _finish_kernel(
    positions_ptr, temperature_ptr, top_k_ptr, top_p_ptr, seed_ptr, min_p_ptr, vocab, n_split, part_f_ptr,
    part_i_ptr, cand_ptr, gather_ptr, out_ptr, stats_ptr, KEEP: tl.constexpr, BLOCK: tl.constexpr,
    MAX_SPLITS: tl.constexpr, TOP_J: tl.constexpr, HAS_MIN_P: tl.constexpr,
):
    SLOTS: tl.constexpr = KEEP + BLOCK
    i_b = tl.program_id(0)
    position, _temperature, top_k, top_p, seed, min_p, min_thr = _row_params(
        i_b, positions_ptr, temperature_ptr, top_k_ptr, top_p_ptr, seed_ptr, min_p_ptr, HAS_MIN_P)
    o_keep = tl.arange(0, KEEP)

    # merge the split partials: vector loads of all S partials (no per-split memory round trip), ties to the
    # lowest index (splits cover increasing index ranges), fixed reduction trees: deterministic
    o_s = tl.arange(0, MAX_SPLITS)
    m_s_ok = o_s < n_split
    o_part = (i_b * n_split + o_s) * 4
    o_part_i = (i_b * n_split + o_s) * PART_I
    v_m = tl.load(part_f_ptr + o_part + 0, mask=m_s_ok, other=float("-inf"))
    v_z = tl.load(part_f_ptr + o_part + 1, mask=m_s_ok, other=0.0)
    v_gv = tl.load(part_f_ptr + o_part + 2, mask=m_s_ok, other=float("-inf"))
    v_uv = tl.load(part_f_ptr + o_part + 3, mask=m_s_ok, other=float("-inf"))
    v_gi = tl.load(part_i_ptr + o_part_i + 0, mask=m_s_ok, other=INT64_MAX)
    v_ui = tl.load(part_i_ptr + o_part_i + 1, mask=m_s_ok, other=INT64_MAX)
    v_n = tl.load(part_i_ptr + o_part_i + 2, mask=m_s_ok, other=0)
    v_flags = tl.load(part_i_ptr + o_part_i + 3, mask=m_s_ok, other=0)
    v_cut = tl.load(part_i_ptr + o_part_i + 4, mask=m_s_ok, other=INT64_MIN)
    m_run = tl.max(v_m, axis=0)
    z_run = tl.sum(tl.where(v_m > float("-inf"), v_z * tl.exp(v_m - m_run), 0.0), axis=0)
    g_val = tl.max(v_gv, axis=0)
    g_idx = tl.min(tl.where(v_gv == g_val, v_gi, INT64_MAX), axis=0)
    u_val = tl.max(v_uv, axis=0)
    u_idx = tl.min(tl.where(v_uv == u_val, v_ui, INT64_MAX), axis=0)
    flags = tl.max(v_flags & FLAG_NAN, axis=0) | tl.max(v_flags & FLAG_PINF, axis=0) \
        | tl.max(v_flags & FLAG_FINITE, axis=0)
    # buffer cuts of all the row's splits, for reports only (stats slot 3)
    n_cut = tl.sum(tl.load(part_i_ptr + o_part_i + 5, mask=m_s_ok, other=0).to(tl.int32), axis=0)
    # candidates: only splits whose max is near the row max hold near tokens; merge those
    near_span = _near_span(top_k, top_p, vocab)
    if HAS_MIN_P:
        near_span = tl.minimum(near_span, -min_thr * (1.0 + 1.0 / 1024) + 1e-3)  # as kernel 1
    thr = m_run - near_span
    m_near_s = m_s_ok & (v_n > 0) & (v_m >= thr)
    flags = flags | tl.max(tl.where(m_near_s, v_flags & FLAG_CUT, 0), axis=0)
    # The merged candidates are a prefix of the row's ranking only down to the highest cutoff of a cut split:
    # below it, a cut split may have dropped tokens that other splits' candidates rank under.
    cut_key = tl.max(tl.where(m_near_s, v_cut, INT64_MIN), axis=0)
    c_near = tl.cumsum(m_near_s.to(tl.int32), axis=0)
    b_cand = tl.full((KEEP,), INT64_MIN, tl.int64)
    n_near = tl.sum(m_near_s.to(tl.int32), axis=0)
    # Top-k rows (k <= TOP_J): ONE merge instead of one per near split (on real LLM logits nearly every split is
    # near). Each split's first TOP_J candidates are sorted (kernel 1), so the row's top-k lies in this
    # [splits, TOP_J] tile: its k-th largest order key tau is found by bisection (32 counts over the tile), and
    # the keys >= tau (k + ties) are compacted into a KEEP buffer that the loop below sorts once. Exact unless a
    # split has TOP_J keys >= tau (it may hold more: a split with fewer has its whole buffer in the tile, its
    # empty slots read INT32_MIN), a cut split's cutoff has value tau (below), or the ties overflow KEEP: then the
    # per-split merges run.
    gathered = n_split < 0  # a boolean tensor (False): both branches below must give it the same type
    n_gathered = tl.zeros((), tl.int32)
    use_k = (top_k > 0) & (top_k < vocab)
    if use_k & (top_k <= TOP_J) & (n_split > 1):
        o_j = tl.arange(0, TOP_J)
        o_tile = (i_b * n_split + o_s[:, None]) * SLOTS + o_j[None, :]  # int32: B * S * SLOTS < 2**31
        m_tile = m_s_ok[:, None] & (o_j[None, :] < v_n[:, None])
        # order keys (high words) only, invalid slots at INT32_MIN, which no bisection midpoint reaches
        t_ord = (tl.load(cand_ptr + o_tile, mask=m_tile, other=INT64_MIN) >> 32).to(tl.int32)
        lo = tl.zeros((), tl.int64) - 2147483648
        hi = tl.zeros((), tl.int64) + 2147483647
        for _ in range(32):  # the largest tau with count(t_ord >= tau) >= k
            mid = (lo + hi + 1) // 2
            n_ge = tl.sum(tl.sum((t_ord >= mid).to(tl.int32), axis=1), axis=0)
            lo = tl.where(n_ge >= top_k, mid, lo)
            hi = tl.where(n_ge >= top_k, hi, mid - 1)
        n_gathered = tl.sum(tl.sum((t_ord >= lo).to(tl.int32), axis=1), axis=0)
        last_in = tl.max(tl.max(((o_j[None, :] == TOP_J - 1) & (t_ord >= lo)).to(tl.int32), axis=1), axis=0)
        # A split cut at a key of value tau may miss tokens of value tau below it (lower index): exact only when
        # tau beats every near cut split's cutoff VALUE (kernel 1 keeps it below the split's k-th, unless a
        # split's ties of the k-th overflow KEEP / 2). Otherwise the per-split merges, or kernel 3, decide.
        gathered = (n_gathered >= top_k) & (n_gathered <= KEEP) & (last_in == 0) & (lo > (cut_key >> 32))
        if gathered:
            # compaction, 8 splits at a time (small tiles keep registers down): keys >= tau in split order
            n_done = tl.zeros((), tl.int32)
            for s0 in range(0, MAX_SPLITS, 8):
                o_s8 = s0 + tl.arange(0, 8)
                m_c8 = (o_s8[:, None] < n_split) & (o_j[None, :] < tl.load(
                    part_i_ptr + (i_b * n_split + o_s8) * PART_I + 2, mask=o_s8 < n_split, other=0)[:, None])
                c_key = tl.load(cand_ptr + (i_b * n_split + o_s8[:, None]) * SLOTS + o_j[None, :], mask=m_c8,
                                other=INT64_MIN)
                f_sel = tl.reshape(m_c8 & ((c_key >> 32) >= lo), (8 * TOP_J,))
                o_dst = n_done + tl.cumsum(f_sel.to(tl.int32), axis=0) - 1
                tl.store(gather_ptr + i_b.to(tl.int64) * KEEP + o_dst, tl.reshape(c_key, (8 * TOP_J,)),
                         mask=f_sel)
                n_done += tl.sum(f_sel.to(tl.int32), axis=0)
            tl.debug_barrier()
            n_near = 1
    for i_near in range(0, n_near):
        i_s = tl.min(tl.where(m_near_s & (c_near == i_near + 1), o_s, MAX_SPLITS), axis=0)
        n_s = tl.sum(tl.where(o_s == i_s, v_n, 0), axis=0).to(tl.int32)
        if gathered:
            b_new = tl.load(gather_ptr + i_b.to(tl.int64) * KEEP + o_keep, mask=o_keep < n_gathered,
                            other=INT64_MIN)
        else:
            b_new = tl.load(cand_ptr + (i_b * n_split + i_s).to(tl.int64) * SLOTS + o_keep, mask=o_keep < n_s,
                            other=INT64_MIN)
            b_new = tl.where(_key_to_float((b_new >> 32).to(tl.int32)) >= thr, b_new, INT64_MIN)
        # top-KEEP of the union: sort the 2 * KEEP keys, keep the first half (one sort site for compile time)
        b_both = _sort_desc(tl.reshape(tl.join(b_cand, b_new), (2 * KEEP,)))
        b_cand, _ = tl.split(tl.permute(tl.reshape(b_both, (2, KEEP)), (1, 0)))
    tl.store(stats_ptr + i_b * 4 + 0, m_run)
    tl.store(stats_ptr + i_b * 4 + 1, z_run)
    tl.store(stats_ptr + i_b * 4 + 2, n_near.to(tl.float32))  # merges (candidate sorts) of this row, for reports
    tl.store(stats_ptr + i_b * 4 + 3, n_cut.to(tl.float32))

    # the exact HF rule on the candidate prefix (sorted by s descending, equal s by index descending)
    # complete: the buffer holds every near token of the row: no split cut its buffer and the merges, which keep
    # the top KEEP of the union, dropped none (sum of the near splits' counts, an upper bound, <= KEEP)
    n_union = tl.sum(tl.where(m_near_s, v_n, 0), axis=0)
    complete = ((flags & FLAG_CUT) == 0) & (n_union <= KEEP)
    m_c = (b_cand != INT64_MIN) & (gathered | (b_cand >= cut_key))
    n_c = tl.sum(m_c.to(tl.int32), axis=0)
    b_s = tl.where(m_c, _key_to_float((b_cand >> 32).to(tl.int32)), float("-inf"))
    b_idx = b_cand & 0xFFFFFFFF
    kth = tl.max(tl.where(o_keep == top_k - 1, b_s, float("-inf")), axis=0)
    last = tl.min(tl.where(m_c, b_s, float("inf")), axis=0)
    k_ok = gathered | complete | ((top_k <= n_c) & (last < kth))
    m_surv = m_c & (b_s >= tl.where(use_k, kth, float("-inf")))
    b_e = tl.where(m_surv, tl.exp(b_s - m_run), 0.0)
    z_k = tl.where(use_k, tl.sum(b_e, axis=0), z_run)
    b_prob = b_e / z_k
    b_cum = tl.cumsum(b_prob, axis=0)
    p_eff = tl.where(top_p >= 1.0, float("inf"), top_p * TOP_P_SCALE)  # p = 1 keeps every survivor
    m_keep = m_surv & (((b_cum - b_prob) < p_eff) | (o_keep == 0))
    p_ok = complete | use_k | (top_p >= 1.0) | (tl.sum(b_prob, axis=0) >= top_p)
    if HAS_MIN_P:
        # MinPLogitsWarper after top-p (the top token: s - m = 0 >= t). A min-p-only row's prefix holds every
        # kept token if it is complete or its last value is below the threshold (rounding is monotone).
        m_keep = m_keep & ((b_s - m_run) >= min_thr)
        p_ok = p_ok & (complete | use_k | (top_p < 1.0) | ((last - m_run) < min_thr))
    b_g = tl.where(m_keep, b_s + _gumbel(seed, position, b_idx), float("-inf"))
    best = tl.max(b_g, axis=0)
    c_idx = tl.min(tl.where(m_keep & (b_g == best), b_idx, INT64_MAX), axis=0)
    token = tl.where(use_k, tl.where(k_ok, c_idx, NEEDS_FALLBACK), tl.where(p_ok, c_idx, NEEDS_FALLBACK))

    no_top_k = (top_k == 0) | (top_k >= vocab)
    token = tl.where(no_top_k & (top_p >= 1.0) & (min_thr == float("-inf")), u_idx, token)
    temperature = tl.load(temperature_ptr + i_b)
    # T so small that max(z) / T overflows float32: decided as greedy (the T -> 0 limit, status.py)
    overflow = (temperature > 0.0) & (tl.abs(g_val / temperature) == float("inf"))
    token = tl.where((temperature == 0.0) | overflow, g_idx, token)
    out = tl.where((flags & FLAG_NAN) != 0, ERR_NAN,
                   tl.where(((flags & FLAG_PINF) != 0) | ((flags & FLAG_FINITE) == 0), ERR_NO_FINITE, token))
    param = _param_status(position, temperature, top_k, top_p, min_p)
    out = tl.where(param != 0, param, out)
    tl.store(out_ptr + i_b, out)


@triton.jit
def _fallback_kernel(
    logits_ptr, stride_b, bias_ptr, n_bias_rows, positions_ptr, temperature_ptr, top_k_ptr, top_p_ptr, seed_ptr,
    min_p_ptr, strength, vocab, stats_ptr, out_ptr, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr,
    HAS_MIN_P: tl.constexpr,
):
    """Exact radix selection for the rows kernel 2 could not decide (flat rows, large k); others exit at once.
    Probes 16 values of the next 4 bits per pass: k-th value in 8 passes over the 32-bit order key, the top-p
    boundary in 16 passes over the 64-bit packed key (unsigned, biased by 2**63 so that it cannot overflow)."""
    i_b = tl.program_id(0)
    if tl.load(out_ptr + i_b) == NEEDS_FALLBACK:
        position, temperature, top_k, top_p, seed, _min_p, min_thr = _row_params(
            i_b, positions_ptr, temperature_ptr, top_k_ptr, top_p_ptr, seed_ptr, min_p_ptr, HAS_MIN_P)
        m_run = tl.load(stats_ptr + i_b * 4 + 0)
        z_run = tl.load(stats_ptr + i_b * 4 + 1)
        bias_end = tl.where(position < n_bias_rows, vocab, 0)
        p_logits = logits_ptr + i_b.to(tl.int64) * stride_b
        p_bias = bias_ptr + tl.minimum(position, tl.maximum(n_bias_rows - 1, 0)) * vocab
        o_blk = tl.arange(0, BLOCK)
        o_j = tl.arange(0, 16).to(tl.int64)
        use_k = (top_k > 0) & (top_k < vocab)

        # k-th largest s: the largest key t with count(key >= t) >= k
        kth_key = tl.zeros((), tl.int64) - 2147483648
        if use_k:
            for i_pass in range(8):
                shift = tl.full((), 28, tl.int64) - 4 * i_pass
                b_probe = kth_key + (o_j << shift)
                b_count = tl.zeros((16,), tl.int64)
                for v0 in range(0, vocab, BLOCK):
                    o_v, m_v, b_s = _scaled_tile(p_logits, p_bias, v0 + o_blk, vocab, bias_end, strength, temperature,
                                                 HAS_BIAS)
                    b_key = _order_key(b_s).to(tl.int64)
                    b_hit = m_v[:, None] & (b_key[:, None] >= b_probe[None, :])
                    b_count += tl.sum(b_hit.to(tl.int64), axis=0)
                kth_key += tl.max(tl.where(b_count >= top_k, o_j, 0), axis=0) << shift
        # Z_k: the softmax denominator over the top-k survivors
        z_k = z_run
        if use_k:
            b_acc = tl.zeros((BLOCK,), tl.float32)
            for v0 in range(0, vocab, BLOCK):
                o_v, m_v, b_s = _scaled_tile(p_logits, p_bias, v0 + o_blk, vocab, bias_end, strength, temperature,
                                             HAS_BIAS)
                m_surv = m_v & (_order_key(b_s).to(tl.int64) >= kth_key)
                b_acc += tl.where(m_surv, tl.exp(b_s - m_run), 0.0)
            z_k = tl.sum(b_acc, axis=0)
        # top-p: the largest packed key x with mass(packed >= x) >= p * TOP_P_SCALE * Z_k is the last kept token
        x_keep = tl.zeros((), tl.uint64)
        if top_p < 1.0:
            target = (top_p * TOP_P_SCALE) * z_k
            for i_pass in range(16):
                shift = (tl.full((), 60, tl.int64) - 4 * i_pass).to(tl.uint64)
                b_probe = x_keep + (o_j.to(tl.uint64) << shift)
                b_mass = tl.zeros((16,), tl.float32)
                for v0 in range(0, vocab, BLOCK):
                    o_v, m_v, b_s = _scaled_tile(p_logits, p_bias, v0 + o_blk, vocab, bias_end, strength, temperature,
                                                 HAS_BIAS)
                    b_key = _order_key(b_s).to(tl.int64)
                    b_e = tl.where(m_v & (b_key >= kth_key), tl.exp(b_s - m_run), 0.0)
                    b_packed = ((b_key + 2147483648).to(tl.uint64) << 32) | o_v.to(tl.uint64)
                    b_hit = b_packed[:, None] >= b_probe[None, :]
                    b_mass += tl.sum(tl.where(b_hit, b_e[:, None], 0.0), axis=0)
                x_keep += tl.max(tl.where(b_mass >= target, o_j, 0), axis=0).to(tl.uint64) << shift
        # Gumbel-max over the kept tokens
        best = float("-inf")
        token = tl.zeros((), tl.int64) + vocab
        for v0 in range(0, vocab, BLOCK):
            o_v, m_v, b_s = _scaled_tile(p_logits, p_bias, v0 + o_blk, vocab, bias_end, strength, temperature,
                                         HAS_BIAS)
            b_key = _order_key(b_s).to(tl.int64)
            b_packed = ((b_key + 2147483648).to(tl.uint64) << 32) | o_v.to(tl.uint64)
            m_keep = m_v & (b_key >= kth_key) & (b_packed >= x_keep)
            if HAS_MIN_P:
                m_keep = m_keep & ((b_s - m_run) >= min_thr)
            b_g = tl.where(m_keep, b_s + _gumbel(seed, position, o_v), float("-inf"))
            t_best = tl.max(b_g, axis=0)
            if t_best > best:
                best = t_best
                token = tl.min(tl.where(m_keep & (b_g == t_best), o_v, 2147483647), axis=0).to(tl.int64)
        tl.store(out_ptr + i_b, token)


# --- launcher -------------------------------------------------------------------------------------------------

MAX_SPLITS = 64
# Register cap of the streaming kernel: 128 x 128 threads -> 4 CTAs per SM, the occupancy split_vocab sizes one wave
# with (triton_launch.CTAS_PER_SM). Uncapped, sm_90 allocates 148 (3 CTAs/SM: a second wave at B >= 64); capped,
# compile_check shows no spills.
MAXNREG_STREAM = 128


def plan(batch: int, vocab: int, device_type: str = "cuda", n_sm: int = 132, block=None, keep=None, splits=None):
    """Launch plan for a [batch, vocab] call: tile BLOCK, candidates KEEP, splits S, chunk per split, warps.
    Splits fill one wave of 4 programs per SM (triton_launch.split_vocab) (bytes in flight: one BLOCK tile per
    program at a time), with at least 4 tiles per program, at most MAX_SPLITS (kernel 2 merges the S partials as
    one vector). Warps, from compile_check (no spills on sm_90 / sm_80, fewest registers): stream kernel 4 (KEEP +
    BLOCK = 1024 int64 keys while it cuts its buffer: capped at 128 registers), finish kernel 4 (sorts 2 * KEEP
    keys: 124 on sm_90; 8 warps spill on sm_80), fallback kernel 4 with 512-wide tiles ([512, 16] probe compares;
    8-byte bf16 loads; 8 warps spill 16 bytes on sm_80 with Triton 3.6's ptxas)."""
    interp = device_type != "cuda"
    block = block or (256 if interp else 512)
    keep = keep or block
    splits, chunk = split_vocab(batch, vocab, block, n_sm, MAX_SPLITS, interp=interp, splits=splits)
    return {"block": block, "keep": keep, "splits": splits, "chunk": chunk,
            "block_fallback": 512, "warps_stream": 8 if block + keep > 1024 else 4, "warps_finish": 4,
            "warps_fallback": 4, "maxnreg_stream": MAXNREG_STREAM, "top_j": min(TOP_J_MAX, keep // 2)}


def debias_sample(logits, bias, positions, temperature, top_k, top_p, seed, strength=1.0, min_p=None, *,
                  block=None, keep=None, splits=None, report=None):
    """Launcher of torch.ops.tsdi.debias_sample on CUDA (and on CPU tensors under TRITON_INTERPRET=1).
    No validation (op.py does it), no host synchronisation. Returns int64 [B] tokens or negative codes.
    block / keep / splits override the tile size, candidate count and vocabulary splits (tests). `report`, a
    dict, receives per-row diagnostics for tests and benchmarks: "merges" (int64 [B], candidate sorts of kernel 2),
    "cuts" (int64 [B], candidate-buffer cuts that dropped keys, summed over the row's splits) and "fallback"
    (bool [B], rows kernel 3 solved). min_p: float32 [B] or None (min-p off: the kernels compile without it)."""
    batch, vocab = logits.shape
    device = logits.device
    interp = device.type != "cuda"
    out = torch.empty(batch, dtype=torch.int64, device=device)
    if batch == 0:
        return out
    cfg = plan(batch, vocab, device.type, sm_count(device), block, keep, splits)
    block, keep, splits, chunk = cfg["block"], cfg["keep"], cfg["splits"], cfg["chunk"]
    has_bias = bias is not None and bias.shape[0] > 0
    bias_arg = bias if has_bias else logits
    n_bias_rows = bias.shape[0] if has_bias else 0
    part_f = torch.empty(batch * splits * 4, dtype=torch.float32, device=device)
    part_i = torch.empty(batch * splits * PART_I.value, dtype=torch.int64, device=device)
    cand = torch.empty(batch * splits * (keep + block), dtype=torch.int64, device=device)
    gather = torch.empty(batch * keep, dtype=torch.int64, device=device)
    stats = torch.empty(batch * 4, dtype=torch.float32, device=device)  # m_run, z_run, merges, cuts per row
    strength = float(strength)
    has_min_p = min_p is not None
    min_p_arg = min_p if has_min_p else temperature  # a float32 [B] placeholder the kernels never read
    with on_device(device):  # Triton launches on the current device: make it the tensors' one
        _stream_kernel[(batch, splits)](
            logits, logits.stride(0), bias_arg, n_bias_rows, positions, temperature, top_k, top_p, seed, min_p_arg,
            strength, vocab, chunk, part_f, part_i, cand, HAS_BIAS=has_bias, BLOCK=block, KEEP=keep,
            TOP_J=cfg["top_j"], HAS_MIN_P=has_min_p, num_warps=cfg["warps_stream"],
            **({} if interp else {"maxnreg": cfg["maxnreg_stream"]}))
        _finish_kernel[(batch,)](
            positions, temperature, top_k, top_p, seed, min_p_arg, vocab, splits, part_f, part_i, cand, gather, out,
            stats, KEEP=keep, BLOCK=block, MAX_SPLITS=MAX_SPLITS, TOP_J=cfg["top_j"], HAS_MIN_P=has_min_p,
            num_warps=cfg["warps_finish"])
        fallback_rows = (out == NEEDS_FALLBACK.value) if report is not None else None
        _fallback_kernel[(batch,)](
            logits, logits.stride(0), bias_arg, n_bias_rows, positions, temperature, top_k, top_p, seed, min_p_arg,
            strength, vocab, stats, out, HAS_BIAS=has_bias, BLOCK=cfg["block_fallback"], HAS_MIN_P=has_min_p,
            num_warps=cfg["warps_fallback"])
    if report is not None:
        report["merges"] = stats.view(batch, 4)[:, 2].to(torch.int64)
        report["cuts"] = stats.view(batch, 4)[:, 3].to(torch.int64)
        report["fallback"] = fallback_rows
    return out

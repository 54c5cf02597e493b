"""Running mean / M2 of d = log_softmax(aligned) - log_softmax(reference) over random prompts (Triton).

Semantics are reference.logit_mean_update; per position t with n_b counted rows of this batch:
    mean_b, M2_b  (Welford over b, fixed order b = 0 .. B-1),  n = n_a + n_b,  delta = mean_b - mean_a
    mean <- mean_a + delta * (n_b / n),  M2 <- M2_a + (M2_b + delta^2 * (n_a * n_b / n)),  count <- n

Three launches (four with row groups), no host synchronisation, no float atomics (the result is bitwise deterministic):
  1. `_row_stats_kernel`, grid (B * L, S1): program (row, j) streams chunk j of a counted (b, t) row of `aligned`
     (and `reference`) once: online max m and sum of exp(x - m) per chunk (S1 > 1 only when B * L rows alone
     would leave SMs idle; the merge kernel combines a row's S1 partials with one vector load, fixed order, and
     uses log_softmax(x) = (x - m) - log(sum) as torch computes it), and whether the row has a non-finite
     input. A bad row writes its flat index b * L + t
     with an integer atomic_min into one error slot: the minimum is order-independent, so the FIRST bad row
     (smallest (b, t), as the reference reports) wins deterministically.
  2. `_merge_kernel`, grid (L, V / BLOCK_V, G): tile over V, loop over the rows of group g inside the program
     (Welford in fp32 registers), then the Chan merge into mean / m2. It reads the error slot first and leaves
     the statistics untouched when any counted row was bad. With G > 1 groups (small L, large B: plan_groups),
     the groups run in parallel into scratch and `_combine_kernel`, grid (L, V / BLOCK_V), Chan-merges them in
     the fixed order g = 0 .. G-1 before the merge into mean / m2 (deterministic, no atomics).
  3. `_count_kernel`, grid (1,): count[t] += n_b[t] (after 2, which reads the old count) and the (b, t) result.

Bytes moved: normalize=True needs the row logsumexp before any element of d exists, so each input is read
twice (stage 1 for the logsumexp, stage 2 for d): 2 * B * L * V * elem * (2 with reference) + 16 * L * V
(mean, m2 read and written). Stage 1 is needed for normalize=False too (the error check must finish before
any statistic is written, since they must stay untouched on error); there it reads each input once more.
A single read would need a [B, L, V] temporary of d, or holding the batch's partial statistics of d minus an
unknown per-row constant, which does not decompose (the cross term sum_b x[b, v] * lse[b] needs lse first).
Example: B=8, L=32, V=128256, bf16, with reference: 2 * 131 MB inputs + 33 MB statistics.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..triton_launch import CTAS_PER_SM, on_device, sm_count, split_vocab

NO_ERROR = tl.constexpr(2**63 - 1)


@triton.jit
def _online_lse_tile(b_x, m_v, m_run, v_sum):
    """One tile of an online logsumexp: scalar running max, per-lane sums (one block reduction per tile)."""
    t_max = tl.max(tl.where(m_v, b_x, float("-inf")), axis=0)
    m_new = tl.maximum(m_run, t_max)
    if m_new > float("-inf"):
        v_sum = v_sum * tl.exp(m_run - m_new) + tl.where(m_v, tl.exp(b_x - m_new), 0.0)
        m_run = m_new
    return m_run, v_sum


@triton.jit
def _row_stats_kernel(
    aligned_ptr, reference_ptr, mask_ptr, part_ptr, err_ptr, vocab, chunk,
    HAS_REF: tl.constexpr, HAS_MASK: tl.constexpr, NORMALIZE: tl.constexpr, BLOCK: tl.constexpr,
):
    """Program (row, j): chunk j of row b * L + t. Writes (max, sum of exp(x - max)) of aligned and reference
    for the chunk to part[row, j]; the merge kernel combines a row's chunks (S1 <= MAX_S1 of them)."""
    i_row = tl.program_id(0)  # flat b * L + t
    i_c = tl.program_id(1)
    n_c = tl.num_programs(1)
    counted = True
    if HAS_MASK:
        counted = tl.load(mask_ptr + i_row) != 0
    if counted:
        o_blk = tl.arange(0, BLOCK)
        p_a = aligned_ptr + i_row.to(tl.int64) * vocab
        p_r = reference_ptr + i_row.to(tl.int64) * vocab
        m_a = float("-inf")
        m_r = float("-inf")
        v_sa = tl.zeros((BLOCK,), tl.float32)
        v_sr = tl.zeros((BLOCK,), tl.float32)
        v_bad = tl.zeros((BLOCK,), tl.int32)
        start = i_c * chunk
        end = tl.minimum(start + chunk, vocab)
        for v0 in range(start, end, BLOCK):
            o_v = v0 + o_blk
            m_v = o_v < end
            b_a = tl.load(p_a + o_v, mask=m_v, other=0.0).to(tl.float32)
            v_bad = v_bad | (m_v & ~(tl.abs(b_a) < float("inf"))).to(tl.int32)
            if NORMALIZE:
                m_a, v_sa = _online_lse_tile(b_a, m_v, m_a, v_sa)
            if HAS_REF:
                b_r = tl.load(p_r + o_v, mask=m_v, other=0.0).to(tl.float32)
                v_bad = v_bad | (m_v & ~(tl.abs(b_r) < float("inf"))).to(tl.int32)
                if NORMALIZE:
                    m_r, v_sr = _online_lse_tile(b_r, m_v, m_r, v_sr)
        if NORMALIZE:
            o_part = (i_row * n_c + i_c) * 4
            tl.store(part_ptr + o_part + 0, m_a)
            tl.store(part_ptr + o_part + 1, tl.sum(v_sa, axis=0))
            tl.store(part_ptr + o_part + 2, m_r)
            tl.store(part_ptr + o_part + 3, tl.sum(v_sr, axis=0))
        if tl.max(v_bad, axis=0) != 0:
            tl.atomic_min(err_ptr, i_row.to(tl.int64))


@triton.jit
def _row_lse(part_ptr, i_row, n_c, which: tl.constexpr, MAX_S1: tl.constexpr):
    """(max, log sum exp(x - max)) of a row from its n_c chunk partials (fixed order: deterministic)."""
    o_c = tl.arange(0, MAX_S1)
    m_c = o_c < n_c
    o_part = (i_row * n_c + o_c) * 4 + which
    v_m = tl.load(part_ptr + o_part, mask=m_c, other=float("-inf"))
    v_s = tl.load(part_ptr + o_part + 1, mask=m_c, other=0.0)
    m = tl.max(v_m, axis=0)
    total = tl.sum(tl.where(v_m > float("-inf"), v_s * tl.exp(v_m - m), 0.0), axis=0)
    return m, tl.log(total)


@triton.jit
def _merge_kernel(
    mean_ptr, m2_ptr, count_ptr, aligned_ptr, reference_ptr, mask_ptr, part_ptr, err_ptr, group_ptr, batch, length,
    vocab, n_chunks, group_rows, HAS_REF: tl.constexpr, HAS_MASK: tl.constexpr, NORMALIZE: tl.constexpr,
    BLOCK_V: tl.constexpr, MAX_S1: tl.constexpr, GROUPED: tl.constexpr,
):
    """Program (t, v tile, g): Welford over the rows b of group g (b in [g * group_rows, (g + 1) * group_rows)),
    fp32 in registers. One group (GROUPED=False): Chan-merged into mean / m2 here. Several groups: the group's
    (n, mean, M2) go to scratch and _combine_kernel merges the groups in order g = 0, 1, ... (deterministic)."""
    i_t = tl.program_id(0)
    i_v = tl.program_id(1)
    i_g = tl.program_id(2)
    if tl.load(err_ptr) == NO_ERROR:
        o_v = i_v * BLOCK_V + tl.arange(0, BLOCK_V)
        m_v = o_v < vocab
        n_b = 0.0
        b_mean = tl.zeros((BLOCK_V,), tl.float32)
        b_m2 = tl.zeros((BLOCK_V,), tl.float32)
        b_lo = i_g * group_rows
        for i_b in range(b_lo, tl.minimum(b_lo + group_rows, batch)):
            i_row = i_b * length + i_t
            counted = True
            if HAS_MASK:
                counted = tl.load(mask_ptr + i_row) != 0
            if counted:
                o_row = i_row.to(tl.int64) * vocab
                b_d = tl.load(aligned_ptr + o_row + o_v, mask=m_v, other=0.0).to(tl.float32)
                if NORMALIZE:
                    m_a, log_a = _row_lse(part_ptr, i_row, n_chunks, 0, MAX_S1)
                    b_d = (b_d - m_a) - log_a
                if HAS_REF:
                    b_r = tl.load(reference_ptr + o_row + o_v, mask=m_v, other=0.0).to(tl.float32)
                    if NORMALIZE:
                        m_r, log_r = _row_lse(part_ptr, i_row, n_chunks, 2, MAX_S1)
                        b_r = (b_r - m_r) - log_r
                    b_d = b_d - b_r
                # Welford: mean_n = mean + (d - mean) / n, M2_n = M2 + (d - mean) * (d - mean_n)
                n_b += 1.0
                b_delta = b_d - b_mean
                b_mean += b_delta / n_b
                b_m2 += b_delta * (b_d - b_mean)
        if GROUPED:
            # scratch layout [G, L, 2, V] floats + [G, L] counts (written by the first v tile)
            o_g = ((i_g * length + i_t) * 2).to(tl.int64) * vocab + o_v
            tl.store(group_ptr + o_g, b_mean, mask=m_v)
            tl.store(group_ptr + o_g + vocab, b_m2, mask=m_v)
            if i_v == 0:
                n_ptr = group_ptr + (tl.num_programs(2) * length * 2).to(tl.int64) * vocab
                tl.store(n_ptr + i_g * length + i_t, n_b)
        elif n_b > 0.0:
            _chan_store(mean_ptr, m2_ptr, count_ptr, i_t, i_v, vocab, n_b, b_mean, b_m2, BLOCK_V)


@triton.jit
def _chan_store(mean_ptr, m2_ptr, count_ptr, i_t, i_v, vocab, n_b, b_mean, b_m2, BLOCK_V: tl.constexpr):
    """Chan's merge of a batch's (n_b, mean_b, M2_b) into the running statistics of position t (old count)."""
    # The tile's offsets are recomputed here, not kept live across the caller's row loop: with fp16 inputs the
    # statistics use another register layout than the loads, and ptxas 12.8 (Triton 3.6) spilled those offsets
    # (8 bytes, compile_check). tl.multiple_of makes them a new value that the compiler does not merge with o_v.
    o_v = tl.multiple_of(i_v * BLOCK_V, BLOCK_V) + tl.arange(0, BLOCK_V)
    m_v = o_v < vocab
    n_a = tl.load(count_ptr + i_t).to(tl.float32)
    n = n_a + n_b
    o_stat = i_t.to(tl.int64) * vocab + o_v
    b_mean_a = tl.load(mean_ptr + o_stat, mask=m_v, other=0.0)
    b_m2_a = tl.load(m2_ptr + o_stat, mask=m_v, other=0.0)
    b_delta = b_mean - b_mean_a
    tl.store(mean_ptr + o_stat, b_mean_a + b_delta * (n_b / n), mask=m_v)
    tl.store(m2_ptr + o_stat, b_m2_a + (b_m2 + b_delta * b_delta * (n_a * n_b / n)), mask=m_v)


@triton.jit
def _combine_kernel(mean_ptr, m2_ptr, count_ptr, err_ptr, group_ptr, length, vocab, n_groups,
                    BLOCK_V: tl.constexpr):
    """Program (t, v tile): Chan-merges the groups' partial statistics in order g = 0 .. G-1 (fixed order:
    deterministic), then merges the batch into mean / m2 as the one-group path does."""
    i_t = tl.program_id(0)
    i_v = tl.program_id(1)
    if tl.load(err_ptr) == NO_ERROR:
        o_v = i_v * BLOCK_V + tl.arange(0, BLOCK_V)
        m_v = o_v < vocab
        n_ptr = group_ptr + (n_groups * length * 2).to(tl.int64) * vocab
        n_b = 0.0
        b_mean = tl.zeros((BLOCK_V,), tl.float32)
        b_m2 = tl.zeros((BLOCK_V,), tl.float32)
        for i_g in range(0, n_groups):
            n_g = tl.load(n_ptr + i_g * length + i_t)
            if n_g > 0.0:
                o_g = ((i_g * length + i_t) * 2).to(tl.int64) * vocab + o_v
                b_mean_g = tl.load(group_ptr + o_g, mask=m_v, other=0.0)
                b_m2_g = tl.load(group_ptr + o_g + vocab, mask=m_v, other=0.0)
                n = n_b + n_g
                b_delta = b_mean_g - b_mean
                b_mean += b_delta * (n_g / n)
                b_m2 += b_m2_g + b_delta * b_delta * (n_b * n_g / n)
                n_b = n
        if n_b > 0.0:
            _chan_store(mean_ptr, m2_ptr, count_ptr, i_t, i_v, vocab, n_b, b_mean, b_m2, BLOCK_V)


@triton.jit
def _count_kernel(count_ptr, mask_ptr, err_ptr, where_ptr, batch, length, HAS_MASK: tl.constexpr,
                  BLOCK_L: tl.constexpr):
    err = tl.load(err_ptr)
    ok = err == NO_ERROR
    tl.store(where_ptr + 0, tl.where(ok, -1, err // length))
    tl.store(where_ptr + 1, tl.where(ok, -1, err % length))
    if ok:
        for t0 in range(0, length, BLOCK_L):
            o_t = t0 + tl.arange(0, BLOCK_L)
            m_t = o_t < length
            b_n = tl.zeros((BLOCK_L,), tl.int64)
            for i_b in range(0, batch):
                if HAS_MASK:
                    b_n += tl.load(mask_ptr + i_b * length + o_t, mask=m_t, other=0).to(tl.int64)
                else:
                    b_n += 1
            b_count = tl.load(count_ptr + o_t, mask=m_t, other=0)
            tl.store(count_ptr + o_t, b_count + b_n, mask=m_t)


MAX_S1 = 32


def plan_groups(batch: int, length: int, vocab: int, block: int, n_sm: int, *, interp: bool, groups=None) -> int:
    """Row groups of the merge stage: the merge runs L * ceil(V / block) programs, each looping over its rows;
    when that leaves SMs idle (small L) and B is large, the rows are split into G groups (at least 4 rows each)
    merged in parallel, then combined in a fixed order: G = min(one wave / programs, B / 4). Scratch: G * L * V * 8
    bytes (G > 1 only when L * V / block is small, e.g. 4 MB at G = 4, L = 1, V = 128256)."""
    if groups is None:
        programs = length * triton.cdiv(vocab, block)
        groups = 1 if interp else max(1, min((CTAS_PER_SM * n_sm) // programs, batch // 4))
    return max(1, min(groups, batch))


def logit_mean_update(mean, m2, count, aligned, reference, mask, normalize=True, *, block=None, splits=None,
                      groups=None, progress=None):
    """Launcher of torch.ops.tsdi.logit_mean_update on CUDA (and CPU tensors under TRITON_INTERPRET=1).
    No validation (op.py does it); inputs contiguous. Returns int64 [2] on the device: (b, t) of the first
    counted non-finite row, or (-1, -1); statistics untouched in that case. No host synchronisation.
    Stage 1 splits each row into `splits` chunks when B * L rows alone would leave SMs idle
    (one wave of 4 programs per SM, triton_launch.split_vocab). `progress`, a dict, receives
    "statistics_written": True once a launched kernel has written mean / m2 (a failure after that point cannot
    be undone by re-running the update elsewhere: kernels/fallback.py)."""
    batch, length, vocab = aligned.shape
    device = aligned.device
    where = torch.full((2,), -1, dtype=torch.int64, device=device)
    if batch == 0 or length == 0:
        return where
    interp = device.type != "cuda"
    block = block or (256 if interp else 1024)
    splits, chunk = split_vocab(batch * length, vocab, block, sm_count(device), MAX_S1, interp=interp,
                                splits=splits)
    has_ref = reference is not None
    has_mask = mask is not None
    ref_arg = reference if has_ref else aligned
    mask_arg = mask.view(torch.uint8) if has_mask else count
    part = torch.empty(batch * length * splits * 4, dtype=torch.float32, device=device)
    err = torch.full((1,), 2**63 - 1, dtype=torch.int64, device=device)
    num_warps = 4 if block <= 1024 else 8
    groups = plan_groups(batch, length, vocab, block, sm_count(device), interp=interp, groups=groups)
    group_rows = triton.cdiv(batch, groups)
    groups = triton.cdiv(batch, group_rows)
    scratch = torch.empty(groups * length * (2 * vocab + 1) if groups > 1 else 1, dtype=torch.float32,
                          device=device)
    n_v = triton.cdiv(vocab, block)
    with on_device(device):  # Triton launches on the current device: make it the tensors' one
        _row_stats_kernel[(batch * length, splits)](
            aligned, ref_arg, mask_arg, part, err, vocab, chunk,
            HAS_REF=has_ref, HAS_MASK=has_mask, NORMALIZE=bool(normalize), BLOCK=block, num_warps=num_warps)
        _merge_kernel[(length, n_v, groups)](
            mean, m2, count, aligned, ref_arg, mask_arg, part, err, scratch, batch, length, vocab, splits,
            group_rows, HAS_REF=has_ref, HAS_MASK=has_mask, NORMALIZE=bool(normalize), BLOCK_V=block,
            MAX_S1=MAX_S1, GROUPED=groups > 1, num_warps=num_warps)
        if progress is not None:
            progress["statistics_written"] = groups == 1  # the merge wrote mean / m2 (grouped: only scratch)
        if groups > 1:
            _combine_kernel[(length, n_v)](mean, m2, count, err, scratch, length, vocab, groups, BLOCK_V=block,
                                           num_warps=num_warps)
            if progress is not None:
                progress["statistics_written"] = True
        _count_kernel[(1,)](count, mask_arg, err, where, batch, length, HAS_MASK=has_mask, BLOCK_L=128)
    return where

"""tsdi::logit_mean_update: the running statistics (mean, M2, count) against float64 NumPy after any split of the
batches, every kernel's statistics untouched on a counted non-finite row (and the row named), determinism, thread
independence; through torch.ops (BiasTable) on every op backend; BiasTable.merge and stderr."""
import re

import numpy as np
import pytest
import torch

import tsdi_kernels
from kernel_testing import (
    DTYPES,
    REFERENCE,
    assert_stats_close,
    assert_untouched_on_error,
    assert_update_deterministic,
    float64_stats,
    random_state,
    zero_state,
)


def _inputs(batch, length, vocab, *, seed, scale, dtype=torch.float32, ref=True, counted=None, offset=0.0,
            ref_scale=None, ref_dtype=None):
    """(aligned, reference or None, mask or None): randn * scale (+ offset); each (b, t) counted with
    probability `counted` (None: no mask)."""
    g = torch.Generator().manual_seed(seed)
    aligned = (torch.randn(batch, length, vocab, generator=g) * scale + offset).to(dtype)
    reference_ = None
    if ref:
        reference_ = (torch.randn(batch, length, vocab, generator=g) * (ref_scale or scale)).to(ref_dtype or dtype)
    mask = None if counted is None else torch.rand(batch, length, generator=g) < counted
    return aligned, reference_, mask


# --- through torch.ops, on every op backend --------------------------------------------------------------------


@pytest.mark.parametrize("normalize", [True, False], ids=["logprob", "raw"])
@pytest.mark.parametrize("with_reference", [True, False], ids=["ref", "noref"])
@pytest.mark.parametrize("with_mask", [True, False], ids=["mask", "nomask"])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"], ids=str)
def test_matches_float64_over_batch_splits(op_backend, normalize, with_reference, with_mask, dtype):
    B, L, V = 23, 5, 333
    aligned, reference_, mask = _inputs(B, L, V, seed=7, scale=2, offset=0.5, dtype=DTYPES[dtype],
                                        ref=with_reference, counted=0.7 if with_mask else None)
    want = float64_stats(aligned, reference_, mask, normalize)
    for splits in ([B], [1] * 3 + [B - 3], [7, 7, 9], [11, 12]):
        table = tsdi_kernels.BiasTable.empty(L, V, normalize=normalize, device=op_backend.device)
        start = 0
        for n in splits:
            sl = slice(start, start + n)
            table.update(*op_backend.to(aligned[sl], None if reference_ is None else reference_[sl],
                                        None if mask is None else mask[sl]))
            start += n
        # fp32 accumulation of values of magnitude <= ~15 over <= 23 rows: the error of mean is a few ulp of 15
        # (~1e-5 absolute); M2 sums squares up to ~23 * 100, so a relative bound of 1e-5 applies there.
        assert_stats_close([table.mean, table.m2, table.count], want, mean_tol=(2e-5, 1e-5), m2_tol=(1e-3, 1e-4))


def test_op_rejects_non_finite_and_keeps_state(op_backend):
    table = tsdi_kernels.BiasTable.empty(3, 50, device=op_backend.device)
    table.update(*op_backend.to(torch.randn(4, 3, 50), torch.randn(4, 3, 50)))
    bad = torch.randn(4, 3, 50)
    bad[2, 1, 7] = float("nan")
    ref = torch.randn(4, 3, 50)
    state = [table.mean, table.m2, table.count]
    err = assert_untouched_on_error(lambda s, *a: table.update(*a), state, *op_backend.to(bad, ref))
    assert isinstance(err, ValueError) and re.search("non-finite.*batch row 2, position 1", str(err)), err
    assert all(a is b for a, b in zip(state, (table.mean, table.m2, table.count)))  # the table's own tensors
    # a non-finite value in a row the mask excludes does not count
    mask = torch.ones(4, 3, dtype=torch.bool)
    mask[2, 1] = False
    table.update(*op_backend.to(bad, ref, mask))
    assert table.count.tolist() == [8, 7, 8]


# --- every kernel -----------------------------------------------------------------------------------------------

# uncounted rows hold NaN: they are never read as data
MEAN_CASES = {
    "B12-L5-V1000-fp32-ref-norm": dict(B=12, L=5, V=1000, dtype="fp32", ref=True, mask=False, normalize=True),
    "B12-L5-V1000-fp32-ref-raw": dict(B=12, L=5, V=1000, dtype="fp32", ref=True, mask=False, normalize=False),
    "B12-L3-V777-bf16-ref-mask": dict(B=12, L=3, V=777, dtype="bf16", ref=True, mask=True, normalize=True),
    "B10-L9-V500-fp32-noref-mask": dict(B=10, L=9, V=500, dtype="fp32", ref=False, mask=True, normalize=True),
    "B10-L2-V20000-fp16-ref-raw": dict(B=10, L=2, V=20000, dtype="fp16", ref=True, mask=True, normalize=False),
}


@pytest.mark.parametrize("splits", [(1,), (4, 8), (3, 3, 3, 3)], ids=lambda s: "split" + "+".join(map(str, s)))
@pytest.mark.parametrize("case", MEAN_CASES.values(), ids=MEAN_CASES.keys())
def test_kernel_matches_float64_over_batch_splits(fast_kernel, case, splits):
    B, L, V = case["B"], case["L"], case["V"]
    aligned, reference_, mask = _inputs(B, L, V, seed=0, scale=4, dtype=DTYPES[case["dtype"]], ref=case["ref"],
                                        counted=0.7 if case["mask"] else None)
    if mask is not None:
        mask[:, 0] = False  # a position that never counts
        aligned[~mask] = float("nan")  # uncounted rows are never read as data
    state = zero_state(L, V)
    bounds = np.cumsum((0,) + tuple(splits))
    bounds = [int(b * B / bounds[-1]) for b in bounds]
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        where = fast_kernel.update(state, aligned[lo:hi].contiguous(),
                                   None if reference_ is None else reference_[lo:hi].contiguous(),
                                   None if mask is None else mask[lo:hi].contiguous(), case["normalize"])
        assert where == [-1, -1]
    assert_stats_close(state, float64_stats(aligned, reference_, mask, case["normalize"]),
                       mean_tol=(2e-5, 1e-5), m2_tol=(1e-3, 1e-4))


def test_chan_merge_over_splits_matches_float64(compiled_kernel):
    """Updates with batches of 2, 3 and 1 rows (Triton: 3 vocabulary splits, 64-wide tiles) equal the float64
    statistics of all 6 rows at once."""
    aligned, ref, mask = _inputs(6, 2, 333, seed=6, scale=4, counted=0.75)
    state = zero_state(2, 333)
    for lo, hi in ((0, 2), (2, 5), (5, 6)):
        assert compiled_kernel.update(state, aligned[lo:hi], ref[lo:hi], mask[lo:hi], True,
                                      **compiled_kernel.launch(block=64, splits=3)) == [-1, -1]
    assert_stats_close(state, float64_stats(aligned, ref, mask, True), mean_tol=(1e-5, 1e-5), m2_tol=(1e-4, 1e-5))


@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "raw"])
@pytest.mark.parametrize("with_ref", [True, False], ids=["ref", "noref"])
@pytest.mark.parametrize("with_mask", [True, False], ids=["mask", "nomask"])
def test_kernel_matches_reference_from_a_nonempty_state(compiled_kernel, normalize, with_ref, with_mask):
    """bf16 aligned, fp32 reference, merged into existing statistics (counts 0..3)."""
    aligned, ref, mask = _inputs(3, 3, 600, seed=5, scale=3, dtype=torch.bfloat16, ref=with_ref,
                                 counted=0.7 if with_mask else None, ref_scale=1, ref_dtype=torch.float32)
    ours = random_state(3, 600, torch.Generator().manual_seed(5))
    theirs = [t.clone() for t in ours]
    assert compiled_kernel.update(ours, aligned, ref, mask, normalize, **compiled_kernel.launch(block=256)) == [-1, -1]
    assert REFERENCE.update(theirs, aligned, ref, mask, normalize) == [-1, -1]
    torch.testing.assert_close(ours[0], theirs[0], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(ours[1], theirs[1], atol=2e-4, rtol=1e-5)
    assert torch.equal(ours[2], theirs[2])


def _non_finite_cases():
    """(aligned, reference, mask, where): the first counted non-finite row in (b, t) order."""
    g = torch.Generator().manual_seed(0)
    B, L, V = 6, 4, 300
    aligned, ref = torch.randn(B, L, V, generator=g), torch.randn(B, L, V, generator=g)
    bad = aligned.clone()
    bad[4, 1, 7] = float("inf")
    bad[2, 3, 0] = float("nan")
    ref_bad = ref.clone()
    ref_bad[2, 2, 5] = float("-inf")
    skip_23 = torch.ones(B, L, dtype=torch.bool)
    skip_23[2, 3] = False
    # -inf in the reference is non-finite in d as well; a bad row that is not counted is ignored
    mixed, mixed_ref = aligned[:3].clone(), ref[:3].clone()
    mixed[2, 0, 5] = float("nan")
    mixed_ref[1, 3, 7] = float("-inf")
    mixed[0, 1, 9] = float("inf")
    skip_01 = torch.ones(3, L, dtype=torch.bool)
    skip_01[0, 1] = False
    return [(bad, ref, None, [2, 3]), (bad, ref_bad, None, [2, 2]), (aligned, ref_bad, None, [2, 2]),
            (bad, ref, skip_23, [4, 1]), (mixed, mixed_ref, skip_01, [1, 3])]


def test_state_untouched_on_non_finite(kernel):
    state = [torch.randn(4, 300), torch.rand(4, 300), torch.full((4,), 3, dtype=torch.int64)]
    update = lambda s, *a: kernel.update(s, *a, True, **kernel.launch(block=128))  # noqa: E731
    for aligned, ref, mask, want in _non_finite_cases():
        assert assert_untouched_on_error(update, state, aligned, ref, mask) == want


def test_update_is_deterministic(kernel):
    """The same update twice gives bitwise the same statistics."""
    aligned, ref, _ = _inputs(3, 4, 300, seed=7, scale=1)
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[0, 1] = False
    assert_update_deterministic(lambda s, *a: kernel.update(s, *a, True, **kernel.launch(block=128)),
                                random_state(4, 300, torch.Generator().manual_seed(7)), aligned, ref, mask)


def test_thread_count_does_not_change_statistics(cpp_kernel, num_threads):
    """L=4 runs the fused path with 1 thread and the (lse first, then V tiles) path with 2: same bits."""
    g = torch.Generator().manual_seed(0)
    aligned, ref = torch.randn(5, 4, 9000, generator=g), torch.randn(5, 4, 9000, generator=g).bfloat16()
    results = []
    for threads in (1, 2):
        num_threads(threads)
        state = zero_state(4, 9000)
        for lo in (0, 2):
            cpp_kernel.update(state, aligned[lo:lo + 3].contiguous(), ref[lo:lo + 3].contiguous(), None, True)
        results.append(state)
    for a, b in zip(*results):
        assert torch.equal(a, b)


# --- BiasTable ---------------------------------------------------------------------------------------------------


def test_bias_table_stderr_and_merge():
    g = torch.Generator().manual_seed(3)
    a, r = torch.randn(40, 2, 30, generator=g), torch.randn(40, 2, 30, generator=g)
    whole = tsdi_kernels.BiasTable.empty(2, 30)
    whole.update(a, r)
    left, right = tsdi_kernels.BiasTable.empty(2, 30), tsdi_kernels.BiasTable.empty(2, 30)
    left.update(a[:15], r[:15])
    right.update(a[15:], r[15:])
    left.merge(right)
    torch.testing.assert_close(left.mean, whole.mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(left.m2, whole.m2, atol=1e-4, rtol=1e-5)
    d = torch.log_softmax(a.double(), -1) - torch.log_softmax(r.double(), -1)
    want = d.std(dim=0) / 40**0.5
    torch.testing.assert_close(whole.stderr.double(), want, atol=1e-5, rtol=1e-4)

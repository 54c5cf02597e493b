"""The Triton accumulator's row groups (parallel over B when L * V / block programs leave SMs idle): any grouping,
merged in fixed order, equals the float64 statistics, is deterministic, and leaves the state untouched on error.
Interpreted on CPU tensors (small shapes), compiled on CUDA."""
import pytest
import torch

from kernel_testing import assert_stats_close, assert_update_deterministic, float64_stats, random_state, zero_state


@pytest.mark.parametrize("groups", [1, 2, 3, 7], ids=lambda g: f"G{g}")
def test_row_groups_match_float64(triton_kernel, groups):
    g = torch.Generator().manual_seed(groups)
    aligned, ref = torch.randn(7, 2, 300, generator=g) * 3, torch.randn(7, 2, 300, generator=g)
    mask = torch.rand(7, 2, generator=g) > 0.3
    state = zero_state(2, 300)
    assert triton_kernel.update(state, aligned, ref, mask, True, **triton_kernel.launch(block=128,
                                                                                        groups=groups)) == [-1, -1]
    assert_stats_close(state, float64_stats(aligned, ref, mask, True), mean_tol=(1e-5, 1e-5), m2_tol=(1e-4, 1e-5))


def test_row_groups_deterministic_and_untouched_on_error(triton_kernel):
    g = torch.Generator().manual_seed(11)
    aligned, ref = torch.randn(6, 2, 200, generator=g), torch.randn(6, 2, 200, generator=g)
    state = random_state(2, 200, g)
    launch = triton_kernel.launch(block=128, groups=3)
    assert_update_deterministic(lambda s, *a: triton_kernel.update(s, *a, True, **launch), state, aligned, ref, None)
    bad = aligned.clone()
    bad[4, 1, 17] = float("nan")
    before = [t.clone() for t in state]
    assert triton_kernel.update(state, bad, ref, None, True, **launch) == [4, 1]
    assert all(torch.equal(a, b) for a, b in zip(before, state))

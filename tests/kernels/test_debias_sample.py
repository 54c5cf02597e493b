"""tsdi::debias_sample: every kernel's tokens against the reference's for the same seeds (exact; Triton up to float
rounding between two candidates) and inside the kept set, status codes, determinism and batch invariance, the
bias rows; through torch.ops on every op backend: greedy ties, -inf, noise keyed by (seed, position), and the
frequencies of many draws against the exact probabilities (tiers 2 and 3: support, frequencies)."""
import pytest
import torch

import tsdi_kernels
from kernel_testing import (
    L_BIAS,
    REFERENCE,
    REFERENCE_CASES,
    assert_tokens_match_reference,
    case_batch,
    kind_case,
    kinds_batch,
    make_bias,
    make_logits,
    mixed_batch,
    random_rows_batch,
    status_batch,
    top_k_beyond_finite_batch,
)

# --- every kernel against the reference -------------------------------------------------------------------------

# The Triton launcher's default configuration, and small tiles / buffers with 3 splits (buffer cuts, split merge,
# the exact fallback at small sizes); the other kernels have no launch configuration.
MIXED = {"fp32-default": (torch.float32, {}), "bf16-small": (torch.bfloat16, dict(block=128, keep=128, splits=3))}


@pytest.mark.parametrize("mixed", MIXED, ids=str)
def test_tokens_match_reference_mixed_batch(compiled_kernel, mixed):
    """Every row type (greedy, ties, top-k, top-p, both, -inf, flat rows, k >= V, cut buffers) with two seeds."""
    dtype, cfg = MIXED[mixed]
    batch = mixed_batch(1000, dtype, seeds_per_row=2)
    got = assert_tokens_match_reference(compiled_kernel, batch, **compiled_kernel.launch(**cfg))
    assert (got >= 0).all(), got


@pytest.mark.parametrize("case", REFERENCE_CASES, ids=str)
def test_tokens_match_reference(fast_kernel, case):
    assert_tokens_match_reference(fast_kernel, REFERENCE_CASES[case]())


def test_top_k_larger_than_finite_tokens_draws_a_finite_token(fast_kernel):
    batch = top_k_beyond_finite_batch()
    tokens = fast_kernel.sample(batch)
    assert torch.isfinite(batch.logits.gather(1, tokens[:, None])).all()


@pytest.mark.parametrize("seed", range(3), ids=lambda s: f"seed{s}")
def test_many_random_rows_agree(fast_kernel, seed):
    """Agreement on 256 random rows of every kind: exactly 100% for the C++ kernels."""
    assert_tokens_match_reference(fast_kernel, random_rows_batch(seed))


def test_status_codes(kernel):
    """Bad rows come back as their status.py code in place of the token, good rows as tokens (strided rows)."""
    batch, codes = status_batch()
    assert batch.logits.stride() == (537, 1)
    got = kernel.sample(batch)
    assert [c if c < 0 else 0 for c in got.tolist()] == codes, list(zip(batch.names, got.tolist(), codes))
    assert got[4] != 5 and got[5] == 123
    assert torch.equal(got, REFERENCE.sample(batch))


def test_deterministic_and_batch_invariant(kernel):
    """A row's token depends on its (logits, parameters, seed, position) only: the batch permuted, a subset and
    (compiled) the same call again and each row alone give the same tokens; for Triton also across vocabulary
    splits (2 for the batch, 1 for the subset and single rows)."""
    # V = 20000: the C++ kernels split a row's vocabulary over threads when the batch is small (single rows)
    batch = mixed_batch({"reference": 2048, "cpp": 20000}.get(kernel.name, 400 if kernel.interpreted else 20000),
                        gen_seed=3)
    full_cfg = kernel.launch(block=64, keep=64, splits=2)
    part_cfg = kernel.launch(block=64, keep=64, splits=1)
    first = kernel.sample(batch, **full_cfg)
    assert (first >= 0).all()
    perm = torch.randperm(batch.rows, generator=torch.Generator().manual_seed(0))
    assert torch.equal(kernel.sample(batch.take(perm), **full_cfg), first[perm])
    assert torch.equal(kernel.sample(batch.take(perm[:5]), **part_cfg), first[perm[:5]])
    if kernel.interpreted:  # ~1 s a call: the subset stands for the rest
        return
    assert torch.equal(first, kernel.sample(batch, **full_cfg))
    for b in range(batch.rows):
        assert kernel.sample(batch.take(slice(b, b + 1)), **part_cfg).item() == first[b].item(), batch.names[b]


def test_bias_applies_at_positions_below_L_only(kernel):
    """A bias row that removes the favourite token is applied at positions < L only."""
    vocab = 256
    logits = torch.zeros(2, vocab)
    logits[:, 10] = 5.0
    bias = torch.zeros(2, vocab)
    bias[1, 10] = 100.0
    batch = case_batch(logits, bias, [(0.0, 0, 1.0, 1), (0.0, 0, 1.0, 2)], seed=torch.zeros(2, dtype=torch.int64))
    got = kernel.sample(batch)
    assert got[0] != 10 and got[1] == 10
    assert torch.equal(got, REFERENCE.sample(batch))


def test_thread_count_does_not_change_tokens(cpp_kernel, num_threads):
    batch = kind_case("B3-V70000-fp32-vsplit")  # the vocabulary-split path
    num_threads(1)
    one = cpp_kernel.sample(batch)
    num_threads(2)
    assert torch.equal(cpp_kernel.sample(batch), one)
    assert torch.equal(cpp_kernel.sample(batch), one)


# --- the Triton launchers ---------------------------------------------------------------------------------------


def test_kept_set_over_many_seeds(triton_kernel):
    """Tokens drawn with many seeds only ever land in the reference's kept set, and the most likely kept token is
    drawn about as often as its probability says (64 draws, 5 sigma)."""
    gen = torch.Generator().manual_seed(2)
    vocab, n = 256, 64
    row = torch.randn(vocab, generator=gen) * 1.5
    batch = case_batch(row.expand(n, vocab).contiguous(), None, [(0.9, 12, 0.85, 3)] * n,
                       seed=torch.arange(n) * 31 + 5)
    got = triton_kernel.sample(batch, block=256, keep=256)
    probs = REFERENCE.probs(batch)[0][0]
    assert set(got.tolist()) <= set(torch.nonzero(probs > 0)[:, 0].tolist())
    assert (got == REFERENCE.sample(batch)).float().mean() >= 0.99
    top = int(probs.argmax())
    freq = (got == top).float().mean().item()
    sigma = (probs[top] * (1 - probs[top]) / n).sqrt().item()
    assert abs(freq - probs[top].item()) < 5 * sigma + 1e-3


def test_many_splits_agree_with_one(triton_kernel):
    """12 vocabulary splits (only splits near the row max contribute candidates to the merge): the reference's
    tokens."""
    batch = mixed_batch(900, gen_seed=8)
    pick = torch.tensor([i for i, n in enumerate(batch.names)
                         if n in ("topp", "topk-topp", "cut-topp", "masked", "plain", "greedy")])
    sub = batch.take(pick)
    assert torch.equal(triton_kernel.sample(sub, block=64, keep=64, splits=12),
                       REFERENCE.sample(sub))


# --- torch.ops.tsdi.debias_sample on every op backend ----------------------------------------------------------


def test_op_matches_reference(op_backend):
    batch = kinds_batch(16, 1000, bias_rows=L_BIAS)
    got = torch.ops.tsdi.debias_sample(*op_backend.to(*batch.sample_args())).cpu()
    mismatches = int((got != REFERENCE.sample(batch)).sum())
    # CUDA (Triton): identical up to float rounding between two candidates (docs/semantics.md), so one row
    assert mismatches <= (0 if op_backend.device == "cpu" else 1), (op_backend.name, mismatches)


def test_greedy_ties_lowest_index(op_backend):
    logits = torch.zeros(2, 64)
    logits[0, [5, 9, 33]] = 2.0
    logits[1, [63, 7]] = 1.5
    tokens = tsdi_kernels.debias_sample(op_backend.to(logits), temperature=0.0)
    assert tokens.tolist() == [5, 7]


def test_neginf_logits_are_legal(op_backend):
    x = torch.randn(3, 100)
    x[:, :90] = float("-inf")
    tokens = tsdi_kernels.debias_sample(op_backend.to(x), top_k=5, seed=op_backend.to(torch.tensor([1, 2, 3])))
    assert (tokens >= 90).all()


def test_seed_and_position_change_the_draw(op_backend):
    logits = op_backend.to(torch.zeros(1, 1000))
    draws = {tsdi_kernels.debias_sample(logits, seed=s, positions=p).item() for s in range(8) for p in range(8)}
    # 64 draws from a uniform over 1000 tokens: all-equal would mean the noise ignores seed and position.
    assert len(draws) > 32


def test_samples_in_support_and_frequencies(op_backend):
    """Tier 2: every token lies in the kept set. Tier 3: chi-square of many draws per row against the exact
    probabilities. The kept sets are small here (top-k / top-p), so each row has few categories."""
    vocab = 256
    cases = [(0.7, 50, 1.0, 0), (0.7, 0, 0.9, 1), (1.0, 20, 0.8, 2), (0.5, 0, 1.0, 5), (0.0, 0, 1.0, 0)]
    one = case_batch(make_logits(len(cases), vocab, scale=1.5, ties="top", neg_inf="band"), make_bias(L_BIAS, vocab),
                     cases)
    probs = torch.ops.tsdi.debias_probs(*op_backend.to(*one.probs_args())).cpu()
    # The reference computes full-vocabulary Philox noise per draw with int64 torch ops (~0.5 us per token), so
    # it gets fewer draws; the C++ kernel draws noise for kept tokens only and gets 200k. (The CUDA backend's
    # frequencies at real sizes: test_gpu.py.)
    draws = 200_000 if op_backend.name == "cpp" else 8_000
    rows = one.rows
    seeds = torch.arange(draws, dtype=torch.int64).repeat_interleave(rows) * 7919 + 13
    many = one.replace(seed=seeds, **{f: getattr(one, f).repeat(draws, *[1] * (getattr(one, f).dim() - 1))
                                      for f in one.ROW_FIELDS if f != "seed"})
    tokens = torch.ops.tsdi.debias_sample(*op_backend.to(*many.sample_args())).cpu().reshape(draws, rows)
    for b in range(rows):
        kept = probs[b] > 0
        assert kept[tokens[:, b]].all(), f"row {b}: a token outside the kept set"
        counts = torch.bincount(tokens[:, b], minlength=vocab).double()
        expected = probs[b].double() * draws
        mask = expected > 0
        if mask.sum() == 1:  # greedy row: all draws are the argmax
            assert counts[mask].item() == draws
            continue
        chi2 = (((counts - expected) ** 2)[mask] / expected[mask]).sum().item()
        dof = int(mask.sum()) - 1
        # Wilson-Hilferty: chi2/dof is ~ N(1, 2/dof); 6 standard deviations is a false-alarm rate of ~1e-9,
        # while a wrong kept set or a wrong temperature moves chi2/dof far beyond it with this many draws.
        bound = dof + 6 * (2 * dof) ** 0.5
        assert chi2 < bound, f"row {b}: chi2 {chi2:.1f} >= {bound:.1f} (dof {dof})"

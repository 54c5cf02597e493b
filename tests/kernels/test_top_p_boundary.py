"""Top-p at an exact mass boundary: every backend keeps the same tokens, the ones HF's rule keeps in exact arithmetic.

The rule (tsdi_kernels/kernels/semantics.py): keep a token iff it is the top token or the mass ranked strictly
above it is < top_p * (1 - 2**-18). A token whose mass above equals top_p (HF: ascending cumulative mass == 1 - p,
which `<= 1 - p` removes) is dropped whatever the rounding of the backend's exp and sums, and of top_p to float32.

The cases: decimal probability vectors (given as float32 logits log(p) * T, at T = 1 and 0.5, shuffled, padded with
-inf) with top_p set to each of their cumulative masses; the expected kept set is computed with fractions.
"""
from __future__ import annotations

import random
from fractions import Fraction

import pytest
import torch

from kernel_testing import REFERENCE, case_batch
from tsdi_kernels.kernels.semantics import TOP_P_SCALE

F = Fraction
VECTORS = [
    [F(5, 10), F(3, 10), F(2, 10)],
    [F(6, 10), F(4, 10)],
    [F(3, 10), F(1, 10), F(1, 10), F(5, 10)],  # HF's TopPLogitsWarper unit test: p = 0.8 keeps {0.3, 0.5}
    [F(4, 10), F(3, 10), F(2, 10), F(1, 10)],
    [F(7, 10), F(2, 10), F(1, 10)],
    [F(1, 4)] * 4,
    [F(1, 6)] * 6,
    [F(1, 10)] * 10,
    [F(1, 15)] * 15,
    [F(35, 100), F(35, 100), F(15, 100), F(15, 100)],
    [F(9, 10), F(5, 100), F(5, 100)],
    [F(45, 100), F(45, 100), F(1, 10)],
    [F(1, 8)] * 8,
]


def expected_keep(probs: list, p: Fraction) -> set:
    """Indices kept by HF's rule in exact arithmetic (rank: probability descending, equal ones index descending)."""
    order = sorted(range(len(probs)), key=lambda i: (probs[i], i), reverse=True)
    kept, above = set(), Fraction(0)
    for rank, i in enumerate(order):
        if rank == 0 or above < p:
            kept.add(i)
        above += probs[i]
    return kept


def boundary_cases():
    """(logits [V] float32, temperature, top_k, top_p as float, expected kept indices)."""
    rng = random.Random(0)
    cases = []
    for probs in VECTORS:
        cum = Fraction(0)
        masses = []
        for q in sorted(probs, reverse=True)[:-1]:
            cum += q
            masses.append(cum)
        for p in sorted(set(masses)):
            for temperature, pad, shuffle in ((1.0, 0, False), (0.5, 5, True)):
                perm = list(range(len(probs)))
                if shuffle:
                    rng.shuffle(perm)
                row_p = [probs[i] for i in perm] + [Fraction(0)] * pad
                logits = torch.tensor([float(q) for q in row_p], dtype=torch.float64).log() * temperature
                cases.append((logits.float(), temperature, 0, float(p), expected_keep(row_p, p)))
    # fifteen equal logits at T = 0.5: top-k 3 keeps all 15 (ties with the 3rd), top-p 0.8 then keeps 12
    cases.append((torch.zeros(15), 0.5, 3, 0.8, expected_keep([F(1, 15)] * 15, F(8, 10))))
    return cases


CASES = boundary_cases()


def _batch(case, seeds):
    logits, temperature, top_k, top_p, _ = case
    n = len(seeds)
    return case_batch(logits.expand(n, -1).contiguous(), None, [(temperature, top_k, top_p, 0)] * n,
                      seed=torch.tensor(seeds, dtype=torch.int64))


def test_cases_are_boundaries():
    """More than 60 cases, each with top_p equal to a cumulative mass, so the rule's tie handling decides them."""
    assert len(CASES) > 60
    assert all(len(keep) < (logits > float("-inf")).sum() for logits, _, _, _, keep in CASES)


@pytest.mark.parametrize("i", range(len(CASES)))
def test_kept_set_at_exact_boundary(probs_kernel, i):
    """debias_probs (reference, C++): the support is exactly the exact-arithmetic kept set."""
    probs, codes = probs_kernel.probs(_batch(CASES[i], [0]))
    assert codes.tolist() == [0]
    assert set(torch.nonzero(probs[0] > 0)[:, 0].tolist()) == CASES[i][4]


def _telling_seed(case, widen: float = 0.02, tries: int = 256) -> int:
    """A seed whose Gumbel-max would pick the boundary token if it were kept: with top_p raised by `widen` (less
    than the boundary token's own probability, so only it joins), the reference's draw lands outside the exact
    kept set."""
    logits, temperature, top_k, top_p, keep = case
    seeds = list(range(tries))
    wider = _batch((logits, temperature, top_k, min(1.0, top_p + widen), keep), seeds)
    drawn = REFERENCE.sample(wider).tolist()
    return next(s for s, tok in zip(seeds, drawn) if tok not in keep)


def test_sampled_tokens_at_exact_boundary(kernel):
    """Every backend (the Triton one too): per case, a seed that draws the boundary token if it is kept, and a seed
    that does not; both tokens lie in the exact kept set and equal the reference's."""
    for case in CASES:
        batch = _batch(case, [_telling_seed(case), 1])
        got = kernel.sample(batch)
        assert set(got.tolist()) <= case[4], (case, got.tolist())
        assert torch.equal(got, REFERENCE.sample(batch))


def flat_cases(repeat: int = 40):
    """VECTORS with each probability split into `repeat` equal tokens (V = 80 .. 600, so the Triton sampler's 64
    candidates per split do not hold the nucleus), top_p at each cumulative mass. (The equal-probability vectors
    are the ones whose boundaries the fallback kernel's float sums put on the wrong side without TOP_P_SCALE.)"""
    cases = []
    for probs in VECTORS:
        row = [q / repeat for q in probs for _ in range(repeat)]
        logits = torch.tensor([float(q) for q in row], dtype=torch.float64).log().float()
        order = sorted(row, reverse=True)
        for n in range(repeat, len(row), repeat):
            p = sum(order[:n], Fraction(0))
            cases.append((logits, 1.0, 0, float(p), expected_keep(row, p), min(row), probs is VECTORS[3]))
    return cases


FLAT = flat_cases()


@pytest.mark.parametrize("i", range(len(FLAT)))
def test_flat_row_boundary_with_cut_buffers(kernel, i):
    """Exact boundaries on rows of many tokens: every backend keeps the exact kept set. The Triton sampler, given 64
    candidates per split (its buffers are cut), solves some in the finish kernel, on the candidates above the
    highest cutoff of a cut split, and the others in its exact fallback kernel."""
    *case, smallest, cut_nucleus = FLAT[i]
    batch = _batch(case, [_telling_seed(case, widen=float(smallest) / 2, tries=2048), 1])
    report = {}
    got = kernel.sample(batch, **kernel.launch(block=64, keep=64, splits=2, report=report))
    assert set(got.tolist()) <= case[4]
    assert torch.equal(got, REFERENCE.sample(batch))
    if kernel.name == "triton" and cut_nucleus and case[3] != 0.5:
        # [0.4, 0.3, 0.2, 0.1] x 40, 2 splits of 80: past the first level, the cut buffers cannot hold the nucleus
        assert report["fallback"].all()


def test_scale_separates_ties_from_float_rounding():
    """The tie band (2**-18 of top_p, relative) is wider than float32 rounding of the masses and of top_p (< 2**-22
    relative each on these few-token rows), and narrower than any mass difference users can set (1e-5)."""
    assert 2.0 ** -22 < 1 - TOP_P_SCALE < 1e-5

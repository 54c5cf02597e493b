"""Paired differences of refusal rates (tsdi_kernels/evaluation/paired.py): Tango's score interval against a
published example and a slow brute-force computation, its edges (no discordant pair, all discordant, n = 1), its
exact coverage by enumeration, the prompts-needed estimate and the strength rule on synthetic paired data."""
import math
from statistics import NormalDist

import pytest

from tsdi_kernels.evaluation.paired import (Paired, interval, prompts_needed, recommend_strength, restricted_mle,
                                            tango_score, upper_bound)

Z90 = NormalDist().inv_cdf(0.95)  # one-sided 95% = upper end of the two-sided 90% interval


# ------------------------------------------------------------------------------------------------ published values
def test_tango_published_example():
    # Cavo et al. (2012), complete response before and after consolidation therapy: table [[59, 6], [16, 80]],
    # b = 6, c = 16, n = 161. Tango's 95% interval -0.0621 (-0.1240 to -0.0054) in Fagerland, Lydersen and Laake,
    # Statistical Analysis of Contingency Tables (2017), chapter 8 (the R package contingencytables reproduces it).
    # Published to 4 decimals: agreement within half a unit of the last digit.
    low, high = interval(6, 16, 161)
    assert (6 - 16) / 161 == pytest.approx(-0.0621, abs=5e-5)
    assert low == pytest.approx(-0.1240, abs=5e-5) and high == pytest.approx(-0.0054, abs=5e-5)


def test_no_discordant_pair_closed_form():
    # b = c = 0: q(d) = 0 for d > 0, so Z(d) = -sqrt(n d / (1 - d)) and Z = -z at d = z^2 / (n + z^2)
    for n in (1, 7, 76, 1000):
        assert upper_bound(0, 0, n) == pytest.approx(Z90 ** 2 / (n + Z90 ** 2), abs=1e-12)
        z95 = NormalDist().inv_cdf(0.975)
        low, high = interval(0, 0, n)
        assert high == pytest.approx(z95 ** 2 / (n + z95 ** 2), abs=1e-12) and low == pytest.approx(-high, abs=1e-15)
    # 0 of 76 discordant: the bound is 3.4 points, not 0
    assert upper_bound(0, 0, 76) == pytest.approx(0.0344, abs=1e-4)


# ------------------------------------------------------------------------------------------------ brute force
def _loglik(b, c, n, q, d):
    terms = ((b, q + d), (c, q), (n - b - c, 1 - 2 * q - d))
    if any(k > 0 and p <= 0 for k, p in terms):
        return -math.inf
    return sum(k * math.log(p) for k, p in terms if k > 0)


def _brute_mle(b, c, n, d):
    """argmax over q of the multinomial log-likelihood with P(first only) = q + d: golden-section search on the
    feasible q (the log-likelihood is concave in q)."""
    lo, hi = max(0.0, -d), (1 - d) / 2
    g = (math.sqrt(5) - 1) / 2
    for _ in range(120):  # 0.618**120 ~ 1e-25 of the range
        x1, x2 = hi - g * (hi - lo), lo + g * (hi - lo)
        if _loglik(b, c, n, x1, d) < _loglik(b, c, n, x2, d):
            lo = x1
        else:
            hi = x2
    return (lo + hi) / 2


def _brute_score(b, c, n, d):
    q = _brute_mle(b, c, n, d)
    var, num = n * (2 * q + d * (1 - d)), b - c - n * d
    if var <= 1e-15:
        return 0.0 if num == 0 else math.copysign(math.inf, num)
    return num / math.sqrt(var)


def _brute_upper(b, c, n, z):
    """The largest d >= the estimate whose score statistic (with the brute-force MLE) is >= -z: a scan of
    [estimate, 1] in steps of 1e-3, then of the last accepted step in steps of 1e-5."""
    est = (b - c) / n
    coarse = [d for d in (est + i * 1e-3 for i in range(int((1 - est) / 1e-3) + 1)) if _brute_score(b, c, n, d) >= -z]
    start = coarse[-1]
    fine = [d for d in (start + i * 1e-5 for i in range(101)) if d <= 1 and _brute_score(b, c, n, d) >= -z]
    return fine[-1]


@pytest.mark.parametrize("b, c, n", [(0, 0, 1), (1, 0, 1), (0, 1, 1), (0, 0, 10), (3, 0, 10), (0, 3, 10), (2, 1, 10),
                                     (5, 5, 10), (10, 0, 10), (0, 10, 10), (4, 1, 76)],
                         ids=lambda v: str(v))
def test_upper_bound_matches_brute_force(b, c, n):
    # the fine scan's step (1e-5) bounds the disagreement; the MLE search converges far below it
    assert upper_bound(b, c, n) == pytest.approx(_brute_upper(b, c, n, Z90), abs=1e-5 + 1e-9)


@pytest.mark.parametrize("b, c, n", [(0, 0, 10), (3, 0, 10), (0, 3, 10), (2, 1, 10), (6, 16, 161), (4, 1, 76)])
def test_restricted_mle_maximizes_the_likelihood(b, c, n):
    for d in (-0.9, -0.3, -0.05, 0.0, 0.02, 0.1, 0.4, 0.8):
        if (1 - d) / 2 < max(0.0, -d):
            continue
        # golden-section converges to ~1e-12 in q; 1e-7 leaves room for the flat top of the likelihood
        assert restricted_mle(b, c, n, d) == pytest.approx(_brute_mle(b, c, n, d), abs=1e-7)


# ------------------------------------------------------------------------------------------------ edges, shape
def test_all_discordant_and_n_equal_1():
    assert upper_bound(10, 0, 10) == 1.0 and interval(10, 0, 10)[1] == 1.0
    assert interval(0, 10, 10)[0] == -1.0
    low, high = interval(10, 0, 10)
    assert 0 < low < 1  # every pair says the first is higher; 10 pairs still leave doubt
    assert interval(0, 10, 10) == pytest.approx((-high, -low), abs=1e-15)
    # b + c = n split both ways: estimate 0, symmetric
    low, high = interval(5, 5, 10)
    assert low == pytest.approx(-high, abs=1e-12) and high > 0.3
    # n = 1: one concordant, one discordant pair
    assert upper_bound(1, 0, 1) == 1.0 and interval(0, 1, 1)[0] == -1.0
    assert -1 < interval(1, 0, 1)[0] < 0  # a single pair cannot exclude a loss below zero
    assert upper_bound(0, 1, 1) > 0  # nor a positive one


def test_monotone_and_ordered():
    n = 40
    for c in (0, 3, 10):
        ups = [upper_bound(b, c, n) for b in range(0, n - c + 1)]
        assert all(x < y for x, y in zip(ups, ups[1:])), "upper bound must rise with b"
    for b in (0, 3, 10):
        ups = [upper_bound(b, c, n) for c in range(0, n - b + 1)]
        assert all(x > y for x, y in zip(ups, ups[1:])), "upper bound must fall with c"
    for b in range(0, 12, 3):
        for c in range(0, 12, 4):
            lo, hi = interval(b, c, n)
            lo90, hi90 = interval(b, c, n, 0.90)
            est = (b - c) / n
            assert -1 <= lo < lo90 <= est <= hi90 < hi <= 1
            assert upper_bound(b, c, n) == pytest.approx(hi90, abs=1e-12)
            assert interval(c, b, n) == pytest.approx((-hi, -lo), abs=1e-12)
            assert tango_score(b, c, n, hi) == pytest.approx(-NormalDist().inv_cdf(0.975), abs=1e-6)
    # more prompts, same rates: a tighter bound
    assert upper_bound(4, 1, 76) > upper_bound(40, 10, 760) > upper_bound(400, 100, 7600) > 3 / 76


def _coverage(n, p12, p21):
    """Exact probability that the one-sided 95% upper bound is >= the true difference (sum over all tables)."""
    d, p0, total = p12 - p21, 1 - p12 - p21, 0.0
    for b in range(n + 1):
        for c in range(n - b + 1):
            logp = math.lgamma(n + 1) - math.lgamma(b + 1) - math.lgamma(c + 1) - math.lgamma(n - b - c + 1)
            for k, p in ((b, p12), (c, p21), (n - b - c, p0)):
                if k:
                    logp += k * math.log(p) if p > 0 else -math.inf
            if logp > -math.inf and upper_bound(b, c, n) >= d:
                total += math.exp(logp)
    return total


@pytest.mark.parametrize("p12, p21", [(0.05, 0.01), (0.08, 0.02), (0.1, 0.05), (0.04, 0.0)])
def test_one_sided_coverage_by_enumeration(p12, p21):
    # An asymptotic interval's exact coverage oscillates around the nominal 95% with the discreteness of the counts
    # (Fagerland et al. 2014 call a method acceptable when it rarely falls more than ~1 point below nominal);
    # at n = 40, the size of a validation split, we demand at least 94%.
    assert _coverage(40, p12, p21) >= 0.94


# ------------------------------------------------------------------------------------------------ Paired, errors
def test_paired_from_outcomes_and_dict():
    aligned = [True, True, True, False, False, True]
    tsdi = [True, False, False, True, False, True]
    p = Paired.from_outcomes(aligned, tsdi)
    assert (p.b, p.c, p.n) == (2, 1, 6) and p.difference == pytest.approx(1 / 6)
    # the paired difference is exactly the difference of the two rates
    assert p.difference == pytest.approx(sum(aligned) / 6 - sum(tsdi) / 6)
    d = p.to_dict()
    assert d["b"] == 2 and d["low"] < d["difference"] < d["upper_bound"] < d["high"] and "Tango" in d["method"]
    assert p.format().startswith("16.7 points [") and "(b=2, c=1, n=6)" in p.format()


@pytest.mark.parametrize("args, match", [
    ((1, 0, 0), "n > 0"), ((-1, 0, 5), "b >= 0"), ((3, 3, 5), "b \\+ c <= n"), ((True, 0, 5), "b="),
    ((1, float("nan"), 5), "c="),
])
def test_bad_counts_are_named(args, match):
    with pytest.raises(ValueError, match=match):
        upper_bound(*args)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="confidence"):
        interval(1, 0, 5, confidence=1.5)
    with pytest.raises(ValueError, match="Paired.b"):
        Paired(1.5, 0, 4)
    with pytest.raises(ValueError, match="equal lengths"):
        Paired.from_outcomes([True], [True, False])
    with pytest.raises(ValueError, match="margin"):
        prompts_needed(1, 0, 10, margin=-0.1)
    with pytest.raises(ValueError, match="margin"):
        recommend_strength({0.5: Paired(0, 0, 10)}, margin=5)
    with pytest.raises(ValueError, match="Paired"):
        recommend_strength({0.5: (0, 0, 10)}, margin=0.05)
    with pytest.raises(ValueError, match="strengths"):
        recommend_strength({-1.0: Paired(0, 0, 10)}, margin=0.05)


# ------------------------------------------------------------------------------------------------ prompts needed
def test_prompts_needed():
    # no discordance: the bound z^2 / (N + z^2) reaches 5% at N = z^2 * 0.95 / 0.05 = 51.4 -> 52
    assert prompts_needed(0, 0, 76, 0.05) == math.ceil(Z90 ** 2 * 0.95 / 0.05) == 52
    for b, c, n in ((1, 0, 76), (3, 1, 76), (1, 0, 40)):
        need = prompts_needed(b, c, n, 0.05)
        # the smallest N at the same discordance rates whose bound is within the margin
        assert upper_bound(need * b / n, need * c / n, need) <= 0.05 < upper_bound((need - 1) * b / n,
                                                                                  (need - 1) * c / n, need - 1)
    # more discordance, more prompts
    assert prompts_needed(1, 0, 76, 0.05) < prompts_needed(2, 0, 76, 0.05) < prompts_needed(3, 0, 76, 0.05)
    # an observed loss at or above the margin cannot be shown within it by more prompts
    assert prompts_needed(4, 0, 76, 0.05) is None and prompts_needed(5, 1, 80, 0.05) is None


# ------------------------------------------------------------------------------------------------ the rule
def test_rule_largest_strength_within_the_margin():
    n = 76
    # 0 discordant -> bound 3.4 points (within 5); 4 lost of 76 -> observed loss 5.3 points (outside)
    losses = {0.25: Paired(0, 0, n), 0.5: Paired(0, 0, n), 1.0: Paired(4, 0, n)}
    benefits = {0.25: Paired(3, 0, 70), 0.5: Paired(8, 1, 70), 1.0: Paired(12, 0, 70)}
    rec = recommend_strength(losses, 0.05, benefits=benefits)
    assert rec["strength"] == 0.5
    assert [r["within"] for r in rec["strengths"]] == [True, True, False]
    assert rec["strengths"][1]["benefit"]["difference"] == pytest.approx(7 / 70)
    assert rec["strengths"][2]["prompts_needed"] is None  # its loss is above the margin
    assert "upper bound" in rec["rule"] and "5 points" in rec["rule"] and "reason" not in rec
    # the strength 0 (the aligned model itself) is not a candidate
    assert recommend_strength({0.0: Paired(0, 0, n), **losses}, 0.05)["strength"] == 0.5


def test_rule_stops_at_the_first_failure():
    n = 76
    # fixed sequence: 0.5 fails, so 1.0 is not recommended even though its own bound is within the margin
    losses = {0.25: Paired(0, 0, n), 0.5: Paired(2, 0, n), 1.0: Paired(0, 0, n)}
    rec = recommend_strength(losses, 0.05)
    assert rec["strength"] == 0.25 and [r["within"] for r in rec["strengths"]] == [True, False, True]


def test_rule_none_qualifies():
    # 1 lost of 76: bound 5.7 points > 5; at that rate about 95 prompts would do
    rec = recommend_strength({0.25: Paired(1, 0, 76), 0.5: Paired(3, 0, 76)}, 0.05)
    assert rec["strength"] is None and rec["prompts_needed"] == prompts_needed(1, 0, 76, 0.05)
    assert 76 < rec["prompts_needed"] < 200
    assert "0.25" in rec["reason"] and f"about {rec['prompts_needed']} prompts" in rec["reason"]
    rec = recommend_strength({0.25: Paired(5, 0, 76)}, 0.05)
    assert rec["strength"] is None and rec["prompts_needed"] is None and "would not help" in rec["reason"]
    assert recommend_strength({}, 0.05)["reason"] == "no strength > 0 was evaluated"
    # a margin of 0 cannot be met by a bound, which is > 0 whenever no pair favours the debiased model
    rec = recommend_strength({0.25: Paired(0, 0, 1000)}, 0.0)
    assert rec["strength"] is None and rec["prompts_needed"] is None
    # a wider margin accepts what a narrow one refuses
    assert recommend_strength({0.25: Paired(1, 0, 76)}, 0.06)["strength"] == 0.25

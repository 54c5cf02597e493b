"""Paired differences of refusal rates, and the strength rule built on them.

Every prompt is answered by the aligned model and by aligned + TSDI at each strength, so a change in refusal
rate is a difference of paired proportions. On the same n prompts:

    b = prompts refused by the aligned model and not by the debiased one
    c = prompts refused by the debiased model and not by the aligned one
    difference = (b - c) / n        (the aligned rate minus the debiased rate, exactly)

Prompts that both refuse, or neither, carry no information about the difference; the discordant ones do, and
their number decides the width of the interval. Treating the two rates as independent (two Wilson intervals)
throws the pairing away: when most prompts agree its interval is wider (74 of 76 refused by both: +-6.7 points
by square-and-add of the two Wilson intervals, +-4.8 paired) and its bound does not follow the discordance.

Interval: Tango's asymptotic score interval (T. Tango, "Equivalence test and confidence interval for the
difference in proportions for the paired-sample design", Statistics in Medicine 17:891-908, 1998): the set of
differences d whose score statistic

    Z(d) = (b - c - n d) / sqrt(n (2 q(d) + d (1 - d)))

lies within +-z, where q(d) is the maximum-likelihood estimate of P(second only) under the constraint that the
difference is d (the root of 2n q^2 + (-b - c + (2n - b + c) d) q - c d (1 - d) = 0). It stays inside [-1, 1],
has a width > 0 when no pair is discordant (0 of 76 discordant gives [0, 3.4%] one-sided, not [0, 0]), and its
coverage is close to nominal at small n (Fagerland, Lydersen and Laake, "Recommended tests and confidence
intervals for paired binomial proportions", Statistics in Medicine 33:2850-2875, 2014, recommend it). A one-sided
95% upper bound is the upper end of the two-sided 90% interval: the root of Z(d) = -1.645 above the estimate.

The strength rule (:func:`recommend_strength`): the largest evaluated strength s whose one-sided 95% upper bound
of the loss of harmful refusal is within the margin, for s and for every evaluated strength below s. Testing in
the fixed order of increasing strength and stopping at the first failure is the fixed-sequence procedure
(Maurer, Hothorn and Lehmacher 1995): the chance that any strength it accepts truly loses more than the margin
stays at most 5% without a correction for the number of strengths tested. (Exactly so for strengths fixed in
advance; `tsdi eval --auto` picks its bisection points from the same validation answers, which makes it
approximate there: the test split, which plays no part in the choice, is the check.)

Pure Python (math only): no torch, no scipy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Mapping, Optional, Sequence

_BISECTIONS = 100  # halvings of [estimate, 1]: far below float resolution (2**-52) long before 100


def _check_counts(b, c, n) -> None:
    for name, v in (("b", b), ("c", c), ("n", n)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"paired counts must be finite numbers, got {name}={v!r}")
    if n <= 0 or b < 0 or c < 0 or b + c > n:
        raise ValueError(f"paired counts need n > 0, b >= 0, c >= 0 and b + c <= n, got b={b}, c={c}, n={n}")


def _check_confidence(confidence: float) -> None:
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0.5 < confidence < 1:
        raise ValueError(f"confidence must be in (0.5, 1), got {confidence!r}")


def restricted_mle(b: float, c: float, n: float, d: float) -> float:
    """Tango's q(d): the maximum-likelihood P(second only) given P(first only) - P(second only) = d."""
    A = 2.0 * n
    B = -b - c + (2.0 * n - b + c) * d
    C = -c * d * (1.0 - d)
    # the larger root; C <= 0 on [0, 1] keeps it real and >= 0 (max() absorbs rounding below zero)
    return max(0.0, (math.sqrt(max(0.0, B * B - 4.0 * A * C)) - B) / (2.0 * A))


def tango_score(b: float, c: float, n: float, d: float) -> float:
    """Tango's score statistic Z(d) of the paired counts (b, c, n) at difference d (see the module docstring)."""
    num = b - c - n * d
    var = n * (2.0 * restricted_mle(b, c, n, d) + d * (1.0 - d))
    if var <= 0.0:  # only at the boundary of the parameter space (d = +-1, or d = 0 with b = c = 0)
        return 0.0 if num == 0 else math.copysign(math.inf, num)
    return num / math.sqrt(var)


def _upper(b: float, c: float, n: float, z: float) -> float:
    """The largest d >= (b - c) / n with Z(d) >= -z (Z falls as d rises): bisection on [estimate, 1]."""
    lo, hi = (b - c) / n, 1.0
    if tango_score(b, c, n, hi) >= -z:
        return 1.0
    for _ in range(_BISECTIONS):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if tango_score(b, c, n, mid) >= -z:
            lo = mid
        else:
            hi = mid
    return lo


def upper_bound(b: float, c: float, n: float, confidence: float = 0.95) -> float:
    """One-sided upper confidence bound of (b - c) / n (Tango's score interval)."""
    _check_counts(b, c, n)
    _check_confidence(confidence)
    return _upper(b, c, n, NormalDist().inv_cdf(confidence))


def interval(b: float, c: float, n: float, confidence: float = 0.95) -> tuple[float, float]:
    """Two-sided confidence interval (low, high) of (b - c) / n (Tango's score interval)."""
    _check_counts(b, c, n)
    _check_confidence(confidence)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    # the lower end is the upper end of the mirrored table (first and second swapped): -U(c, b)
    return -_upper(c, b, n, z), _upper(b, c, n, z)


@dataclass(frozen=True)
class Paired:
    """Paired binary outcomes of two configurations on the same n items (first = aligned, second = debiased).

    b: items with the outcome under the first only; c: under the second only. difference = (b - c) / n is the
    first configuration's rate minus the second's."""

    b: int
    c: int
    n: int

    def __post_init__(self):
        for name in ("b", "c", "n"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"Paired.{name} must be an integer count, got {v!r}")
        _check_counts(self.b, self.c, self.n)

    @classmethod
    def from_outcomes(cls, first: Sequence[bool], second: Sequence[bool]) -> "Paired":
        """Counts from two equally long lists of outcomes, item i of both lists being the same item."""
        first, second = list(first), list(second)
        if len(first) != len(second):
            raise ValueError(f"paired outcomes need equal lengths, got first={len(first)}, second={len(second)}")
        if not first:
            raise ValueError("paired outcomes need at least one item")
        b = sum(1 for x, y in zip(first, second) if x and not y)
        c = sum(1 for x, y in zip(first, second) if y and not x)
        return cls(b, c, len(first))

    @property
    def difference(self) -> float:
        return (self.b - self.c) / self.n

    def upper_bound(self, confidence: float = 0.95) -> float:
        return upper_bound(self.b, self.c, self.n, confidence)

    def interval(self, confidence: float = 0.95) -> tuple[float, float]:
        return interval(self.b, self.c, self.n, confidence)

    def to_dict(self, confidence: float = 0.95) -> dict:
        """Counts, the difference, its two-sided interval and its one-sided upper bound at `confidence`."""
        low, high = self.interval(confidence)
        return {"b": self.b, "c": self.c, "n": self.n, "difference": round(self.difference, 6),
                "low": round(low, 6), "high": round(high, 6), "upper_bound": round(self.upper_bound(confidence), 6),
                "confidence": confidence, "method": METHOD}

    def format(self, confidence: float = 0.95) -> str:
        """'4.0 points [0.6, 8.9] (b=4, c=1, n=76)': the difference and its two-sided interval, in points."""
        low, high = self.interval(confidence)
        return (f"{100 * self.difference:.1f} points [{100 * low:.1f}, {100 * high:.1f}] "
                f"(b={self.b}, c={self.c}, n={self.n})")


METHOD = "Tango (1998) asymptotic score interval for a difference of paired proportions"


def prompts_needed(b: int, c: int, n: int, margin: float, confidence: float = 0.95,
                   limit: int = 10_000_000) -> Optional[int]:
    """How many prompts would bring the upper bound within `margin` if the discordance rates stayed at b/n and c/n.

    The smallest N with upper_bound(N b/n, N c/n, N) <= margin (Tango's formula is continuous in the counts). The
    bound shrinks towards the observed loss (b - c)/n like 1/sqrt(N), so None when that loss is itself >= margin:
    more prompts cannot show a loss within the margin that the prompts already measured above it. With no
    discordant pair the bound is z^2 / (N + z^2), so N = z^2 (1 - margin) / margin, rounded up (52 at a 5% margin)."""
    _check_counts(b, c, n)
    _check_confidence(confidence)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin <= 1:
        raise ValueError(f"margin must be in [0, 1] (a rate difference), got {margin!r}")
    if (b - c) / n >= margin:
        return None
    z = NormalDist().inv_cdf(confidence)
    p12, p21 = b / n, c / n

    def within(m: int) -> bool:
        return _upper(m * p12, m * p21, m, z) <= margin

    hi = 1
    while not within(hi):
        hi *= 2
        if hi > limit:
            return None
    lo = hi // 2  # not within (or 0); hi is within
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if within(mid):
            hi = mid
        else:
            lo = mid
    return hi


RULE = ("largest evaluated strength s whose one-sided {conf:g}% upper bound of the loss of harmful refusal against "
        "the aligned model (paired, on the validation split) is within {margin:g} points, for s and every evaluated "
        "strength below s")


def recommend_strength(losses: Mapping[float, Paired], margin: float, confidence: float = 0.95,
                       benefits: Optional[Mapping[float, Paired]] = None) -> dict:
    """The strength rule of the module docstring, applied to paired counts per strength.

    losses: {strength: Paired(b, c, n)} on harmful prompts, first = aligned, second = that strength, so that the
    difference is the loss of harmful refusal. benefits: the same on benign prompts (the over-refusal cut), shown
    beside each strength. Returns {"strength": s or None, "rule", "margin", "confidence", "method", "strengths":
    [per evaluated strength: loss, upper bound, within margin, prompts needed, benefit]} and, when no strength
    > 0 qualifies, "reason" and "prompts_needed" (for the smallest strength, the first one the rule tests)."""
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin <= 1:
        raise ValueError(f"margin must be in [0, 1] (a rate difference), got {margin!r}")
    _check_confidence(confidence)
    for s, p in losses.items():
        if not isinstance(p, Paired):
            raise ValueError(f"losses[{s!r}] must be a Paired, got {type(p).__name__}")
        if not isinstance(s, (int, float)) or isinstance(s, bool) or not math.isfinite(s) or s < 0:
            raise ValueError(f"strengths must be finite numbers >= 0, got {s!r}")
    rows, best, failed = [], None, False
    for s in sorted(x for x in losses if x > 0):
        loss = losses[s]
        bound = loss.upper_bound(confidence)
        ok = bound <= margin + 1e-12  # 1e-12: a bound equal to the margin up to float rounding is within it
        row = {"strength": s, "loss": loss.to_dict(confidence), "upper_bound": round(bound, 6), "within": ok,
               "prompts_needed": None if ok else prompts_needed(loss.b, loss.c, loss.n, margin, confidence)}
        if benefits is not None and s in benefits:
            row["benefit"] = benefits[s].to_dict(confidence)
        rows.append(row)
        if ok and not failed:
            best = s
        else:
            failed = True
    out = {"strength": best, "rule": RULE.format(conf=100 * confidence, margin=100 * margin), "margin": margin,
           "confidence": confidence, "method": METHOD, "strengths": rows}
    if best is None:
        if not rows:
            out["reason"] = "no strength > 0 was evaluated"
        else:
            first = rows[0]
            need = first["prompts_needed"]
            out["prompts_needed"] = need
            out["reason"] = (
                f"even the smallest strength, {first['strength']:g}, has an upper bound of "
                f"{100 * first['upper_bound']:.1f} points at n={first['loss']['n']}, above the margin of "
                f"{100 * margin:g}; "
                + (f"at its observed discordance rates about {need} prompts would bring the bound within the margin"
                   if need is not None else
                   "its observed loss is itself at or above the margin, so more prompts would not help"))
    return out

"""Rates with 95% Wilson score intervals.

The Wilson interval (Wilson 1927; Newcombe 1998, method 3) keeps its coverage near 95% for small n and for rates
near 0 or 1, where the normal ("Wald") interval collapses to zero width: 0 refusals out of 40 gives [0, 8.8%],
not [0, 0].
"""
from __future__ import annotations

import math
from dataclasses import dataclass

Z95 = 1.959963984540054  # the 0.975 quantile of the standard normal


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """(low, high) of the Wilson score interval of k successes out of n (95% by default)."""
    if isinstance(k, bool) or isinstance(n, bool) or int(k) != k or int(n) != n:
        raise ValueError(f"wilson_interval needs integer counts, got k={k!r}, n={n!r}")
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"wilson_interval needs 0 <= k <= n and n > 0, got k={k}, n={n}")
    p = k / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # exact at the edges (the formula gives 0 and 1 up to rounding)
    return (0.0 if k == 0 else max(0.0, centre - half), 1.0 if k == n else min(1.0, centre + half))


@dataclass(frozen=True)
class Rate:
    """k of n, the rate and its 95% Wilson interval."""

    k: int
    n: int

    @property
    def rate(self) -> float:
        return self.k / self.n if self.n else float("nan")

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.k, self.n) if self.n else (float("nan"), float("nan"))

    def to_dict(self) -> dict:
        low, high = self.interval
        return {"k": self.k, "n": self.n, "rate": _round(self.rate), "low": _round(low), "high": _round(high)}

    def format(self, percent: bool = True) -> str:
        """'16.0% [11.0, 22.6]' (percent) or '0.160 [0.110, 0.226]'."""
        if not self.n:
            return "n/a"
        low, high = self.interval
        if percent:
            return f"{100 * self.rate:.1f}% [{100 * low:.1f}, {100 * high:.1f}]"
        return f"{self.rate:.3f} [{low:.3f}, {high:.3f}]"


def _round(x: float) -> float:
    return round(x, 6) if math.isfinite(x) else None


def mean_interval(values) -> dict:
    """{"mean", "low", "high", "n"}: the mean and its normal 95% interval (mean +- 1.96 standard errors)."""
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        return {"mean": None, "low": None, "high": None, "n": 0}
    mean = sum(values) / n
    if n < 2:
        return {"mean": _round(mean), "low": None, "high": None, "n": n}
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    half = Z95 * math.sqrt(var / n)
    return {"mean": _round(mean), "low": _round(mean - half), "high": _round(mean + half), "n": n}

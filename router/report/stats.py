"""The statistics of the report: intervals and tests that stay honest at small counts.

- A proportion's interval is Wilson's score interval, which keeps its coverage near 0 and 1
  (where error rates live) unlike the textbook Wald interval.
- A difference of two proportions gets Newcombe's hybrid score interval (his method 10,
  Statistics in Medicine 1998), built from the two Wilson intervals; its p-value comes from
  the pooled two-proportion z-test.
- A difference of latency quantiles gets a percentile bootstrap interval.
- The sample-ratio check is Pearson's chi-square test of observed against expected counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

Z95 = 1.959963984540054  # the two-sided 95% normal quantile
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 20261125  # fixed: the same log gives the same report


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for successes/n; (0, 1) when n is 0."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    low = 0.0 if successes == 0 else max(0.0, center - half)  # exact at the edges
    high = 1.0 if successes == n else min(1.0, center + half)
    return (low, high)


@dataclass(frozen=True, slots=True)
class RateDiff:
    """candidate - baseline, as proportions (the report shows them in percentage points)."""

    diff: float
    ci95: tuple[float, float]
    p_value: float

    @property
    def significant(self) -> bool:
        return self.p_value < 0.05


def rate_difference(x1: int, n1: int, x0: int, n0: int) -> RateDiff:
    """Candidate (x1 of n1) against baseline (x0 of n0): Newcombe interval, z-test p-value."""
    p1 = x1 / n1 if n1 else 0.0
    p0 = x0 / n0 if n0 else 0.0
    l1, u1 = wilson(x1, n1)
    l0, u0 = wilson(x0, n0)
    diff = p1 - p0
    lower = diff - math.sqrt((p1 - l1) ** 2 + (u0 - p0) ** 2)
    upper = diff + math.sqrt((u1 - p1) ** 2 + (p0 - l0) ** 2)
    return RateDiff(diff, (lower, upper), two_proportion_p(x1, n1, x0, n0))


def two_proportion_p(x1: int, n1: int, x0: int, n0: int) -> float:
    """Two-sided p-value of the pooled z-test; 1 when there is nothing to compare."""
    if n1 == 0 or n0 == 0:
        return 1.0
    pooled = (x1 + x0) / (n1 + n0)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n0))
    if se == 0:
        return 1.0
    z = (x1 / n1 - x0 / n0) / se
    return float(2 * scipy_stats.norm.sf(abs(z)))


@dataclass(frozen=True, slots=True)
class QuantileDiff:
    quantile: float
    diff: float  # candidate - baseline, in ms
    ci95: tuple[float, float]

    @property
    def significant(self) -> bool:
        return self.ci95[0] > 0 or self.ci95[1] < 0


def quantile_differences(
    candidate: np.ndarray, baseline: np.ndarray, quantiles: Sequence[float] = (0.5, 0.95)
) -> list[QuantileDiff]:
    """Percentile-bootstrap intervals for differences of latency quantiles.

    Each resample draws both arms with replacement and takes the difference of their
    quantiles; the interval is the 2.5th to 97.5th percentile of those differences.
    """
    qs = np.asarray(quantiles)
    if len(candidate) == 0 or len(baseline) == 0:
        return [QuantileDiff(float(q), math.nan, (math.nan, math.nan)) for q in qs]
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    point = np.quantile(candidate, qs) - np.quantile(baseline, qs)
    diffs = np.empty((BOOTSTRAP_RESAMPLES, len(qs)))
    chunk = 50  # resamples at a time: bounded memory for large samples
    for start in range(0, BOOTSTRAP_RESAMPLES, chunk):
        rows = min(chunk, BOOTSTRAP_RESAMPLES - start)
        c = candidate[rng.integers(0, len(candidate), (rows, len(candidate)))]
        b = baseline[rng.integers(0, len(baseline), (rows, len(baseline)))]
        diffs[start : start + rows] = (np.quantile(c, qs, axis=1) - np.quantile(b, qs, axis=1)).T
    lower, upper = np.percentile(diffs, [2.5, 97.5], axis=0)
    return [
        QuantileDiff(float(q), float(d), (float(lo), float(hi)))
        for q, d, lo, hi in zip(qs, point, lower, upper, strict=True)
    ]


@dataclass(frozen=True, slots=True)
class SampleRatio:
    p_value: float
    observed: dict[str, float]
    expected: dict[str, float]

    @property
    def mismatch(self) -> bool:
        return self.p_value < 0.001


def sample_ratio(observed: dict[str, float], expected: dict[str, float]) -> SampleRatio:
    """Chi-square test of observed counts per version against the counts the split expects.

    A version that was expected to get nobody but got someone is a mismatch outright.
    """
    versions = [v for v in expected if expected[v] > 0]
    if any(observed.get(v, 0) > 0 for v in observed if expected.get(v, 0) == 0):
        return SampleRatio(0.0, observed, expected)
    if len(versions) < 2 or sum(observed.get(v, 0) for v in versions) == 0:
        return SampleRatio(1.0, observed, expected)
    obs = np.array([observed.get(v, 0) for v in versions], dtype=float)
    exp = np.array([expected[v] for v in versions], dtype=float)
    exp *= obs.sum() / exp.sum()
    statistic = float(((obs - exp) ** 2 / exp).sum())
    p_value = float(scipy_stats.chi2.sf(statistic, len(versions) - 1))
    return SampleRatio(p_value, observed, expected)

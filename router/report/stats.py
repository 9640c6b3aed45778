"""The statistics of the report: intervals and tests that stay honest at small counts.

- A proportion's interval is Wilson's score interval, which keeps its coverage near 0 and 1
  (where error rates live) unlike the textbook Wald interval.
- Differences between versions are the statistics engine's (router/stats, the user as the
  unit; report/compare.py applies it).
- The sample-ratio check is Pearson's chi-square test of observed against expected counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

from router.stats import Z95


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

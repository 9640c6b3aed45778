"""The sample-ratio check: Pearson's chi-square test of the users each version got against
the users the split in force expected. Every other interval and test of the report is the
statistics engine's (router/stats, the user as the unit), applied in report/compare.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats


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

"""The report's statistics: published values, and calibration by simulation."""

from __future__ import annotations

import numpy as np
import pytest

from router.report.stats import quantile_differences, rate_difference, sample_ratio, wilson


def test_wilson_matches_newcombes_worked_example() -> None:
    # Newcombe (1998), Statistics in Medicine 17: 81/263 gives 0.2553 to 0.3662.
    low, high = wilson(81, 263)
    assert (round(low, 4), round(high, 4)) == (0.2553, 0.3662)


def test_newcombe_hybrid_score_interval_matches_the_paper() -> None:
    # Newcombe (1998), Statistics in Medicine 17, Table II, method 10: 56/70 - 48/80.
    result = rate_difference(56, 70, 48, 80)
    assert round(result.diff, 4) == 0.2
    assert (round(result.ci95[0], 4), round(result.ci95[1], 4)) == (0.0524, 0.3339)


def test_intervals_stay_inside_bounds_at_zero_counts() -> None:
    assert wilson(0, 50)[0] == 0.0
    assert wilson(50, 50)[1] == 1.0
    result = rate_difference(0, 100, 0, 100)
    assert result.diff == 0
    assert result.ci95[0] < 0 < result.ci95[1]
    assert result.p_value == 1.0


def _false_positive_rate(rng: np.random.Generator, logs: int, n: int, rate: float) -> float:
    """A/A: both arms drawn request by request from the same error rate."""
    significant = 0
    for _ in range(logs):
        a = int((rng.random(n) < rate).sum())
        b = int((rng.random(n) < rate).sum())
        significant += rate_difference(a, n, b, n).significant
    return significant / logs


def test_false_positive_rate_over_200_simulated_aa_logs_is_near_5_percent() -> None:
    rng = np.random.default_rng(7)
    fpr = _false_positive_rate(rng, logs=200, n=20_000, rate=0.02)
    assert 0.02 <= fpr <= 0.08, fpr


def test_a_planted_one_point_error_increase_is_detected_at_least_80_percent_of_the_time() -> None:
    rng = np.random.default_rng(11)
    n, detected, runs = 20_000, 0, 200
    for _ in range(runs):
        baseline = int((rng.random(n) < 0.02).sum())
        candidate = int((rng.random(n) < 0.03).sum())
        result = rate_difference(candidate, n, baseline, n)
        detected += result.significant and result.diff > 0
    assert detected / runs >= 0.8, detected / runs


def test_interval_and_p_value_agree_on_significance_away_from_the_edge() -> None:
    clear = rate_difference(600, 20_000, 400, 20_000)
    assert clear.significant
    assert clear.ci95[0] > 0
    none = rate_difference(401, 20_000, 400, 20_000)
    assert not none.significant
    assert none.ci95[0] < 0 < none.ci95[1]


def test_bootstrap_finds_a_latency_shift_and_not_a_null_one() -> None:
    rng = np.random.default_rng(3)
    base = rng.lognormal(np.log(10), 0.4, 5000)
    same = rng.lognormal(np.log(10), 0.4, 5000)
    slower = rng.lognormal(np.log(12), 0.4, 5000)
    p50_same, _ = quantile_differences(same, base)
    assert p50_same.ci95[0] < 0 < p50_same.ci95[1]
    assert not p50_same.significant
    p50_slower, p95_slower = quantile_differences(slower, base)
    assert p50_slower.significant
    assert 1.0 < p50_slower.diff < 3.0
    assert p50_slower.ci95[0] < p50_slower.diff < p50_slower.ci95[1]
    assert p95_slower.diff > 0


@pytest.mark.parametrize(
    ("observed", "mismatch"),
    [
        ({"v1": 9000, "v2": 1000}, False),
        ({"v1": 9000, "v2": 850}, True),
        ({"v1": 10, "v2": 0}, False),
    ],
)
def test_sample_ratio_flags_only_real_mismatches(
    observed: dict[str, float], mismatch: bool
) -> None:
    assert sample_ratio(observed, {"v1": 90.0, "v2": 10.0}).mismatch is mismatch


def test_a_version_outside_the_split_getting_users_is_a_mismatch() -> None:
    result = sample_ratio({"v1": 100, "v3": 5}, {"v1": 100.0})
    assert result.mismatch
    assert result.p_value == 0.0

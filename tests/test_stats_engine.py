"""router/stats: the engine's pieces against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.stats import sequential
from router.stats.compare import compare, difference, holm
from router.stats.guard import guard, proportions_apart
from router.stats.quantile import quantile
from router.stats.ratio import Estimate, proportion, ratio


def test_a_ratio_of_one_request_per_user_is_a_mean_with_its_textbook_variance() -> None:
    values = np.array([0, 1, 0, 0, 1, 1, 0, 1, 1, 1], dtype=float)
    est = ratio(values, np.ones_like(values))
    assert est.value == pytest.approx(0.6)
    assert est.variance == pytest.approx(values.var(ddof=1) / values.size)


def test_a_heavy_user_widens_the_ratio_interval() -> None:
    """The same requests, once as 100 users of one request each, once with one user who
    sent half of them and failed them all: clustering by user shows the uncertainty."""
    errors = np.array([1] * 5 + [0] * 95, dtype=float)
    spread = ratio(errors, np.ones(100))
    clustered = ratio(
        np.array([50] + [0] * 50, dtype=float), np.array([50] + [1] * 50, dtype=float)
    )
    assert clustered.value > spread.value
    assert clustered.variance > 10 * spread.variance


def test_an_arm_without_users_has_no_value() -> None:
    empty = ratio([], [])
    assert empty.units == 0
    assert math.isnan(empty.value)


def test_the_quantile_is_the_empirical_one_and_its_error_shrinks_with_users() -> None:
    rng = np.random.default_rng(7)
    small = rng.lognormal(2.3, 0.4, 1000)
    large = rng.lognormal(2.3, 0.4, 100_000)
    est_small = quantile(small, np.arange(small.size), 0.5)
    est_large = quantile(large, np.arange(large.size), 0.5)
    assert est_small.value == pytest.approx(float(np.quantile(small, 0.5)))
    # Theory for the median of this lognormal: se = 0.5 / sqrt(n) / density, density 0.1.
    assert math.sqrt(est_large.variance) == pytest.approx(5 / math.sqrt(large.size), rel=0.25)
    assert est_large.variance < est_small.variance / 20


def test_periods_are_weighted_by_their_users() -> None:
    a1, b1 = Estimate(0.03, 1e-5, 900), Estimate(0.03, 1e-4, 100)
    a2, b2 = Estimate(0.07, 2e-5, 800), Estimate(0.07, 5e-5, 200)
    diff, variance, units = difference([(a1, b1), (a2, b2)])
    assert diff == pytest.approx(0.0)
    assert units == 2000
    assert variance == pytest.approx(0.25 * 1.1e-4 + 0.25 * 7e-5)


def test_holm_steps_down() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == [0.5]
    assert holm([0.6, 0.9]) == pytest.approx([1.0, 1.0])


@pytest.mark.parametrize("units", [10, 1000, 100_000])
def test_the_always_valid_interval_is_wider_and_its_p_value_is_its_edge(units: int) -> None:
    rho2 = sequential.rho2_for(5000)
    variance = 0.25 / units
    half = sequential.half_width(variance, units, 0.05, rho2)
    assert half > 1.96 * math.sqrt(variance)
    # At the difference where the interval's edge touches 0, the p-value is alpha.
    assert sequential.p_value(half, variance, units, rho2) == pytest.approx(0.05)


def test_compare_reports_both_kinds_of_interval() -> None:
    base, cand = Estimate(0.05, 2.4e-6, 20_000), Estimate(0.06, 2.8e-6, 20_000)
    result = compare([(base, cand)])
    assert result.diff == pytest.approx(0.01)
    low, high = result.ci95
    av_low, av_high = result.always_valid_ci95
    assert av_low < low < 0.01 < high < av_high
    assert result.p_value < result.always_valid_p < 0.05


def test_a_rate_of_zero_still_has_an_interval() -> None:
    """No error in either arm: the difference is 0, but not known to be exactly 0."""
    none = proportion(np.zeros(500), np.ones(500))
    assert none.value == 0.0
    assert none.variance > 0
    result = compare([(none, proportion(np.zeros(400), np.ones(400)))])
    assert result.ci95[0] < 0 < result.ci95[1]
    assert result.p_value == pytest.approx(1.0)
    # With hundreds of users the pseudo-users change the variance by about 1%.
    rng = np.random.default_rng(3)
    errors = (rng.random(1000) < 0.1).astype(float)
    assert proportion(errors, np.ones(1000)).variance == pytest.approx(
        ratio(errors, np.ones(1000)).variance, rel=0.02
    )


def _rates(errors: int, n: int) -> Estimate:
    return proportion(np.r_[np.ones(errors), np.zeros(n - errors)], np.ones(n))


def test_the_rollback_test_of_a_rate_uses_the_variance_at_the_margin() -> None:
    # A candidate at 3% errors against a control at 1%, margin 0.5 pp: the observed
    # variance (at 3%) leaves the lower bound below the margin; the variance the candidate
    # would have at the margin (1.5%) does not.
    candidate, control = _rates(30, 1000), _rates(190, 19_000)
    gap, variance_at = proportions_apart(candidate, control, higher_is_worse=True)
    wald = guard(gap, 0.005, 0.025, 10_000)
    score = guard(gap, 0.005, 0.025, 10_000, variance_at)
    assert wald.worse == score.worse == pytest.approx(0.02)
    assert not wald.violated
    assert wald.bounds[0] < 0.005
    assert score.violated
    assert score.bounds[0] > 0.005
    assert score.p_value < 0.025 < wald.p_value
    assert score.bounds[1] == wald.bounds[1]  # advancing is tested as before


@given(
    st.integers(0, 200), st.integers(200, 2000), st.integers(0, 400), st.integers(2000, 20_000),
    st.floats(0.001, 0.05), st.booleans(),
)  # fmt: skip
def test_a_rate_guard_is_violated_exactly_when_its_lower_bound_is_past_the_margin(
    c_errors: int, c_n: int, k_errors: int, k_n: int, margin: float, higher_is_worse: bool
) -> None:
    candidate, control = _rates(c_errors, c_n), _rates(k_errors, k_n)
    gap, variance_at = proportions_apart(candidate, control, higher_is_worse)
    g = guard(gap, margin, 0.025, 5_000, variance_at)
    plain = guard(gap, margin, 0.025, 5_000)
    assert g.violated == (g.bounds[0] > margin) or math.isclose(g.bounds[0], margin, abs_tol=1e-9)
    assert g.bounds[0] >= plain.bounds[0] - 1e-12  # never less sure than the observed variance
    assert g.violated >= plain.violated
    assert g.within == plain.within

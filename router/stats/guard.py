"""A guardrail of a guarded rollout: is the candidate worse than the control by more than a
margin? Always valid, one-sided, so the controller may look at every interval.

`worse` is an estimate of how much worse the candidate is (positive: worse), with its
variance and units. With the two-sided confidence sequence of sequential.py at level
2 * alpha, each of its bounds is a one-sided, always-valid bound at level alpha:

- **violated** when the lower bound is above the margin: with confidence, the candidate is
  worse by more than the margin (the controller rolls back);
- **within** when the upper bound is below the margin: with confidence, it is not (one of
  the conditions to advance).

With neither, the evidence is not enough yet. `alpha` here is one guardrail's share of the
rollout's (the family of guardrails shares it, Bonferroni).

A proportion's variance depends on the proportion, so the rollback test of a gap between
two proportions can use the variance the candidate would have if the gap were exactly the
margin (the null's boundary), as the score test of a non-inferiority margin does
(Farrington and Manning, "Test statistics and sample size formulae for comparative binomial
trials with null hypothesis of non-zero risk difference", Statistics in Medicine, 1990),
scaled by the design effect the user-level estimate observed. `variance_at(gap)` gives it;
the test takes the smaller of it and the observed variance. At the boundary the two agree
(both are consistent there), so the test keeps its level; beyond the margin the candidate's
rate is further from the control's and its observed variance is the larger one, so a
harmful candidate is rolled back sooner: about twice as fast for an error rate that
triples.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from router.stats import sequential
from router.stats.ratio import Estimate


@dataclass(frozen=True, slots=True)
class Guard:
    worse: float  # the candidate minus the control, in the direction of harm
    ci95: tuple[float, float]  # always-valid 95% interval of `worse`, for people to read
    bounds: tuple[float, float]  # the decision's one-sided always-valid bounds (level alpha)
    p_value: float  # always-valid, one-sided: "worse by more than the margin"
    violated: bool
    within: bool
    units: int


def guard(
    worse: Estimate,
    margin: float,
    alpha: float,
    t_opt: float,
    variance_at: Callable[[float], float] | None = None,
) -> Guard:
    """The guardrail's verdict on `worse` (see the module's docstring)."""
    nan2 = (math.nan, math.nan)
    if worse.units < 2 or not math.isfinite(worse.variance) or not math.isfinite(worse.value):
        return Guard(worse.value, nan2, nan2, math.nan, False, False, worse.units)
    value, variance, units = worse.value, worse.variance, worse.units
    if variance == 0:  # every unit alike: the estimate is exact
        exact = (value, value)
        return Guard(value, exact, exact, 0.0 if value > margin else 1.0,
                     value > margin, value < margin, units)  # fmt: skip
    wide = sequential.half_width(variance, units, 0.05, sequential.rho2_for(t_opt, 0.05))
    rho2 = sequential.rho2_for(t_opt, 2 * alpha)
    half = sequential.half_width(variance, units, 2 * alpha, rho2)

    def under(gap: float) -> float:  # the variance if the truth were `gap`
        return variance if variance_at is None else min(variance, variance_at(gap))

    def beyond(gap: float) -> bool:  # "worse by at most gap" is rejected
        return value - gap > sequential.half_width(under(gap), units, 2 * alpha, rho2)

    p = 1.0
    if value > margin:  # the two-sided p of "worse == margin", halved: one side
        p = min(1.0, sequential.p_value(value - margin, under(margin), units, rho2) / 2)
    return Guard(
        worse=value,
        ci95=(value - wide, value + wide),
        bounds=(_lowest_kept(beyond, value - half, value), value + half),
        p_value=p,
        violated=beyond(margin),
        within=value + half < margin,
        units=units,
    )


def _lowest_kept(beyond: Callable[[float], bool], low: float, high: float) -> float:
    """The lower bound by inverting the test: the smallest gap it does not reject, between
    `low` (rejected: the observed variance is the largest the test uses) and `high` (the
    estimate itself, never rejected)."""
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if beyond(middle) else (low, middle)
    return high


def proportions_apart(
    candidate: Estimate, control: Estimate, higher_is_worse: bool
) -> tuple[Estimate, Callable[[float], float]]:
    """How much worse the candidate's proportion is than the control's (an error rate:
    higher is worse; accuracy: lower is), and the variance of that gap if the truth were a
    given gap: the candidate's variance rescaled from its rate to the rate the gap implies
    (see the module's docstring)."""
    worse = difference(candidate, control) if higher_is_worse else difference(control, candidate)
    sign = 1.0 if higher_is_worse else -1.0
    spread = candidate.value * (1 - candidate.value)

    def variance_at(gap: float) -> float:
        rate = min(max(control.value + sign * gap, 0.0), 1.0)
        if spread <= 0:
            return math.inf  # no design effect to scale: the observed variance stands
        return control.variance + candidate.variance * rate * (1 - rate) / spread

    return worse, variance_at


def difference(candidate: Estimate, control: Estimate) -> Estimate:
    """candidate - control, independent arms."""
    return Estimate(
        candidate.value - control.value,
        candidate.variance + control.variance,
        candidate.units + control.units,
    )


def relative(candidate: Estimate, control: Estimate) -> Estimate:
    """candidate / control - 1 (a relative increase), by the delta method."""
    if control.value <= 0 or not math.isfinite(control.value):
        return Estimate(math.nan, math.nan, candidate.units + control.units)
    ratio = candidate.value / control.value
    variance = (candidate.variance + ratio * ratio * control.variance) / control.value**2
    return Estimate(ratio - 1, variance, candidate.units + control.units)


def sample_ratio_p(candidate_units: int, control_units: int, candidate_share: float) -> float:
    """Two-sided p-value of the candidate's share of units against the split's (the
    chi-square test with one degree of freedom, as a z-test)."""
    n = candidate_units + control_units
    if n == 0 or not 0 < candidate_share < 1:
        return 1.0
    expected = n * candidate_share
    z = (candidate_units - expected) / math.sqrt(n * candidate_share * (1 - candidate_share))
    return math.erfc(abs(z) / math.sqrt(2))

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
"""

from __future__ import annotations

import math
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


def guard(worse: Estimate, margin: float, alpha: float, t_opt: float) -> Guard:
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
    low, high = value - half, value + half
    p = 1.0
    if value > margin:  # the two-sided p of "worse == margin", halved: one side
        p = min(1.0, sequential.p_value(value - margin, variance, units, rho2) / 2)
    return Guard(
        worse=value,
        ci95=(value - wide, value + wide),
        bounds=(low, high),
        p_value=p,
        violated=low > margin,
        within=high < margin,
        units=units,
    )


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

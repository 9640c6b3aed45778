"""A candidate against a baseline: the difference, its fixed-horizon interval and p-value,
and its always-valid ones (sequential.py); periods of constant split combined; Holm's
adjustment when several candidates face one baseline."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from router.stats import Z95, sequential
from router.stats.ratio import Estimate


@dataclass(frozen=True, slots=True)
class Comparison:
    diff: float  # candidate minus baseline
    ci95: tuple[float, float]
    p_value: float  # fixed horizon: valid for one look at a size fixed in advance
    always_valid_ci95: tuple[float, float]
    always_valid_p: float  # valid however often it is looked at
    units: int


def difference(parts: Sequence[tuple[Estimate, Estimate]]) -> tuple[float, float, int]:
    """(baseline, candidate) per period of constant split -> the difference, its variance
    and its units. Each period's difference is weighted by its units (users), so a drift
    over the day that moves every version alike, or a ramp that changes the split, never
    shows up as a difference between versions. Periods without a variance are left out."""
    usable = [
        (b.value - a.value, a.variance + b.variance, a.units + b.units)
        for a, b in parts
        if math.isfinite(a.variance) and math.isfinite(b.variance)
    ]
    units = sum(n for _, _, n in usable)
    if units == 0:
        return float("nan"), float("nan"), 0
    diff = sum(n * d for d, _, n in usable) / units
    variance = sum((n / units) ** 2 * v for _, v, n in usable)
    return diff, variance, units


def compare(
    parts: Sequence[tuple[Estimate, Estimate]],
    *,
    alpha: float = 0.05,
    t_opt: float = sequential.DEFAULT_T_OPT,
) -> Comparison:
    """Candidate against baseline over the periods in `parts` (see `difference`)."""
    diff, variance, units = difference(parts)
    if units == 0 or not variance >= 0:
        nan2 = (float("nan"), float("nan"))
        return Comparison(diff, nan2, float("nan"), nan2, float("nan"), units)
    if variance == 0:  # every user alike in each arm: the difference is exact
        p = 1.0 if diff == 0 else 0.0
        return Comparison(diff, (diff, diff), p, (diff, diff), p, units)
    se = math.sqrt(variance)
    p_value = math.erfc(abs(diff) / se / math.sqrt(2))
    rho2 = sequential.rho2_for(t_opt, alpha)
    half = sequential.half_width(variance, units, alpha, rho2)
    return Comparison(
        diff=diff,
        ci95=(diff - Z95 * se, diff + Z95 * se),
        p_value=p_value,
        always_valid_ci95=(diff - half, diff + half),
        always_valid_p=sequential.p_value(diff, variance, units, rho2),
        units=units,
    )


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment: the family of comparisons keeps its error rate."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted

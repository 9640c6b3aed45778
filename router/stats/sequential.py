"""Always-valid inference: the asymptotic confidence sequence of Waudby-Smith, Arbour,
Sinha, Kennedy and Ramdas, "Time-uniform central limit theory and asymptotic confidence
sequences" (Annals of Statistics, 2024), with the normal-mixture (conjugate) boundary, as
GrowthBook's sequential testing uses it.

For an estimate whose variance is s^2 / t after t units, the interval at every t is

    estimate +- s * sqrt( 2 (t rho^2 + 1) / (t^2 rho^2) * log( sqrt(t rho^2 + 1) / alpha ) )

and it covers the truth at all t at once with probability about 1 - alpha, however often
it is looked at. rho^2 is its one tuning constant: the interval is narrowest near the number
of units `t_opt` it is tuned for (rho^2 chosen as in the paper's approximation).
"""

from __future__ import annotations

import math

DEFAULT_T_OPT = 5000  # units where the interval is tightest (GrowthBook's default tuning)


def rho2_for(t_opt: float, alpha: float = 0.05) -> float:
    """The mixture's rho^2 that makes the boundary tightest near `t_opt` units."""
    log_alpha = -2 * math.log(alpha)
    return (log_alpha + math.log(log_alpha + 1)) / t_opt


def half_width(variance: float, units: int, alpha: float, rho2: float) -> float:
    """Half the width of the confidence sequence for an estimate of `variance` after
    `units` units (its variance times units is the per-unit variance s^2)."""
    if units < 1 or not variance >= 0:
        return math.inf
    t = units
    s = math.sqrt(variance * t)
    return s * math.sqrt(
        2 * (t * rho2 + 1) / (t * t * rho2) * math.log(math.sqrt(t * rho2 + 1) / alpha)
    )


def p_value(estimate: float, variance: float, units: int, rho2: float) -> float:
    """The always-valid p-value of "the truth is 0": the smallest alpha whose confidence
    sequence, at these units, leaves 0 out. It may be read at every look."""
    if units < 1 or not variance > 0:
        return 1.0
    t = units
    exponent = estimate * estimate * t * rho2 / (2 * variance * (t * rho2 + 1))
    return min(1.0, math.sqrt(t * rho2 + 1) * math.exp(-exponent))

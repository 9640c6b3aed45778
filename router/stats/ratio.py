"""A ratio metric with the user as the unit (Deng, Knoblich and Lu, "Applying the Delta
Method in Metric Analytics", KDD 2018, section 3).

An error rate is errors / requests summed over the users of an arm. Requests of one user
are not independent (a heavy user sends many, with a propensity of their own), so the
variance is that of a ratio of two means over users, by the delta method:

    R = mean(y) / mean(n)
    Var(R) ~ (1/N) (s_y^2 / mu_n^2 - 2 mu_y s_yn / mu_n^3 + mu_y^2 s_n^2 / mu_n^4)

with y and n each user's sum and count, and N the number of users. A request without a
user id is a user of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike


@dataclass(frozen=True, slots=True)
class Estimate:
    """One arm's value, the variance of that value, and the number of units it stands on."""

    value: float
    variance: float
    units: int


def ratio(numerators: ArrayLike, denominators: ArrayLike) -> Estimate:
    """sum(numerators) / sum(denominators) over users, with its delta-method variance.

    `numerators[i]` and `denominators[i]` belong to user i (errors and requests, say);
    users with a zero denominator are none of the metric's business and must be left out.
    """
    y = np.asarray(numerators, dtype=np.float64)
    n = np.asarray(denominators, dtype=np.float64)
    units = int(y.size)
    if units == 0 or not n.any():
        return Estimate(float("nan"), float("nan"), units)
    mu_y, mu_n = y.mean(), n.mean()
    value = float(mu_y / mu_n)
    if units < 2:
        return Estimate(value, float("nan"), units)
    dy, dn = y - mu_y, n - mu_n
    s_yy = float(dy @ dy) / (units - 1)
    s_nn = float(dn @ dn) / (units - 1)
    s_yn = float(dy @ dn) / (units - 1)
    variance = (s_yy / mu_n**2 - 2 * mu_y * s_yn / mu_n**3 + mu_y**2 * s_nn / mu_n**4) / units
    return Estimate(value, max(float(variance), 0.0), units)


def proportion(numerators: ArrayLike, denominators: ArrayLike) -> Estimate:
    """A ratio of counts that lies in [0, 1] (errors / requests, correct / labelled): its
    value from the data, its variance from the data plus two pseudo-users, one with a
    success and one with a failure (Agresti and Caffo, "Simple and effective confidence
    intervals for proportions and differences of proportions", The American Statistician,
    2000). At a rate of 0 or 1 the delta method alone has no spread to work with and would
    claim an exact answer; the two pseudo-users cost nothing once users number hundreds."""
    y = np.asarray(numerators, dtype=np.float64)
    n = np.asarray(denominators, dtype=np.float64)
    raw = ratio(y, n)
    if raw.units == 0:
        return raw
    padded = ratio(np.r_[y, 1.0, 0.0], np.r_[n, 1.0, 1.0])
    return Estimate(raw.value, padded.variance, raw.units)

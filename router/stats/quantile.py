"""A latency quantile with the user as the unit (Deng, Knoblich and Lu, KDD 2018, section
4.3: quantile metrics), in linear time and on all the data.

The quantile xi of all requests is the point where the share of requests at or below it
is q. That share is a ratio metric over users (requests at or below xi / requests), so its
variance s_F^2 comes from the delta method, clustered by user. The interval for the share,
q +- z s_F, maps through the empirical quantile function to an interval for xi, and its
width gives xi's standard error: se = (Q(q + z s_F) - Q(q - z s_F)) / 2z.

`quantile_from` takes what a database computes well (per-user counts, and quantiles at any
probability), so the report never loads every request into memory; `quantile` does it all
from arrays.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

from router.stats import Z95
from router.stats.ratio import Estimate, ratio


def probabilities(q: float, below: ArrayLike, counts: ArrayLike) -> tuple[float, float] | None:
    """q -+ z s_F: where the quantile's interval ends, as probabilities; None with too few
    users to tell. `below[i]` of user i's `counts[i]` requests are at or below the quantile."""
    share = ratio(below, counts)
    if not math.isfinite(share.variance):
        return None
    s_f = math.sqrt(share.variance)
    return max(0.0, q - Z95 * s_f), min(1.0, q + Z95 * s_f)


def quantile_from(value: float, low: float, high: float, units: int) -> Estimate:
    """The quantile `value` with the standard error its mapped interval [low, high] gives."""
    se = (high - low) / (2 * Z95)
    return Estimate(value, se * se, units)


def quantile(values: ArrayLike, users: ArrayLike, q: float) -> Estimate:
    """The q-quantile of `values` (one per request) and its variance, the requests of a
    user (`users[i]`, codes 0..U-1) counted as one unit."""
    x = np.asarray(values, dtype=np.float64)
    u = np.asarray(users, dtype=np.int64)
    if x.size == 0:
        return Estimate(float("nan"), float("nan"), 0)
    xi = float(np.quantile(x, q))  # a partition, not a sort: linear time
    counts = np.bincount(u).astype(np.float64)
    below = np.bincount(u, weights=(x <= xi).astype(np.float64))
    seen = counts > 0
    units = int(seen.sum())
    ends = probabilities(q, below[seen], counts[seen])
    if ends is None:
        return Estimate(xi, float("nan"), units)
    low, high = (float(v) for v in np.quantile(x, ends))
    return quantile_from(xi, low, high, units)

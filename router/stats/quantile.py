"""A latency quantile with the user as the unit (Deng, Knoblich and Lu, KDD 2018, section
4.3: quantile metrics), in linear time and on all the data.

The quantile xi of all requests is the point where the share of requests at or below it
is q. That share is a ratio metric over users (requests at or below xi / requests), so its
variance s_F^2 comes from the delta method, clustered by user. The interval for the share,
q +- z s_F, maps through the empirical quantile function to an interval for xi, and its
width gives xi's standard error: se = (Q(q + z s_F) - Q(q - z s_F)) / 2z.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

from router.stats.ratio import Estimate, ratio

Z95 = 1.959963984540054


def quantile(values: ArrayLike, users: ArrayLike, q: float) -> Estimate:
    """The q-quantile of `values` (one per request) and its variance, the requests of a
    user (`users[i]`, codes 0..U-1) counted as one unit."""
    x = np.asarray(values, dtype=np.float64)
    u = np.asarray(users, dtype=np.int64)
    if x.size == 0:
        return Estimate(float("nan"), float("nan"), 0)
    ordered = np.sort(x)
    xi = float(np.quantile(ordered, q))
    below = np.bincount(u, weights=(x <= xi).astype(np.float64))
    counts = np.bincount(u).astype(np.float64)
    seen = counts > 0
    share = ratio(below[seen], counts[seen])
    if not math.isfinite(share.variance):  # too few users
        return Estimate(xi, float("nan"), share.units)
    s_f = share.variance**0.5
    low = float(np.quantile(ordered, max(0.0, q - Z95 * s_f)))
    high = float(np.quantile(ordered, min(1.0, q + Z95 * s_f)))
    se = (high - low) / (2 * Z95)
    return Estimate(xi, se * se, share.units)

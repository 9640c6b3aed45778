"""Each candidate against the baseline, with the statistics engine (router/stats): the user
as the unit, periods of constant split compared apart, fixed-horizon and always-valid
intervals and p-values, Holm's adjustment for several candidates. docs/statistics.md says
what each number means."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np

from router.report.engine import Engine, as_engine
from router.report.users import IN_RANDOMISED, QUANTILES, TIMINGS, Users, timing_column
from router.stats import Z95
from router.stats.compare import Comparison, compare, holm
from router.stats.quantile import probabilities, quantile_from
from router.stats.ratio import Estimate, proportion, ratio

_VERDICT_ALPHA = 0.05

Periods = dict[str, Estimate]  # config digest -> one version's estimate in that period
Pooled = dict[str, np.ndarray]  # column -> per-user sums of one version (Users.pooled)
Estimator = Callable[[np.ndarray, np.ndarray], Estimate]
Quantiles = dict[str, dict[str, dict[str, Estimate]]]  # timing -> version -> "p50" -> estimate

# Quality from feedback: categorical labels give accuracy, real-valued ones mean absolute
# error: (numerator, denominator, estimator) over the per-user columns of users.py.
QUALITY: dict[str, tuple[str, str, Estimator]] = {
    "accuracy": ("correct", "labelled", proportion),
    "mae": ("abs_error", "scored", ratio),
}


@dataclass(frozen=True)
class Analysis:
    intervals: dict[str, dict[str, list[float | None] | None]]  # version -> "*_ci95" keys
    vs_baseline: dict[str, dict[str, Any]]  # candidate -> its `vs_baseline`
    adjustment: str | None  # "holm" with 2+ candidates


def analyse(
    engine: Engine | duckdb.DuckDBPyConnection,
    model: str,
    users: Users,
    base: str | None,
    versions: dict[str, dict[str, Any]],
    quality: str | None,
    t_opt: float,
) -> Analysis:
    """Every interval of the versions table, and each candidate against `base`."""
    con = as_engine(engine)
    pooled = {name: users.pooled(name) for name in versions}
    intervals = {name: _intervals(p) for name, p in pooled.items()}
    if base is None:
        return Analysis(intervals, {}, None)
    quantiles = {t: _quantiles(con, model, pooled, versions, t) for t in users.timings}
    vs, adjustment = _comparisons(users, list(versions), quantiles, base, quality, t_opt)
    return Analysis(intervals, vs, adjustment)


def _comparisons(
    users: Users,
    in_order: list[str],
    quantiles: Quantiles,
    base: str,
    quality: str | None,
    t_opt: float,
) -> tuple[dict[str, dict[str, Any]], str | None]:
    """`vs_baseline` for each candidate, and the adjustment made to its p-values."""
    errors = _per_period(users, "errors", "n", proportion)
    scores = _per_period(users, *QUALITY[quality]) if quality else {}
    found: dict[str, tuple[Comparison, Comparison | None, dict[str, Any]]] = {}
    for name in in_order:
        if name == base:
            continue
        error = compare(_paired(errors.get(base, {}), errors.get(name, {})), t_opt=t_opt)
        both = _paired(scores.get(base, {}), scores.get(name, {}))
        timed = {t: _differences(quantiles.get(t, {}), base, name) for t in TIMINGS}
        found[name] = (error, compare(both) if both else None, timed)
    adjust = len(found) >= 2
    names = list(found)
    fixed = _holm([found[n][0].p_value for n in names], adjust)
    always = _holm([found[n][0].always_valid_p for n in names], adjust)
    quality_p = _holm([s.p_value if (s := found[n][1]) else math.nan for n in names], adjust)
    out = {}
    for i, name in enumerate(names):
        error, scored, timed = found[name]
        p, av = _finite(fixed[i]), _finite(always[i])
        out[name] = {
            "error_rate_diff": _finite(error.diff),
            "ci95": _pair(error.ci95),
            "p_value": p,
            "always_valid": {"ci95": _pair(error.always_valid_ci95), "p_value": av},
            "significant": bool(av is not None and av < _VERDICT_ALPHA),  # always valid
            "adjusted": adjust,
            "users": error.units,
            **timed,  # latency_ms, and first_byte_ms (null unless both versions have it)
        }
        for metric in QUALITY:
            mine = scored if metric == quality else None
            out[name][f"{metric}_diff"] = _finite(mine.diff) if mine else None
            out[name][f"{metric}_ci95"] = _pair(mine.ci95) if mine else None
            out[name][f"{metric}_p_value"] = _finite(quality_p[i]) if mine else None
    return out, ("holm" if adjust else None)


def _holm(p_values: list[float], adjust: bool) -> list[float]:
    """Holm-adjusted when asked, over the comparisons that have a p-value."""
    present = [i for i, p in enumerate(p_values) if math.isfinite(p)]
    if not adjust or not present:
        return p_values
    adjusted = list(p_values)
    for i, p in zip(present, holm([p_values[i] for i in present]), strict=True):
        adjusted[i] = p
    return adjusted


def _paired(base: Periods, candidate: Periods) -> list[tuple[Estimate, Estimate]]:
    """The periods where both versions have users, in a fixed order."""
    return [(base[c], candidate[c]) for c in sorted(base.keys() & candidate.keys())]


def _per_period(
    users: Users, numerator: str, denominator: str, estimator: Estimator
) -> dict[str, Periods]:
    """Per version and period: the metric over the users it concerns (those with a
    non-zero denominator: every user for the error rate, the labelled ones for quality)."""
    out: dict[str, Periods] = {}
    c = users.columns
    for version, config, start, end in users.spans():
        den = c[denominator][start:end]
        keep = den > 0
        if keep.any():
            value = estimator(c[numerator][start:end][keep], den[keep])
            out.setdefault(version, {})[config] = value
    return out


def _intervals(pooled: Pooled) -> dict[str, list[float | None] | None]:
    """The versions table's 95% intervals, users as units, all periods together."""
    mse = _estimate(pooled, "sq_error", "scored", ratio)
    rmse: list[float | None] | None = None
    if mse is not None and math.isfinite(mse.variance):
        low, high = interval(mse, low=0.0)
        rmse = [math.sqrt(low), math.sqrt(high)]  # sqrt is monotone: the MSE's ends map
    return {
        "error_rate_ci95": _maybe(_estimate(pooled, "errors", "n", proportion), high=1.0),
        "accuracy_ci95": _maybe(_estimate(pooled, "correct", "labelled", proportion), high=1.0),
        "mae_ci95": _maybe(_estimate(pooled, "abs_error", "scored", ratio)),
        "rmse_ci95": rmse,
    }


def _estimate(pooled: Pooled, numerator: str, denominator: str, f: Estimator) -> Estimate | None:
    keep = pooled[denominator] > 0
    if not keep.any():
        return None
    return f(pooled[numerator][keep], pooled[denominator][keep])


def interval(e: Estimate, low: float = 0.0, high: float = math.inf) -> tuple[float, float]:
    """value -+ z se, kept within what the metric can be; a single user gives no spread
    to estimate from, so nothing narrower than the whole range."""
    if not math.isfinite(e.variance):
        return (low, high)
    half = Z95 * math.sqrt(e.variance)
    return (max(low, e.value - half), min(high, e.value + half))


def _maybe(e: Estimate | None, high: float = math.inf) -> list[float | None] | None:
    """The interval, or None where there is no metric or no bounded interval to give."""
    if e is None or (high == math.inf and not math.isfinite(e.variance)):
        return None
    return _pair(interval(e, 0.0, high))


def _quantiles(
    con: Engine,
    model: str,
    pooled: dict[str, Pooled],
    versions: dict[str, dict[str, Any]],
    timing: str,
) -> dict[str, dict[str, Estimate]]:
    """Per version that has values of `timing` (one of users.TIMINGS), its p50 and p95
    over all its randomised requests with users as units: the values the table shows (so a
    difference is the difference of the table's), intervals from the per-user counts at or
    below them."""
    ends: dict[str, dict[str, tuple[float, float] | None]] = {}
    units: dict[str, int] = {}
    shown = {version: s[timing] for version, s in versions.items() if s[timing] is not None}
    for version in shown:
        timed = pooled[version][timing_column(timing, "timed")]
        seen = timed > 0
        units[version] = int(seen.sum())
        ends[version] = {
            name: probabilities(q, pooled[version][timing_column(timing, name)][seen], timed[seen])
            for name, q in QUANTILES
        }
    at = _quantiles_at(con, model, ends, timing)
    out: dict[str, dict[str, Estimate]] = {}
    for version, values in shown.items():
        out[version] = {}
        for name, _ in QUANTILES:
            value, pair = values[name], ends[version][name]
            if value is None or pair is None:
                nan = float("nan")
                out[version][name] = Estimate(nan if value is None else value, nan, units[version])
            else:
                low, high = at[version][pair[0]], at[version][pair[1]]
                out[version][name] = quantile_from(value, low, high, units[version])
    return out


def _quantiles_at(
    con: Engine,
    model: str,
    ends: dict[str, dict[str, tuple[float, float] | None]],
    timing: str,
) -> dict[str, dict[float, float]]:
    """`timing` at each probability the intervals need, per version, in one query."""
    if timing not in TIMINGS:  # a column name spliced into SQL: only ours, never the log's
        raise ValueError(f"no timing {timing!r}; expected one of {', '.join(TIMINGS)}")
    wanted = sorted({p for per in ends.values() for pair in per.values() if pair for p in pair})
    if not wanted:
        return {}
    rows = con.execute(
        f"""
        SELECT r.assigned_version, {con.dialect.quantiles(f"r.{timing}", wanted)}
        FROM requests r
        WHERE r.model = $model AND {IN_RANDOMISED} AND r.assigned_version IS NOT NULL
        GROUP BY 1
        """,
        {"model": model},
    ).fetchall()
    return {
        version: dict(zip(wanted, (float(v) for v in values), strict=True))
        for version, values in rows
        if values is not None
    }


def _differences(
    per_version: dict[str, dict[str, Estimate]], base: str, candidate: str
) -> dict[str, Any] | None:
    """p50 and p95 differences of one timing with their intervals; None when either
    version has no values of it."""
    if base not in per_version or candidate not in per_version:
        return None
    out: dict[str, Any] = {}
    for name, _ in QUANTILES:
        result = compare([(per_version[base][name], per_version[candidate][name])])
        out[f"{name}_diff"] = _finite(result.diff)
        out[f"{name}_ci95"] = _pair(result.ci95)
    return out


def _finite(value: float) -> float | None:
    """A float for JSON: None for nan and inf (not rounded: the engine's values as they are)."""
    return None if not math.isfinite(value) else float(value)


def _pair(pair: tuple[float, float]) -> list[float | None]:
    return [_finite(pair[0]), _finite(pair[1])]

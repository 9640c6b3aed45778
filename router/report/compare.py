"""Each candidate against the baseline, with the statistics engine (router/stats): the user
as the unit, periods of constant split compared apart, fixed-horizon and always-valid
intervals and p-values, Holm's adjustment for several candidates. docs/statistics.md says
what each number means."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np

from router.stats.compare import Comparison, compare, holm
from router.stats.quantile import probabilities, quantile_from
from router.stats.ratio import Estimate, proportion

RANDOMISED = ("split", "no_user_random")
ERRORS = ("server_error", "timeout", "unavailable")
_IN_RANDOMISED = f"r.assigned_by IN {RANDOMISED}"
_IS_ERROR = f"r.outcome IN {ERRORS}"
_UNIT = "coalesce(r.user_h, r.rid)"  # a request without a user id is a user of its own
_NUMBER = "('BIGINT', 'UBIGINT', 'DOUBLE')"
# A label and a prediction compare as JSON values: numbers by value (1 equals 1.0; true is
# not 1, a boolean being no number), anything else by its JSON text.
SAME_LABEL = (
    f"CASE WHEN json_type(f.label) IN {_NUMBER} AND json_type(r.prediction) IN {_NUMBER} "
    "THEN f.label::DOUBLE = r.prediction::DOUBLE ELSE f.label = r.prediction END"
)
_VERDICT_ALPHA = 0.05

Periods = dict[str, Estimate]  # config digest -> one version's estimate in that period


def comparisons(
    con: duckdb.DuckDBPyConnection, model: str, base: str, versions: dict[str, dict[str, Any]]
) -> tuple[dict[str, dict[str, Any]], str | None]:
    """`vs_baseline` for each candidate, and the adjustment made to its p-values."""
    users = _users(con, model, versions)
    errors, accuracy = _per_period(users)
    quantiles = _quantiles(con, model, users, versions)
    found: dict[str, tuple[Comparison, Comparison | None, dict[str, Any]]] = {}
    for name in versions:
        if name == base:
            continue
        error = compare(_paired(errors.get(base, {}), errors.get(name, {})))
        correct = _paired(accuracy.get(base, {}), accuracy.get(name, {}))
        labelled = compare(correct) if correct else None
        latency = _latency(quantiles[base], quantiles[name])
        found[name] = (error, labelled, latency)
    adjust = len(found) >= 2
    names = list(found)
    fixed = holm([found[n][0].p_value for n in names]) if adjust else None
    always = holm([found[n][0].always_valid_p for n in names]) if adjust else None
    out = {}
    for i, name in enumerate(names):
        error, labelled, latency = found[name]
        p = _finite(fixed[i] if fixed else error.p_value)
        av = _finite(always[i] if always else error.always_valid_p)
        out[name] = {
            "error_rate_diff": _finite(error.diff),
            "ci95": _pair(error.ci95),
            "p_value": p,
            "always_valid": {"ci95": _pair(error.always_valid_ci95), "p_value": av},
            "significant": bool(av is not None and av < _VERDICT_ALPHA),  # always valid
            "adjusted": adjust,
            "users": error.units,
            "latency_ms": latency,
            "accuracy_diff": _finite(labelled.diff) if labelled else None,
            "accuracy_ci95": _pair(labelled.ci95) if labelled else None,
            "accuracy_p_value": _finite(labelled.p_value) if labelled else None,
        }
    return out, ("holm" if adjust else None)


def _paired(base: Periods, candidate: Periods) -> list[tuple[Estimate, Estimate]]:
    """The periods where both versions have users, in a fixed order."""
    return [(base[c], candidate[c]) for c in sorted(base.keys() & candidate.keys())]


@dataclass(frozen=True)
class _Users:
    """One pass over a model's randomised requests, one row per version, period and user."""

    version: np.ndarray
    config: np.ndarray
    unit: np.ndarray
    columns: dict[str, np.ndarray]  # n, errors, labelled, correct, timed, p50, p95

    def spans(self) -> list[tuple[str, str, int, int]]:
        """(version, config, start, end) of each run of rows."""
        if self.version.size == 0:
            return []
        changed = (self.version[1:] != self.version[:-1]) | (self.config[1:] != self.config[:-1])
        starts = np.flatnonzero(np.r_[True, changed])
        ends = np.r_[starts[1:], self.version.size]
        return [
            (str(self.version[s]), str(self.config[s]), int(s), int(e))
            for s, e in zip(starts, ends, strict=True)
        ]


def _users(
    con: duckdb.DuckDBPyConnection, model: str, versions: dict[str, dict[str, Any]]
) -> _Users:
    """Per version, period and user: requests, errors, labelled and correct ones, and how
    many were at or below the version's p50 and p95 (for the quantiles' intervals). The
    thresholds come in as a small table, so no name from the log is ever spliced into SQL."""
    con.execute("CREATE OR REPLACE TEMP TABLE thresholds (version VARCHAR, p50 DOUBLE, p95 DOUBLE)")
    rows = [(name, v["latency_ms"]["p50"], v["latency_ms"]["p95"]) for name, v in versions.items()]
    if rows:
        con.executemany("INSERT INTO thresholds VALUES (?, ?, ?)", rows)
    data = con.execute(
        f"""
        SELECT r.assigned_version AS version, coalesce(r.config, '') AS config, {_UNIT} AS unit,
               count(*) AS n, count(*) FILTER (WHERE {_IS_ERROR}) AS errors,
               count(f.label) AS labelled, count(*) FILTER (WHERE {SAME_LABEL}) AS correct,
               count(r.latency_ms) AS timed,
               count(*) FILTER (WHERE r.latency_ms <= t.p50) AS p50,
               count(*) FILTER (WHERE r.latency_ms <= t.p95) AS p95
        FROM requests r
        LEFT JOIN feedback f ON f.rid = r.rid AND r.prediction IS NOT NULL
        LEFT JOIN thresholds t ON t.version = r.assigned_version
        WHERE r.model = $model AND {_IN_RANDOMISED} AND r.assigned_version IS NOT NULL
        GROUP BY ALL ORDER BY 1, 2, 3
        """,
        {"model": model},
    ).fetchnumpy()
    names = ("n", "errors", "labelled", "correct", "timed", "p50", "p95")
    return _Users(
        np.asarray(data["version"], dtype=object),
        np.asarray(data["config"], dtype=object),
        np.asarray(data["unit"]),
        {name: np.asarray(data[name], dtype=np.float64) for name in names},
    )


def _per_period(users: _Users) -> tuple[dict[str, Periods], dict[str, Periods]]:
    """Per version and period: the error rate and the accuracy of its users (delta method)."""
    errors: dict[str, Periods] = {}
    accuracy: dict[str, Periods] = {}
    c = users.columns
    for version, config, start, end in users.spans():
        errors.setdefault(version, {})[config] = proportion(
            c["errors"][start:end], c["n"][start:end]
        )
        labelled = c["labelled"][start:end] > 0
        if labelled.any():
            accuracy.setdefault(version, {})[config] = proportion(
                c["correct"][start:end][labelled], c["labelled"][start:end][labelled]
            )
    return errors, accuracy


def _quantiles(
    con: duckdb.DuckDBPyConnection,
    model: str,
    users: _Users,
    versions: dict[str, dict[str, Any]],
) -> dict[str, dict[str, Estimate]]:
    """Per version, p50 and p95 over all its randomised requests with users as units: the
    values the table shows (so a difference is the difference of the table's), intervals
    from the per-user counts of `_users`, summed over periods."""
    c = users.columns
    ends: dict[str, dict[str, tuple[float, float] | None]] = {}
    units: dict[str, int] = {}
    for version in versions:
        rows = users.version == version
        _, per_user = np.unique(users.unit[rows], return_inverse=True)
        timed = np.bincount(per_user, weights=c["timed"][rows])
        seen = timed > 0
        units[version] = int(seen.sum())
        ends[version] = {
            name: probabilities(q, np.bincount(per_user, weights=c[name][rows])[seen], timed[seen])
            for name, q in (("p50", 0.5), ("p95", 0.95))
        }
    at = _quantiles_at(con, model, ends)
    out: dict[str, dict[str, Estimate]] = {}
    for version, shown in versions.items():
        out[version] = {}
        for name in ("p50", "p95"):
            value = shown["latency_ms"][name]
            pair = ends[version][name]
            if value is None or pair is None:
                nan = float("nan")
                out[version][name] = Estimate(nan if value is None else value, nan, units[version])
            else:
                low, high = at[version][pair[0]], at[version][pair[1]]
                out[version][name] = quantile_from(value, low, high, units[version])
    return out


def _quantiles_at(
    con: duckdb.DuckDBPyConnection,
    model: str,
    ends: dict[str, dict[str, tuple[float, float] | None]],
) -> dict[str, dict[float, float]]:
    """The latency at each probability the intervals need, per version, in one query."""
    wanted = sorted({p for per in ends.values() for pair in per.values() if pair for p in pair})
    if not wanted:
        return {}
    rows = con.execute(
        f"""
        SELECT r.assigned_version, quantile_cont(r.latency_ms, $ps) FROM requests r
        WHERE r.model = $model AND {_IN_RANDOMISED} AND r.assigned_version IS NOT NULL
        GROUP BY 1
        """,
        {"model": model, "ps": wanted},
    ).fetchall()
    return {
        version: dict(zip(wanted, (float(v) for v in values), strict=True))
        for version, values in rows
        if values is not None
    }


def _latency(base: dict[str, Estimate], candidate: dict[str, Estimate]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("p50", "p95"):
        result = compare([(base[name], candidate[name])])
        out[f"{name}_diff"] = _finite(result.diff)
        out[f"{name}_ci95"] = _pair(result.ci95)
    return out


def _finite(value: float) -> float | None:
    """A float for JSON: None for nan and inf (not rounded: the engine's values as they are)."""
    return None if not math.isfinite(value) else float(value)


def _pair(pair: tuple[float, float]) -> list[float | None]:
    return [_finite(pair[0]), _finite(pair[1])]

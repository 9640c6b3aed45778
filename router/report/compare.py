"""Each candidate against the baseline, with the statistics engine (router/stats): the user
as the unit, periods of constant split compared apart, fixed-horizon and always-valid
intervals and p-values, Holm's adjustment for several candidates. docs/statistics.md says
what each number means."""

from __future__ import annotations

import math
from typing import Any

import duckdb
import numpy as np

from router.stats.compare import Comparison, compare, holm
from router.stats.quantile import probabilities, quantile_from
from router.stats.ratio import Estimate, ratio

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
    errors, accuracy = _per_period(con, model)
    quantiles = {name: _quantiles(con, model, name, versions[name]) for name in versions}
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
        p = _f(fixed[i] if fixed else error.p_value)
        av = _f(always[i] if always else error.always_valid_p)
        out[name] = {
            "error_rate_diff": _f(error.diff),
            "ci95": _pair(error.ci95),
            "p_value": p,
            "always_valid": {"ci95": _pair(error.always_valid_ci95), "p_value": av},
            "significant": bool(av is not None and av < _VERDICT_ALPHA),  # always valid
            "adjusted": adjust,
            "users": error.units,
            "latency_ms": latency,
            "accuracy_diff": _f(labelled.diff) if labelled else None,
            "accuracy_ci95": _pair(labelled.ci95) if labelled else None,
            "accuracy_p_value": _f(labelled.p_value) if labelled else None,
        }
    return out, ("holm" if adjust else None)


def _paired(base: Periods, candidate: Periods) -> list[tuple[Estimate, Estimate]]:
    """The periods where both versions have users, in a fixed order."""
    return [(base[c], candidate[c]) for c in sorted(base.keys() & candidate.keys())]


def _per_period(
    con: duckdb.DuckDBPyConnection, model: str
) -> tuple[dict[str, Periods], dict[str, Periods]]:
    """Per version and period: the error rate and the accuracy of its users (delta method)."""
    data = con.execute(
        f"""
        SELECT r.assigned_version AS version, coalesce(r.config, '') AS config,
               count(*) AS n, count(*) FILTER (WHERE {_IS_ERROR}) AS errors,
               count(f.label) AS labelled,
               count(*) FILTER (WHERE {SAME_LABEL}) AS correct
        FROM requests r LEFT JOIN feedback f ON f.rid = r.rid AND r.prediction IS NOT NULL
        WHERE r.model = $model AND {_IN_RANDOMISED} AND r.assigned_version IS NOT NULL
        GROUP BY r.assigned_version, coalesce(r.config, ''), {_UNIT}
        ORDER BY 1, 2, {_UNIT}
        """,
        {"model": model},
    ).fetchnumpy()
    errors: dict[str, Periods] = {}
    accuracy: dict[str, Periods] = {}
    versions = np.asarray(data["version"], dtype=object)
    configs = np.asarray(data["config"], dtype=object)
    if versions.size == 0:
        return errors, accuracy
    changed = (versions[1:] != versions[:-1]) | (configs[1:] != configs[:-1])
    starts = np.flatnonzero(np.r_[True, changed])
    ends = np.r_[starts[1:], versions.size]
    n = np.asarray(data["n"], dtype=np.float64)
    e = np.asarray(data["errors"], dtype=np.float64)
    lab = np.asarray(data["labelled"], dtype=np.float64)
    cor = np.asarray(data["correct"], dtype=np.float64)
    for start, end in zip(starts, ends, strict=True):
        version, config = str(versions[start]), str(configs[start])
        errors.setdefault(version, {})[config] = ratio(e[start:end], n[start:end])
        labelled = lab[start:end] > 0
        if labelled.any():
            accuracy.setdefault(version, {})[config] = ratio(
                cor[start:end][labelled], lab[start:end][labelled]
            )
    return errors, accuracy


def _quantiles(
    con: duckdb.DuckDBPyConnection, model: str, version: str, shown: dict[str, Any]
) -> dict[str, Estimate]:
    """p50 and p95 of one version over all its randomised requests, users as units: the
    values the table shows (so a difference is the difference of the table's), their
    intervals from per-user counts that DuckDB makes in one pass."""
    where = f"r.model = $model AND r.assigned_version = $version AND {_IN_RANDOMISED}"
    params: dict[str, Any] = {"model": model, "version": version}
    p50, p95 = shown["latency_ms"]["p50"], shown["latency_ms"]["p95"]
    if p50 is None or p95 is None:
        return {name: Estimate(float("nan"), float("nan"), 0) for name in ("p50", "p95")}
    data = con.execute(
        f"""
        SELECT count(*) AS n,
               count(*) FILTER (WHERE r.latency_ms <= $p50) AS p50,
               count(*) FILTER (WHERE r.latency_ms <= $p95) AS p95
        FROM requests r WHERE {where} AND r.latency_ms IS NOT NULL GROUP BY {_UNIT}
        ORDER BY {_UNIT}
        """,
        {**params, "p50": p50, "p95": p95},
    ).fetchnumpy()
    counts = np.asarray(data["n"], dtype=np.float64)
    ends = {
        name: probabilities(q, np.asarray(data[name], dtype=np.float64), counts)
        for name, q in (("p50", 0.5), ("p95", 0.95))
    }
    wanted = [p for pair in ends.values() if pair is not None for p in pair]
    at = dict(zip(wanted, _quantiles_at(con, where, params, wanted), strict=True))
    out = {}
    for name, value in (("p50", p50), ("p95", p95)):
        pair = ends[name]
        if pair is None:
            out[name] = Estimate(value, float("nan"), counts.size)
        else:
            out[name] = quantile_from(value, at[pair[0]], at[pair[1]], counts.size)
    return out


def _quantiles_at(
    con: duckdb.DuckDBPyConnection, where: str, params: dict[str, Any], probabilities: list[float]
) -> list[float]:
    if not probabilities:
        return []
    row = con.execute(
        f"SELECT quantile_cont(r.latency_ms, $ps) FROM requests r WHERE {where}",
        {**params, "ps": probabilities},
    ).fetchone()
    return [float(v) for v in row[0]] if row is not None and row[0] is not None else []


def _latency(base: dict[str, Estimate], candidate: dict[str, Estimate]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("p50", "p95"):
        result = compare([(base[name], candidate[name])])
        out[f"{name}_diff"] = _f(result.diff)
        out[f"{name}_ci95"] = _pair(result.ci95)
    return out


def _f(value: float) -> float | None:
    return None if not math.isfinite(value) else float(value)


def _pair(pair: tuple[float, float]) -> list[float | None]:
    return [_f(pair[0]), _f(pair[1])]

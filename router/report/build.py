"""From the loaded log to the report: one JSON-ready dict, rendered as text, JSON or HTML.

Only randomised traffic (`split`, `no_user_random`) enters the comparison, grouped by
`assigned_version` (intent to treat: a request counts for the version it was assigned to,
even when a fallback answered it). Pinned, header and rule traffic is shown apart: who asks
for a version is not a random sample, so comparing it would mislead.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import orjson

from router.observe.record import RANDOMISED
from router.report import stats
from router.report.baseline import default_baseline, last_splits
from router.report.compare import analyse
from router.report.engine import Engine, Source, counted
from router.report.shadow import shadow_section
from router.report.users import (
    IN_RANDOMISED,
    IS_ERROR,
    IS_REAL,
    LABELS,
    Users,
    per_user,
    same_label,
)
from router.stats.sequential import DEFAULT_T_OPT


class ReportError(Exception):
    """The report cannot answer what was asked (an unknown model or baseline)."""


def build(
    loaded: Source,
    model: str | None = None,
    baseline: str | None = None,
    *,
    t_opt: float = DEFAULT_T_OPT,
) -> dict[str, Any]:
    con = loaded.engine  # DuckDB or Spark: the same SQL (engine.py)
    models = [row[0] for row in con.execute(
        "SELECT model FROM requests WHERE model IS NOT NULL UNION "
        "SELECT model FROM shadows WHERE model IS NOT NULL ORDER BY model"
    ).fetchall()]  # fmt: skip
    if model is not None:
        if model not in models:
            raise ReportError(
                f"no model '{model}' in the log; models: {', '.join(models) or 'none'}"
            )
        models = [model]
    totals = con.execute("SELECT count(*), min(ts), max(ts) FROM requests").fetchone() or (
        0,
        None,
        None,
    )
    splits = _splits(con)
    last = last_splits(con)
    report: dict[str, Any] = {
        "files": list(loaded.files),
        "records": int(totals[0]),
        "bad_lines": loaded.bad_lines,
        "first": _iso(totals[1]),
        "last": _iso(totals[2]),
        "always_valid": {"method": "asymptotic confidence sequence", "t_opt": t_opt},
        "models": {
            name: _model(con, name, baseline, splits, last.get(name, {}), t_opt) for name in models
        },
    }
    if baseline is not None and not any(
        m["baseline"] == baseline for m in report["models"].values()
    ):
        raise ReportError(f"no version '{baseline}' in the randomised traffic of the log")
    return report


def _model(
    con: Engine,
    model: str,
    baseline: str | None,
    splits: dict[str, Any],
    last_split: dict[str, Any],
    t_opt: float,
) -> dict[str, Any]:
    """`last_split` is the split of the last table of the log that names the model."""
    versions, labels = _versions(con, model)
    base = baseline if baseline in versions else default_baseline(last_split, versions)
    quality = {"categorical": "accuracy", "real": "mae", None: None}[labels]
    users = per_user(con, model, versions)
    found = analyse(con, model, users, base, versions, quality, t_opt)
    for name, version in versions.items():
        version["mae"], version["rmse"] = _errors(users, name)
        version.update(found.intervals[name])
        if labels != "categorical":
            version["accuracy"] = version["accuracy_ci95"] = None
        if labels != "real":
            version["mae"] = version["rmse"] = version["mae_ci95"] = version["rmse_ci95"] = None
        version["vs_baseline"] = found.vs_baseline.get(name)
    return {
        "baseline": base,
        "labels": labels,
        "p_value_adjustment": found.adjustment,
        "srm": _srm(con, model, splits),
        "feedback": _feedback(con, model),
        "versions": versions,
        "shadow": shadow_section(con, model, labels),
        "by_assigned_by": _by_assigned_by(con, model),
        "timeline": _timeline(con, model),
        "latency_histogram": _histogram(con, model),
    }


def _versions(con: Engine, model: str) -> tuple[dict[str, dict[str, Any]], str | None]:
    """The versions table's values (their intervals come from compare.py), and the kind of
    labels the model's feedback has: "real" when any label is a number with a fractional
    part, "categorical" when there are others, None without any."""
    d = con.dialect
    rows = con.execute(
        f"""
        SELECT r.assigned_version,
               count(*) AS n,
               {counted(IS_ERROR)} AS errors,
               {counted("r.outcome = 'timeout'")} AS timeouts,
               count(DISTINCT r.user_h) AS users,
               {d.quantiles("r.latency_ms", (0.5, 0.95, 0.99))} AS q,
               {d.quantiles("r.first_byte_ms", (0.5, 0.95))} AS first_byte,
               count(f.label) AS labelled,
               {counted(f"f.label IS NOT NULL AND {same_label('r', d)}")} AS correct,
               coalesce(bool_or({IS_REAL}), false) AS real
        FROM requests r {LABELS}
        WHERE r.model = $model AND {IN_RANDOMISED} AND r.assigned_version IS NOT NULL
        GROUP BY r.assigned_version ORDER BY r.assigned_version
        """,
        {"model": model},
    ).fetchall()
    total = sum(row[1] for row in rows)
    versions: dict[str, dict[str, Any]] = {}
    for name, n, errors, timeouts, users, q, first_byte, labelled, correct, _ in rows:
        p50, p95, p99 = q if q is not None else (None, None, None)
        versions[name] = {
            "requests": n,
            "share": n / total if total else 0.0,
            "users": users,
            "errors": errors,
            "error_rate": errors / n,
            "timeout_rate": timeouts / n,
            "latency_ms": {"p50": _f(p50), "p95": _f(p95), "p99": _f(p99)},
            # Only with values, i.e. when the version streams (contract section 11).
            "first_byte_ms": None
            if first_byte is None
            else {"p50": _f(first_byte[0]), "p95": _f(first_byte[1])},
            "accuracy": correct / labelled if labelled else None,
            "mae": None,  # from the per-user rows (_errors), summed in a fixed order
            "rmse": None,
            "labelled": labelled,
        }
    labels = None
    if any(row[-1] for row in rows):
        labels = "real"
    elif any(row[7] for row in rows):
        labels = "categorical"
    return versions, labels


def _errors(users: Users, version: str) -> tuple[float | None, float | None]:
    """A version's mean absolute error and RMSE over its scored requests (label and
    prediction both numbers). The sums are the per-user rows' with `math.fsum`, which is
    exact and so the same in any order: a parallel SUM of doubles in SQL is not (it
    depends on how the rows fell to threads), and the JSON carries every digit."""
    rows = users.version == version
    scored = math.fsum(users.columns["scored"][rows])
    if not scored:
        return None, None
    mse = math.fsum(users.columns["sq_error"][rows]) / scored
    return math.fsum(users.columns["abs_error"][rows]) / scored, math.sqrt(mse)


def _splits(con: Engine) -> dict[str, Any]:
    """config digest -> {model: {version: percent}}, from the `config_loaded` events."""
    splits: dict[str, Any] = {}
    for digest, models in con.execute("SELECT config, models FROM configs").fetchall():
        if digest is None or models is None:
            continue
        parsed = orjson.loads(models)
        splits[digest] = {
            name: entry.get("split", {})
            for name, entry in parsed.items()
            if isinstance(entry, dict)
        }
    return splits


def _srm(con: Engine, model: str, splits: dict[str, Any]) -> dict[str, Any]:
    """Observed split users per version against the split in force for their records.

    The unit is the user (the unit of randomisation), counted once, under the table in
    force at their first request in the log (a reload does not count them again); users
    whose table's `config_loaded` event is not in the log are left out.
    Without user pseudonyms (`log.user_ids: omit`) or without any `config_loaded` event to
    match, the check cannot be made and says so (`checked: false`, `p_value: null`):
    counting requests instead would be wrong, as one user's requests are not independent.
    """
    rows, split_requests = _first_tables(con, model)
    observed: dict[str, float] = {}
    expected: dict[str, float] = {}
    per_config: dict[str, dict[str, int]] = {}
    unmatched = 0
    for digest, version, count in rows:
        split = splits.get(digest, {}).get(model)
        if split is None:
            unmatched += count
            continue
        per_config.setdefault(digest, {})[version] = count
    for digest, counts in per_config.items():
        split = splits[digest][model]
        total = sum(counts.values())
        for version, count in counts.items():
            observed[version] = observed.get(version, 0) + count
        for version, percent in split.items():
            expected[version] = expected.get(version, 0.0) + total * float(percent) / 100
    reason = None
    if not rows and split_requests:
        reason = "the log has no user pseudonyms (log.user_ids: omit)"
    elif rows and not observed:
        reason = "no config_loaded event in the log for the routing tables of these records"
    if reason is not None:
        return {"checked": False, "reason": reason, "p_value": None, "mismatch": False,
                "observed": {}, "expected": {}, "unmatched": unmatched}  # fmt: skip
    result = stats.sample_ratio(observed, expected)
    return {
        "checked": True,
        "p_value": result.p_value,
        "mismatch": result.mismatch,
        "observed": observed,
        "expected": expected,
        "unmatched": unmatched,
    }


def _feedback(con: Engine, model: str) -> dict[str, int]:
    """Feedback that found its request, feedback that found none (counted, never dropped
    silently), and request ids logged more than once (their feedback is ambiguous)."""
    row = con.execute(
        """
        WITH ids AS (SELECT rid, count(*) AS c FROM requests WHERE model = $model GROUP BY rid)
        SELECT coalesce(count_if(f.rid IS NOT NULL AND i.rid IS NOT NULL), 0),
               coalesce(count_if(i.rid IS NULL), 0), coalesce(count_if(i.c > 1), 0)
        FROM ids i FULL OUTER JOIN (SELECT rid FROM feedback WHERE model = $model) f
          ON f.rid = i.rid
        """,
        {"model": model},
    ).fetchone()
    joined, unmatched, duplicates = row if row is not None else (0, 0, 0)
    return {
        "joined": int(joined),
        "unmatched": int(unmatched),
        "duplicate_request_ids": int(duplicates),
    }


def _first_tables(con: Engine, model: str) -> tuple[list[tuple[str, str, int]], int]:
    """(config, version, users) with each split user under the table of their first
    request, in a fixed order; and how many split requests there are at all. Of two first
    requests in the same millisecond, the smaller (config, version) counts, on any engine."""
    d = con.dialect
    first = d.struct(config="config", version="assigned_version")
    order = d.struct(at=f"coalesce({d.epoch('ts')}, CAST(1e18 AS DOUBLE))",
                     config="coalesce(config, '')", version="assigned_version")  # fmt: skip
    rows = con.execute(
        f"""
        SELECT earliest.config, earliest.version, count(*) FROM (
            SELECT min_by({first}, {order}) AS earliest
            FROM requests
            WHERE model = $model AND assigned_by = 'split' AND assigned_version IS NOT NULL
              AND user_h IS NOT NULL
            GROUP BY user_h
        ) u GROUP BY ALL ORDER BY 1, 2
        """,
        {"model": model},
    ).fetchall()
    total = con.execute(
        "SELECT count(*) FROM requests WHERE model = $model AND assigned_by = 'split'",
        {"model": model},
    ).fetchone()
    return rows, int(total[0]) if total else 0


def _by_assigned_by(con: Engine, model: str) -> list[dict[str, Any]]:
    rows = con.execute(
        f"""
        SELECT assigned_by, coalesce(assigned_version, version) AS v, count(*),
               {counted(IS_ERROR)}, {con.dialect.quantiles("latency_ms", (0.5, 0.95, 0.99))},
               count(DISTINCT user_h), {counted("outcome = 'timeout'")}
        FROM requests r WHERE model = $model
        GROUP BY assigned_by, v ORDER BY assigned_by NULLS LAST, v NULLS LAST
        """,
        {"model": model},
    ).fetchall()
    out = []
    for assigned_by, version, n, errors, q, users, timeouts in rows:
        p50, p95, p99 = q if q is not None else (None, None, None)
        out.append({
            "assigned_by": assigned_by, "version": version, "requests": n,
            "randomised": assigned_by in RANDOMISED, "users": users, "error_rate": errors / n,
            "timeout_rate": timeouts / n,
            "latency_ms": {"p50": _f(p50), "p95": _f(p95), "p99": _f(p99)},
        })  # fmt: skip
    return out


_STEPS = (1, 5, 10, 30, 60, 300, 600, 1800, 3600, 6 * 3600, 86400, 7 * 86400)


def _timeline(con: Engine, model: str) -> dict[str, Any]:
    """Requests and errors per version over time, in at most about 60 steps."""
    epoch = con.dialect.epoch
    span = con.execute(
        f"SELECT {epoch('max(ts)')} - {epoch('min(ts)')}, {epoch('min(ts)')} FROM requests r "
        f"WHERE model = $model AND {IN_RANDOMISED}",
        {"model": model},
    ).fetchone()
    if span is None or span[0] is None:
        return {"step_s": None, "points": []}
    seconds, start = span
    step = next((s for s in _STEPS if seconds / s <= 60), _STEPS[-1])
    rows = con.execute(
        f"""
        SELECT CAST(floor(({epoch("ts")} - $start) / $step) AS BIGINT) AS k, assigned_version,
               count(*), {counted(IS_ERROR)}
        FROM requests r WHERE model = $model AND {IN_RANDOMISED} AND ts IS NOT NULL
        GROUP BY k, assigned_version ORDER BY k, assigned_version
        """,
        {"model": model, "start": start, "step": step},
    ).fetchall()
    points = [
        {"t": _iso_epoch(start + k * step), "version": v, "requests": n, "errors": e}
        for k, v, n, e in rows
    ]
    return {"step_s": step, "points": points}


def _histogram(con: Engine, model: str) -> dict[str, Any]:
    """Latency counts per version in log-spaced bins, 10 per decade from 0.1 ms."""
    rows = con.execute(
        f"""
        SELECT assigned_version,
               CAST(floor(log10(greatest(latency_ms, CAST(0.1 AS DOUBLE))) * 10) AS INT) AS b,
               count(*)
        FROM requests r WHERE model = $model AND {IN_RANDOMISED} AND latency_ms IS NOT NULL
        GROUP BY ALL ORDER BY 1, 2
        """,
        {"model": model},
    ).fetchall()
    bins: dict[str, list[list[float]]] = {}
    for version, b, n in rows:
        bins.setdefault(version, []).append([10 ** (b / 10), n])
    return {"bins_per_decade": 10, "versions": bins}


def _f(value: float | None) -> float | None:
    """A number for the JSON at full precision (null for none or NaN): the text and HTML
    round when they render, the data never does (contract section 14)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def _iso(value: Any) -> str | None:
    return None if value is None else value.strftime("%Y-%m-%dT%H:%M:%SZ")


def _iso_epoch(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

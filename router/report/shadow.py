"""The report's `shadow` section (contract sections 7 and 8): per shadow version, its copies,
how often its answers agree with the primary's, its error rate, the paired latency
difference, and its quality on labelled requests next to the primary's on the same ones.

Every interval takes the user as the unit (the statistics engine, router/stats): a user's
copies are alike, as their requests are.
"""

from __future__ import annotations

import math
from typing import Any

import duckdb
import numpy as np

from router.observe.record import ERROR_OUTCOMES
from router.report.compare import interval
from router.report.engine import Engine, as_engine, counted
from router.report.users import abs_error, same_label
from router.stats.quantile import quantile
from router.stats.ratio import Estimate, proportion, ratio

_UNIT = "s.unit"  # the user, else the request (read.py, spark.py)
_SENT = "s.outcome <> 'dropped'"


def shadow_section(
    engine: Engine | duckdb.DuckDBPyConnection, model: str, labels: str | None
) -> dict[str, dict[str, Any]]:
    """`{"<shadow version>": {...}}` for the model's shadow records; empty without any."""
    con = as_engine(engine)
    rows = con.execute(
        f"""
        SELECT s.version, count(*), {counted(f"NOT {_SENT}")},
               {counted(f"s.outcome IN {ERROR_OUTCOMES}")}
        FROM shadows s WHERE s.model = $model AND s.version IS NOT NULL
        GROUP BY 1 ORDER BY 1
        """,
        {"model": model},
    ).fetchall()
    out: dict[str, dict[str, Any]] = {}
    for version, copies, dropped, errors in rows:
        sent = copies - dropped
        out[version] = {
            "copies": copies,
            "dropped": dropped,
            "drop_reasons": _drop_reasons(con, model, version),
            "error_rate": errors / sent if sent else None,
            **_agreement(con, model, version),
            "latency_diff_ms": _latency(con, model, version),
            "by_primary": _by_primary(con, model, version),
            **_quality(con, model, version, labels),
        }
    return out


def _drop_reasons(con: Engine, model: str, version: str) -> dict[str, int]:
    rows = con.execute(
        """
        SELECT coalesce(drop_reason, 'unknown'), count(*) FROM shadows
        WHERE model = $model AND version = $version AND outcome = 'dropped'
        GROUP BY 1 ORDER BY 1
        """,
        {"model": model, "version": version},
    ).fetchall()
    return {reason: n for reason, n in rows}


def _agreement(con: Engine, model: str, version: str, primary: str | None = None) -> dict[str, Any]:
    """Agreement among the copies it could be judged on (both answers ok JSON), with its
    interval: a proportion over users (in the order of their units, on any engine)."""
    data = con.query(
        f"""
        SELECT {_UNIT} AS unit, count(s.agree) AS judged, {counted("s.agree")} AS agreed
        FROM shadows s
        WHERE s.model = $model AND s.version = $version AND s.agree IS NOT NULL
              AND ($primary IS NULL OR s.primary_version = $primary)
        GROUP BY {_UNIT} ORDER BY 1
        """,
        {"model": model, "version": version, "primary": primary},
    )
    judged = np.asarray(data["judged"], dtype=np.float64)
    if not judged.size:
        return {"agreement": None, "agreement_ci95": None, "judged": 0}
    e = proportion(np.asarray(data["agreed"], dtype=np.float64), judged)
    return {
        "agreement": e.value,
        "agreement_ci95": _ci(e, high=1.0),
        "judged": int(judged.sum()),
    }


def _latency(con: Engine, model: str, version: str) -> dict[str, Any] | None:
    """The median of the paired differences (the shadow's upstream_ms minus the primary's,
    on the same request), over copies the shadow answered ok; its interval with users as
    units (the delta-method quantile interval)."""
    data = con.query(
        f"""
        SELECT s.upstream_ms - s.primary_upstream_ms AS diff, {_UNIT} AS unit FROM shadows s
        WHERE s.model = $model AND s.version = $version AND s.outcome = 'ok'
              AND s.upstream_ms IS NOT NULL AND s.primary_upstream_ms IS NOT NULL
        ORDER BY 2, 1
        """,
        {"model": model, "version": version},
    )
    diffs = np.asarray(data["diff"], dtype=np.float64)
    if not diffs.size:
        return None
    _, users = np.unique(np.asarray(data["unit"], dtype=object), return_inverse=True)
    e = quantile(diffs, users, 0.5)
    return {"p50": e.value, "ci95": _ci(e, low=-math.inf)}


def _by_primary(con: Engine, model: str, version: str) -> dict[str, dict[str, Any]]:
    """Copies and agreement per version that answered the primary request."""
    rows = con.execute(
        """
        SELECT primary_version, count(*) FROM shadows
        WHERE model = $model AND version = $version AND primary_version IS NOT NULL
        GROUP BY 1 ORDER BY 1
        """,
        {"model": model, "version": version},
    ).fetchall()
    return {
        primary: {"copies": n, **_agreement(con, model, version, primary)} for primary, n in rows
    }


def _quality(con: Engine, model: str, version: str, labels: str | None) -> dict[str, Any]:
    """The shadow's accuracy (or MAE) on labelled requests that both it and the primary
    answered, next to the primary's on the same requests, and their paired difference.
    Per user, in the order of their units: correct answers are counted as integers,
    absolute errors added in ascending order (Dialect.sorted_sum), so no sum depends on
    thread scheduling (contract section 14)."""
    name = "mae" if labels == "real" else "accuracy"
    empty = {"labelled": 0, name: None, f"primary_{name}": None, f"{name}_diff": None,
             f"{name}_diff_ci95": None}  # fmt: skip
    if labels is None:
        return empty
    d = con.dialect
    if labels == "real":
        mine, theirs, count = abs_error("s"), abs_error("r"), f"count({abs_error('s')})"
        sums = d.sorted_sum(mine), d.sorted_sum(theirs)
    else:
        mine = f"CAST(({same_label('s', d)}) AS INT)"
        theirs = f"CAST(({same_label('r', d)}) AS INT)"
        count = "count(*)"
        sums = f"coalesce(sum({mine}), 0)", f"coalesce(sum({theirs}), 0)"
    data = con.query(
        f"""
        SELECT {_UNIT} AS unit, {count} AS n, {sums[0]} AS shadow, {sums[1]} AS primary_
        FROM shadows s
        JOIN feedback f ON f.rid = s.rid
        JOIN requests r ON r.rid = s.rid AND r.model = s.model
        WHERE s.model = $model AND s.version = $version AND s.outcome = 'ok'
              AND s.prediction IS NOT NULL AND r.prediction IS NOT NULL
              AND ({mine}) IS NOT NULL AND ({theirs}) IS NOT NULL
        GROUP BY {_UNIT} ORDER BY 1
        """,
        {"model": model, "version": version},
    )
    n = np.asarray(data["n"], dtype=np.float64)
    if not n.any():
        return empty
    shadow = np.asarray(data["shadow"], dtype=np.float64)
    primary = np.asarray(data["primary_"], dtype=np.float64)
    estimator = ratio if labels == "real" else proportion
    diff = ratio(shadow - primary, n)
    return {
        "labelled": int(n.sum()),
        name: estimator(shadow, n).value,
        f"primary_{name}": estimator(primary, n).value,
        f"{name}_diff": diff.value,
        f"{name}_diff_ci95": _ci(diff, low=-math.inf),
    }


def _ci(e: Estimate, low: float = 0.0, high: float = math.inf) -> list[float] | None:
    """value -+ 1.96 se, or None without a finite one (a single user)."""
    if not math.isfinite(e.variance):
        return None
    return list(interval(e, low, high))

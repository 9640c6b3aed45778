"""The report's one pass over a model's randomised requests: one row per version, period
(`config` digest) and user, with the counts every metric needs. The statistics engine
(router/stats) works on these per-user sums, never on single requests, so the user is the
unit everywhere; a request without a user id is a user of its own.

The SQL conditions every query of the report shares are written here, once, in the SQL
that DuckDB and Spark share (engine.py); so is the pass itself, callable on its own with an
engine that holds the loaded tables (`per_user`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np

from router.observe.record import ERROR_OUTCOMES, RANDOMISED
from router.report.engine import DUCKDB, Dialect, Engine, as_engine, counted

IN_RANDOMISED = f"r.assigned_by IN {RANDOMISED}"
IS_ERROR = f"r.outcome IN {ERROR_OUTCOMES}"
UNIT = "r.unit"  # the user, else the request (read.py, spark.py)


def same_label(r: str = "r", dialect: Dialect = DUCKDB) -> str:
    """SQL: the label `f` equals the prediction of the answer aliased `r`.

    They compare as JSON values: numbers by value (1 equals 1.0; true is not 1, a boolean
    being no number); objects and arrays by value too (key order aside, through read.py's
    `json_canonical`, called for those labels only; Spark's loader writes them canonical);
    anything else by its JSON text.
    read.py keeps each number as a DOUBLE too (`number`, `prediction_number`), null for
    anything else, and marks labels that are objects or arrays (`structured`)."""
    return (
        f"CASE WHEN f.number IS NOT NULL AND {r}.prediction_number IS NOT NULL "
        f"THEN f.number = {r}.prediction_number "
        f"WHEN f.structured THEN {dialect.canonical('f.label')} = "
        f"{dialect.canonical(f'{r}.prediction')} "
        f"ELSE f.label = {r}.prediction END"
    )


def abs_error(r: str = "r") -> str:
    """SQL: |label - prediction| when both are numbers, else null."""
    return f"abs(f.number - {r}.prediction_number)"


SAME_LABEL = same_label()
ABS_ERROR = abs_error()

# Labels are real-valued when any of them is a number with a fractional part.
IS_REAL = "(f.number <> floor(f.number))"
LABELS = "LEFT JOIN feedback f ON f.rid = r.rid AND r.prediction IS NOT NULL"

COLUMNS = ("n", "errors", "labelled", "correct", "scored", "abs_error", "sq_error")

# The times of a request record whose p50 and p95 the report compares, with the user as
# the unit: the latency, and the time to the answer's first byte (contract section 11: for
# a streamed answer, the first token), which older logs do not have.
TIMINGS = ("latency_ms", "first_byte_ms")
QUANTILES = (("p50", 0.5), ("p95", 0.95))


def timing_column(timing: str, part: str) -> str:
    """The per-user column of `timing` (one of TIMINGS): `timed` (requests with a value),
    `p50` or `p95` (requests at or below the version's quantile)."""
    return f"{timing}_{part}"


def timings_of(versions: dict[str, dict[str, Any]]) -> tuple[str, ...]:
    """The timings to compare: the latency always, the first byte when a version has any
    value of it (when it streams), so a log without it costs nothing more."""
    return tuple(t for t in TIMINGS if t == "latency_ms" or any(v[t] for v in versions.values()))


@dataclass(frozen=True)
class Users:
    """Rows sorted by version, period and user; `columns` holds, per row: requests, errors,
    labelled and correct requests, scored ones (label and prediction both numbers) with the
    sum of their absolute and squared errors; and for each of `timings`, the requests with
    a value and those at or below the version's p50 and p95 (for the quantiles' intervals,
    named by `timing_column`)."""

    version: np.ndarray
    config: np.ndarray
    unit: np.ndarray
    columns: dict[str, np.ndarray]
    timings: tuple[str, ...]

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

    def pooled(self, version: str) -> dict[str, np.ndarray]:
        """One version's columns summed per user over all periods (a user who stayed
        through a reload is still one unit)."""
        rows = self.version == version
        _, per_user = np.unique(self.unit[rows], return_inverse=True)
        return {
            name: np.bincount(per_user, weights=values[rows])
            for name, values in self.columns.items()
        }


# The requests every per-user pass counts: a model's randomised ones, by assigned version.
IN_PASS = f"r.model = $model AND {IN_RANDOMISED} AND r.assigned_version IS NOT NULL"


def per_user_sql(dialect: Dialect, timings: tuple[str, ...], only: str = "") -> str:
    """The pass itself, as SQL with the parameter `$model`: one row per version, period
    and unit, sorted so. It reads `requests` and `feedback` (as read.py and spark.py make
    them) and, with `timings`, `thresholds`. `only` adds conditions on the requests `r`:
    the rollout controller's step (router/rollout/arms.py) keeps the step's periods,
    and counts everything else exactly as the report does."""
    d = dialect
    counts = []
    for timing in timings:
        counts.append(f", count(r.{timing}) AS {timing_column(timing, 'timed')}")
        for q, _ in QUANTILES:
            column = timing_column(timing, q)
            counts.append(f", {counted(f'r.{timing} <= t.{column}')} AS {column}")
    thresholds = "LEFT JOIN thresholds t ON t.version = r.assigned_version" if timings else ""
    return f"""
        SELECT r.assigned_version AS version, coalesce(r.config, '') AS config, {UNIT} AS unit,
               count(*) AS n, {counted(IS_ERROR)} AS errors,
               count(f.label) AS labelled, {counted(same_label("r", d))} AS correct,
               count({ABS_ERROR}) AS scored, {d.sorted_sum(ABS_ERROR)} AS abs_error,
               {d.sorted_sum(f"{ABS_ERROR} * {ABS_ERROR}")} AS sq_error
               {"".join(counts)}
        FROM requests r
        {LABELS}
        {thresholds}
        WHERE {IN_PASS} {f"AND ({only})" if only else ""}
        GROUP BY ALL ORDER BY 1, 2, 3
        """


def per_user(
    con: Engine | duckdb.DuckDBPyConnection, model: str, versions: dict[str, dict[str, Any]]
) -> Users:
    """One grouped pass (per_user_sql); the p50/p95 thresholds come in as a small table, so
    no name from the log is ever spliced into SQL (only the constant names of TIMINGS are).
    The rows come back sorted by version, period and unit (a text both engines sort
    alike), and the error sums are added in ascending order (Dialect.sorted_sum): the same
    arrays from run to run and from DuckDB and Spark alike."""
    engine = as_engine(con)
    timings = timings_of(versions)
    _thresholds(engine, versions, timings)
    data = engine.query(per_user_sql(engine.dialect, timings), {"model": model})
    parts = ("timed", *(q for q, _ in QUANTILES))
    names = [*COLUMNS, *(timing_column(t, part) for t in timings for part in parts)]
    return Users(
        np.asarray(data["version"], dtype=object),
        np.asarray(data["config"], dtype=object),
        np.asarray(data["unit"], dtype=object),
        {name: np.asarray(data[name], dtype=np.float64) for name in names},
        timings,
    )


def _thresholds(
    engine: Engine, versions: dict[str, dict[str, Any]], timings: tuple[str, ...]
) -> None:
    """The `thresholds` table: per version, each timing's p50 and p95 as the table shows
    them (null for a version without values)."""
    names = [timing_column(t, q) for t in timings for q, _ in QUANTILES]
    columns = {"version": "VARCHAR"} | {name: "DOUBLE" for name in names}
    rows = [
        (name, *((v[t] or {}).get(q) for t in timings for q, _ in QUANTILES))
        for name, v in versions.items()
    ]
    engine.table("thresholds", columns, rows)

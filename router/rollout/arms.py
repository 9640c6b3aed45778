"""A step's two arms, per user, counted by the report's per-user pass (issue 23: one
definition). The step's requests and labels go into an in-process DuckDB as the columns
read.py makes (registered NumPy arrays, no row-by-row inserts), and the SQL of
router/report/users.py counts them: the same unit (the user, else the request), the same
label (the latest by `ts`, on a tie the later line: Records keeps it by that rule), the
same errors and correct answers. Only the step's periods count (`IN_STEP`), each user's
rows summed over them; the control is every other version, pooled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import Any

import duckdb
import numpy as np
import orjson
from duckdb.sqltypes import VARCHAR

from router.report.engine import DUCKDB, DuckEngine, Engine
from router.report.read import UNIT, canonical_json, number_of, structured_of
from router.report.users import IN_PASS, per_user_sql
from router.rollout.decide import Arm
from router.rollout.logs import ABSENT, Request

IN_STEP = "r.config IN (SELECT config FROM step_configs)"

# The pass's per-user rows of the step, summed per arm and unit; `idx` numbers an arm's
# users in the order of their units, as the latencies name them.
_ARMS = f"""
    CREATE OR REPLACE TEMP TABLE arms AS
    SELECT *, row_number() OVER (PARTITION BY candidate ORDER BY unit) - 1 AS idx
    FROM (SELECT version = $candidate AS candidate, unit, sum(n) AS n, sum(errors) AS errors,
                 sum(labelled) AS labelled, sum(correct) AS correct
          FROM ({per_user_sql(DUCKDB, (), IN_STEP)}) GROUP BY 1, 2)
    """
_LATENCIES = f"""
    SELECT a.candidate, a.idx, r.latency_ms FROM requests r
    JOIN arms a ON a.unit = r.unit AND a.candidate = (r.assigned_version = $candidate)
    WHERE {IN_PASS} AND {IN_STEP} AND r.latency_ms IS NOT NULL
    ORDER BY 1, 2, 3
    """


def arms(
    rows: Sequence[Request],
    labels: dict[str, tuple[float, int, Any]],
    model: str,
    candidate: str,
    configs: set[str],
) -> tuple[Arm, Arm]:
    """The candidate's arm and the control's, per user, from `rows` (a model's requests)
    and the labels, counted by the report's per-user pass on the step's periods."""
    con = duckdb.connect()
    try:
        # Past 2 s DuckDB draws a progress bar on stdout, where the decisions' JSON lines go.
        con.execute("SET enable_progress_bar = false")
        con.create_function("json_canonical", canonical_json, [VARCHAR], VARCHAR)
        load(con, rows, labels, model, configs)
        return counted(DuckEngine(con), model, candidate)
    finally:
        con.close()


def load(
    con: duckdb.DuckDBPyConnection,
    rows: Sequence[Request],
    labels: dict[str, tuple[float, int, Any]],
    model: str,
    configs: set[str],
) -> None:
    """The tables the per-user pass reads, with read.py's columns: `requests`, `feedback`
    (one label per request id, the one Records kept by the report's rule), and the step's
    periods, `step_configs`."""
    labelled = sorted({r.rid for r in rows if r.rid in labels})  # one label per id
    con.register("step_requests", _requests(rows, model, set(labelled)))
    con.register("step_labels", {
        "request_id": np.asarray(labelled, dtype=object),
        "label": np.fromiter((_json(labels[rid][2]) for rid in labelled), dtype=object,
                             count=len(labelled)),  # null: the latest says there is none
    })  # fmt: skip
    con.register("step_configs", {"config": np.asarray(sorted(configs), dtype=object)})
    con.execute(
        f"""
        CREATE VIEW requests AS
        SELECT hash(request_id) AS rid, model, assigned_version, assigned_by, config, outcome,
               {UNIT} AS unit,
               CASE WHEN isnan(latency_ms) THEN NULL ELSE latency_ms END AS latency_ms,
               prediction, {number_of("prediction")} AS prediction_number
        FROM step_requests
        """
    )
    con.execute(
        f"""
        CREATE VIEW feedback AS
        SELECT hash(request_id) AS rid, label, {number_of("label")} AS number,
               {structured_of("label")} AS structured
        FROM step_labels
        """
    )


def _requests(rows: Sequence[Request], model: str, labelled: set[str]) -> dict[str, np.ndarray]:
    """The columns of `step_requests`. A prediction is only read with a label, so only the
    labelled requests carry its JSON text (null for an answer without one, as in read.py)."""

    def prediction(r: Request) -> str | None:
        if r.rid not in labelled or r.prediction is ABSENT:
            return None
        return orjson.dumps(r.prediction).decode()  # JSON null is "null", as in read.py

    return {
        "request_id": _column(rows, attrgetter("rid")),
        "model": np.full(len(rows), model, dtype=object),
        "assigned_version": _column(rows, attrgetter("version")),
        "assigned_by": _column(rows, attrgetter("assigned_by")),
        "config": _column(rows, attrgetter("config")),
        "outcome": _column(rows, attrgetter("outcome")),
        "user": _column(rows, attrgetter("user")),
        "latency_ms": np.fromiter(
            (np.nan if r.latency_ms is None else r.latency_ms for r in rows),
            dtype=np.float64,
            count=len(rows),
        ),
        "prediction": _column(rows, prediction),
    }


def counted(engine: Engine, model: str, candidate: str) -> tuple[Arm, Arm]:
    """Both arms from the loaded tables: the candidate's, then the control's."""
    params = {"model": model, "candidate": candidate}
    engine.execute(_ARMS, params)
    sums = engine.query(
        "SELECT candidate, n, errors, labelled, correct FROM arms ORDER BY candidate, idx"
    )
    times = engine.query(_LATENCIES, params)
    return _arm(sums, times, True), _arm(sums, times, False)


def _arm(sums: dict[str, np.ndarray], times: dict[str, np.ndarray], candidate: bool) -> Arm:
    mine = np.asarray(sums["candidate"], dtype=bool) == candidate
    timed = np.asarray(times["candidate"], dtype=bool) == candidate
    return Arm(
        n=np.asarray(sums["n"][mine], dtype=np.float64),
        errors=np.asarray(sums["errors"][mine], dtype=np.float64),
        labelled=np.asarray(sums["labelled"][mine], dtype=np.float64),
        correct=np.asarray(sums["correct"][mine], dtype=np.float64),
        latency=np.asarray(times["latency_ms"][timed], dtype=np.float64),
        latency_user=np.asarray(times["idx"][timed], dtype=np.int64),
    )


def _column(rows: Sequence[Request], get: Callable[[Request], Any]) -> np.ndarray:
    return np.fromiter(map(get, rows), dtype=object, count=len(rows))


def _json(value: Any) -> str | None:
    """A JSON value as text, for DuckDB's JSON functions (as read.py's columns hold it);
    a label of null is a null, as read.py reads it."""
    return None if value is None else orjson.dumps(value).decode()

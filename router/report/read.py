"""Reading routing logs into DuckDB: plain or gzipped JSON lines, globs, bad lines counted.

The log is parsed once, with an explicit schema, into a compact in-memory table (ids and
user pseudonyms hashed to 64-bit integers, times parsed); every query of the report then
runs on that table. DuckDB spills to disk past its memory limit, so a large log costs time,
not a crash.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

import duckdb
import orjson
from duckdb.sqltypes import VARCHAR

from router.observe.parquet import is_parquet_dir
from router.report.engine import DuckEngine, Engine
from router.report.source import directory_error, scan

# The fields of contract section 5 the report reads, and their types. A line that is not a
# JSON object comes out with every field null, which is how bad lines are counted.
COLUMNS = {
    "event": "VARCHAR",
    "ts": "VARCHAR",
    "request_id": "VARCHAR",
    "model": "VARCHAR",
    "version": "VARCHAR",
    "assigned_version": "VARCHAR",
    "assigned_by": "VARCHAR",
    "bucket": "INTEGER",
    "user": "VARCHAR",
    "status": "INTEGER",
    "outcome": "VARCHAR",
    "latency_ms": "DOUBLE",
    "config": "VARCHAR",
    "first_byte_ms": "DOUBLE",  # contract section 11; absent from older logs: null
    "response": "JSON",
    "label": "JSON",
    "models": "JSON",
}

_FEEDBACK = ("event", "ts", "request_id", "model", "label")
# JSON numbers; a label or a prediction that is one is also kept as a DOUBLE, so the report
# compares numbers by value (1 equals 1.0) without parsing JSON again in every query.
_NUMBER = "('BIGINT', 'UBIGINT', 'DOUBLE')"


def number_of(json: str) -> str:
    """SQL: the JSON text `json` as a DOUBLE when it is a number, else null (a label's
    `number`; the rollout controller's predictions too, router/rollout/arms.py)."""
    return f"CASE WHEN json_type({json}) IN {_NUMBER} THEN ({json})::DOUBLE END"


def structured_of(json: str) -> str:
    """SQL: whether the JSON text `json` is an object or an array (a label's `structured`)."""
    return f"coalesce(json_type({json}) IN ('OBJECT', 'ARRAY'), false)"


# The unit of the statistics (contract section 7): the user, else the request. Kept as text
# (a user-less request's id behind a byte no pseudonym starts with), not as a hash, so that
# both engines sort the per-user rows in the same order (spark.py writes the same).
UNIT = """coalesce("user", chr(1) || request_id, chr(2))"""


def _memory_limit() -> str:
    """DuckDB's limit; past it, it spills to the temp directory, but an exact quantile's
    values cannot spill: at 512 MB a 20,000,000-record log ran out. A quarter of the
    machine's memory, at least 512 MB; MODEL_ROUTER_REPORT_MEMORY (e.g. 4GB) overrides."""
    if "MODEL_ROUTER_REPORT_MEMORY" in os.environ:
        return os.environ["MODEL_ROUTER_REPORT_MEMORY"]
    try:
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not POSIX
        return "512MB"
    return f"{max(512, physical // 4 // 2**20)}MB"


class LogError(Exception):
    """The logs cannot be read at all (no such file, nothing matched a glob)."""


@dataclass(frozen=True, slots=True)
class Loaded:
    con: duckdb.DuckDBPyConnection
    files: tuple[str, ...]
    bad_lines: int

    @property
    def engine(self) -> Engine:
        """The report's queries run through this (engine.py), as they do on Spark."""
        return DuckEngine(self.con)


def expand(patterns: list[str]) -> list[str]:
    """Files named or matched by each pattern, and directories of Parquet files (`logs
    compact` writes them: source.py reads them); a pattern that names nothing is an error."""
    files: list[str] = []
    for pattern in patterns:
        matched = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if len(matched) == 1 and (error := directory_error(pattern, matched[0])):
            raise LogError(error)
        matched = [f for f in matched if os.path.isfile(f) or is_parquet_dir(f)]
        if not matched:
            raise LogError(f"{pattern}: no such log file")
        files.extend(f for f in matched if f not in files)
    return files


def load(patterns: list[str]) -> Loaded:
    files = expand(patterns)
    con = duckdb.connect()
    con.create_function("json_canonical", canonical_json, [VARCHAR], VARCHAR)
    con.execute(f"SET memory_limit = '{_memory_limit()}'")
    con.execute("SET preserve_insertion_order = false")
    # DuckDB draws a progress bar past 2 s even when the output is not a terminal: it would
    # land in the report's own output (`--format json > file`) or clutter its stderr.
    con.execute("SET enable_progress_bar = false")
    con.execute(f"SET temp_directory = '{_temp_dir()}'")
    try:
        con.execute(
            f"""
            CREATE TABLE raw AS
            SELECT event,
                   try_cast(ts AS TIMESTAMP) AS ts,
                   hash(request_id) AS rid,
                   model, version, assigned_version, assigned_by, bucket,
                   {UNIT} AS unit,
                   CASE WHEN "user" IS NULL THEN NULL ELSE hash("user") END AS user_h,
                   status, outcome, latency_ms, config, first_byte_ms,
                   json_extract(response, '$.prediction')::VARCHAR AS prediction,
                   CASE WHEN json_type(response, '$.prediction') IN {_NUMBER}
                        THEN json_extract(response, '$.prediction')::DOUBLE END
                        AS prediction_number,
                   label::VARCHAR AS label,
                   models::VARCHAR AS models
            FROM {scan(con, files, COLUMNS)}
            """
        )
    except duckdb.Error as exc:  # a truncated .gz, a file that went away
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise LogError(f"cannot read the logs: {first}") from None
    # The small tables first; then the big one becomes `requests` in place, never copied,
    # so the peak memory is one parsed log, not two.
    _feedback(con, files)
    con.execute(
        "CREATE TABLE configs AS SELECT ts, config, models FROM raw WHERE event = 'config_loaded'"
    )
    _shadows(con, files)
    bad = con.execute("SELECT count(*) FROM raw WHERE event IS NULL").fetchone()
    con.execute("DELETE FROM raw WHERE event IS DISTINCT FROM 'request'")
    con.execute("ALTER TABLE raw DROP COLUMN label")
    con.execute("ALTER TABLE raw DROP COLUMN models")
    con.execute("ALTER TABLE raw RENAME TO requests")
    return Loaded(con, tuple(files), int(bad[0]) if bad else 0)


# The fields of a `shadow` record (contract section 8) the report reads besides those of
# COLUMNS.
_SHADOW = {"primary_version": "VARCHAR", "drop_reason": "VARCHAR", "upstream_ms": "DOUBLE",
           "primary_upstream_ms": "DOUBLE", "agree": "BOOLEAN"}  # fmt: skip


def _shadows(con: duckdb.DuckDBPyConnection, files: list[str]) -> None:
    """The `shadows` table, one row per `shadow` record. Its fields are read by a second,
    narrow scan, and only when the main scan saw shadow records: parsing them in the main
    scan would add five columns to every request's row, and a log without shadows would
    pay for them in memory."""
    names = ("event", "ts", "request_id", "model", "version", "user", "status", "outcome",
             "config", "response")  # fmt: skip
    columns = {name: COLUMNS[name] for name in names} | _SHADOW
    count = con.execute("SELECT count(*) FROM raw WHERE event = 'shadow'").fetchone()
    where = "event = 'shadow'" if count and count[0] else "false"
    con.execute(
        f"""
        CREATE TABLE shadows AS
        SELECT try_cast(ts AS TIMESTAMP) AS ts, hash(request_id) AS rid, model, version,
               primary_version,
               {UNIT} AS unit, status, outcome, drop_reason, upstream_ms,
               primary_upstream_ms, agree, config,
               json_extract(response, '$.prediction')::VARCHAR AS prediction,
               CASE WHEN json_type(response, '$.prediction') IN {_NUMBER}
                    THEN json_extract(response, '$.prediction')::DOUBLE END
                    AS prediction_number
        FROM {scan(con, files, columns)}
        WHERE {where}
        """
    )


def _feedback(con: duckdb.DuckDBPyConnection, files: list[str]) -> None:
    """The `feedback` table: per request id, the latest label by `ts`; on a tie, the later
    line. The latest wins even when its label is null (then the request has none, as on
    Spark): arg_max_null, where arg_max would skip it for an older one. The main scan runs
    in parallel and keeps no line order, so ties (two labels for one request in the same
    millisecond, which are rare) are settled by a second, narrower scan that numbers the
    lines (WITH ORDINALITY counts them in file order, across the files in the order
    given). Numbering every line in the main scan would double its time.
    """
    con.execute(
        f"""
        CREATE TABLE feedback AS
        SELECT *, {number_of("label")} AS number, {structured_of("label")} AS structured
        FROM (SELECT rid, max(latest) AS latest, count(*) AS labels,
                     arg_max_null(label, latest) AS label,
                     arg_max_null(model, latest) AS model
              FROM (SELECT rid, label, model, coalesce(ts, '-infinity'::TIMESTAMP) AS latest
                    FROM raw WHERE event = 'feedback')
              GROUP BY rid)
        """
    )
    con.execute(
        """
        CREATE TEMP TABLE tied AS
        SELECT f.rid, f.latest FROM (SELECT * FROM feedback WHERE labels > 1) f
        JOIN raw r ON r.event = 'feedback' AND r.rid = f.rid
             AND coalesce(r.ts, '-infinity'::TIMESTAMP) = f.latest
        GROUP BY f.rid, f.latest HAVING count(*) > 1
        """
    )
    count = con.execute("SELECT count(*) FROM tied").fetchone()
    if count and count[0]:
        con.execute(
            f"""
            UPDATE feedback SET label = last.label, model = last.model,
                number = {number_of("last.label")}, structured = {structured_of("last.label")}
            FROM (
                SELECT t.rid, arg_max_null(l.label::VARCHAR, l.ordinality) AS label,
                       arg_max_null(l.model, l.ordinality) AS model
                FROM {scan(con, files, {k: COLUMNS[k] for k in _FEEDBACK}, numbered=True)} AS l
                JOIN tied t ON t.rid = hash(l.request_id)
                     AND t.latest = coalesce(try_cast(l.ts AS TIMESTAMP), '-infinity'::TIMESTAMP)
                WHERE l.event = 'feedback'
                GROUP BY t.rid
            ) last WHERE feedback.rid = last.rid
            """
        )
    con.execute("DROP TABLE tied")


def canonical_json(text: str) -> str:
    """One text per JSON value, so that objects and arrays compare as values: keys sorted,
    and numbers by value at any depth (1.0 is written 1; true stays true, not 1). The
    report calls it (as `json_canonical`) only for labels that are objects or arrays."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:  # an integer past 64 bits: its text is all there is
        return text
    return orjson.dumps(_canonical(value), option=orjson.OPT_SORT_KEYS).decode()


def _canonical(value: object) -> object:
    if isinstance(value, dict):
        return {key: _canonical(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_canonical(item) for item in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    return value


def _temp_dir() -> str:
    path = Path(os.environ.get("TMPDIR", "/tmp")) / "model-router-report"
    path.mkdir(parents=True, exist_ok=True)
    return str(path).replace("'", "''")

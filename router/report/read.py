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
    "response": "JSON",
    "label": "JSON",
    "models": "JSON",
}

# DuckDB's own limit; past it, it spills to the temp directory. With Python, NumPy and
# the bootstrap on top, the process stays under 1 GiB on a 5-million-record log.
MEMORY_LIMIT = "512MB"


class LogError(Exception):
    """The logs cannot be read at all (no such file, nothing matched a glob)."""


@dataclass(frozen=True, slots=True)
class Loaded:
    con: duckdb.DuckDBPyConnection
    files: tuple[str, ...]
    bad_lines: int


def expand(patterns: list[str]) -> list[str]:
    """Files named or matched by each pattern; a pattern that names nothing is an error."""
    files: list[str] = []
    for pattern in patterns:
        matched = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if len(matched) == 1 and os.path.isdir(matched[0]):
            raise LogError(f"{pattern}: is a directory, not a log file")
        matched = [f for f in matched if os.path.isfile(f)]
        if not matched:
            raise LogError(f"{pattern}: no such log file")
        files.extend(f for f in matched if f not in files)
    return files


def load(patterns: list[str]) -> Loaded:
    files = expand(patterns)
    con = duckdb.connect()
    con.execute(f"SET memory_limit = '{MEMORY_LIMIT}'")
    con.execute("SET preserve_insertion_order = false")
    con.execute(f"SET temp_directory = '{_temp_dir()}'")
    try:
        con.execute(
            """
            CREATE TABLE raw AS
            SELECT event,
                   try_cast(ts AS TIMESTAMP) AS ts,
                   hash(request_id) AS rid,
                   model, version, assigned_version, assigned_by, bucket,
                   CASE WHEN "user" IS NULL THEN NULL ELSE hash("user") END AS user_h,
                   status, outcome, latency_ms, config,
                   json_extract(response, '$.prediction')::VARCHAR AS prediction,
                   label::VARCHAR AS label,
                   models::VARCHAR AS models
            FROM read_json($files, format = 'newline_delimited', columns = $columns,
                           ignore_errors = true, maximum_object_size = 16777216)
            """,
            {"files": files, "columns": COLUMNS},
        )
    except duckdb.Error as exc:  # a truncated .gz, a file that went away
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise LogError(f"cannot read the logs: {first}") from None
    # The small tables first; then the big one becomes `requests` in place, never copied,
    # so the peak memory is one parsed log, not two.
    con.execute(
        """
        CREATE TABLE feedback AS
        SELECT rid, arg_max(label, ts) AS label, arg_max(model, ts) AS model
        FROM raw WHERE event = 'feedback' GROUP BY rid
        """
    )
    con.execute(
        "CREATE TABLE configs AS SELECT ts, config, models FROM raw WHERE event = 'config_loaded'"
    )
    bad = con.execute("SELECT count(*) FROM raw WHERE event IS NULL").fetchone()
    con.execute("DELETE FROM raw WHERE event IS DISTINCT FROM 'request'")
    con.execute("ALTER TABLE raw DROP COLUMN label")
    con.execute("ALTER TABLE raw DROP COLUMN models")
    con.execute("ALTER TABLE raw RENAME TO requests")
    return Loaded(con, tuple(files), int(bad[0]) if bad else 0)


def _temp_dir() -> str:
    path = Path(os.environ.get("TMPDIR", "/tmp")) / "model-router-report"
    path.mkdir(parents=True, exist_ok=True)
    return str(path).replace("'", "''")

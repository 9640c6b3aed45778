"""`model-router logs compact LOG... -o DIR`: routing logs rewritten as Parquet for the data
lake (contract section 14), partitioned by day, keeping every field of every record.

The schema, and how a row becomes its record again, is `router/observe/parquet.py`'s. DuckDB
does all of it, in two passes over the logs:

1. count the lines that are not JSON objects (they are skipped). This pass also proves every
   file readable (a truncated `.gz` is an error) before anything is written;
2. `COPY (SELECT ...) TO DIR (FORMAT PARQUET, PARTITION_BY (day))`: each line is parsed once
   into the known fields (`json_transform`), each typed where that loses nothing; the keys of
   a record that no typed column took (unknown fields, nulls, values of another type) go to
   `_extra`, with `json_merge_patch` taking the typed ones out of the whole object.

A DIR that already holds files is refused unless `append`: then the new files sit beside the
old (DuckDB's APPEND, unique `part-<uuid>` names, nothing overwritten), and `_line` goes on
after the largest in DIR, so labels compacted later count as later lines. To compact again
from scratch, remove DIR first: compact never deletes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import duckdb

from router.observe import parquet
from router.observe.parquet import DAY, EXTRA, FIELDS, LINE, Kind, literal, quote
from router.report.read import LogError, expand
from router.report.source import is_parquet

# As the report's reader: one record may be up to 16 MiB (a large `response`).
MAX_OBJECT = 16 * 1024 * 1024
# DuckDB's limit while compacting. Its working set here is about 1 GiB whatever the size of
# the logs (the partitioned writer's row groups and the parse buffers of both threads): under
# a 512 MB limit it evicts and re-reads them: 2,000,000 lines took 36.5 CPU s against 15.5
# under 2 GB, the 5,000,000-record log 118 against 46 (peak 662 against 1,235 MiB). Half the
# machine's memory at most.
MEMORY_LIMIT_BYTES = 2 * 2**30
# The largest integer a DOUBLE holds exactly: an integer latency up to it is typed.
EXACT_INTEGER = 2**53


@dataclass(frozen=True, slots=True)
class Compacted:
    records: int
    bad_lines: int
    partitions: int  # days written to in this run
    files: int


def compact(patterns: list[str], out: str, *, append: bool = False) -> Compacted:
    """Write the logs `patterns` name under `out`; raises LogError (an unreadable log, an
    output directory that is not empty without `append`)."""
    logs = expand(patterns)
    for path in logs:
        if is_parquet(path):
            raise LogError(f"{path}: is Parquet already; compact reads JSON lines")
    existing = _check_out(out, append)
    con = duckdb.connect()
    try:
        con.execute(f"SET memory_limit = '{_memory_limit() // 2**20}MB'")
        con.execute("SET preserve_insertion_order = false")  # _line keeps the order
        con.execute("SET TimeZone = 'UTC'")
        con.execute("SET enable_progress_bar = false")  # one summary line, no bar on stderr
        bad = _bad_lines(con, logs)
        offset = _last_line(con, existing)
        os.makedirs(out, exist_ok=True)  # as mkdir -p: DuckDB makes only the last level
        written = con.execute(_copy_sql(logs, out, offset, append=bool(existing))).fetchall()
    except duckdb.Error as exc:  # a truncated .gz, a file that went away, a full disk
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise LogError(f"cannot compact the logs: {first}") from None
    except OSError as exc:  # DIR cannot be made
        raise LogError(f"{out}: {exc.strerror}") from None
    finally:
        con.close()
    # RETURN_STATS: one row per file written, (filename, count, ...).
    days = {os.path.basename(os.path.dirname(str(row[0]))) for row in written}
    return Compacted(sum(int(row[1]) for row in written), bad, len(days), len(written))


def _memory_limit() -> int:
    try:
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not POSIX: DuckDB's own limits apply
        return MEMORY_LIMIT_BYTES
    return min(MEMORY_LIMIT_BYTES, physical // 2)


def _check_out(out: str, append: bool) -> list[str]:
    """The Parquet files already in `out`; a file there, or a directory with anything in it
    when not appending, is an error."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise LogError(f"{out}: is a file; -o names the directory to write Parquet into")
    if os.path.isdir(out) and os.listdir(out) and not append:
        raise LogError(
            f"{out}: is not empty; compact into a new directory, or add --append to add "
            "these logs beside the files already there"
        )
    return parquet.files_in(out) if os.path.isdir(out) else []


def _source(logs: list[str]) -> str:
    """Every non-blank line of the logs, numbered in the order given: `j` (the JSON text, null
    for a line that is not JSON) and `line`."""
    files = ", ".join(literal(f) for f in logs)
    return (
        f"(SELECT json AS j, ordinality AS line FROM read_json_objects([{files}], "
        f"format = 'newline_delimited', ignore_errors = true, "
        f"maximum_object_size = {MAX_OBJECT}) WITH ORDINALITY)"
    )


def _bad_lines(con: duckdb.DuckDBPyConnection, logs: list[str]) -> int:
    row = con.execute(
        f"SELECT count(*) FROM {_source(logs)} WHERE json_type(j) IS DISTINCT FROM 'OBJECT'"
    ).fetchone()
    return int(row[0]) if row else 0


def _last_line(con: duckdb.DuckDBPyConnection, existing: list[str]) -> int:
    """The largest `_line` already in the directory (read from the files' statistics)."""
    if not existing:
        return 0
    files = ", ".join(literal(f) for f in existing)
    row = con.execute(
        f"SELECT max({quote(LINE)}) FROM read_parquet([{files}], union_by_name = true)"
    ).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def _typed(name: str, kind: Kind) -> str:
    """The column of field `name`: its value when the column holds it without loss, else
    null (the field then goes to `_extra`). `s` is the record's known fields as JSON texts."""
    value = f"s.{quote(name)}"
    kind_of = f"json_type({value})"
    if kind == "str":
        return f"CASE WHEN {kind_of} = 'VARCHAR' THEN {value} ->> '$' END"
    if kind == "int":
        return f"CASE WHEN {kind_of} IN ('BIGINT', 'UBIGINT') THEN try_cast({value} AS BIGINT) END"
    if kind == "float":
        return (
            f"CASE WHEN {kind_of} = 'DOUBLE' OR ({kind_of} IN ('BIGINT', 'UBIGINT') "
            f"AND abs({value}::DOUBLE) <= {EXACT_INTEGER}) THEN {value}::DOUBLE END"
        )
    if kind == "bool":
        return f"CASE WHEN {kind_of} = 'BOOLEAN' THEN {value}::BOOLEAN END"
    return f"{value}::VARCHAR"  # json: any value but null, which _extra keeps


def _extra() -> str:
    """The record less the fields its typed columns hold, or null when nothing is left.
    Only a record with more keys than typed values needs it: the merge patch (RFC 7396) of
    `{"<typed field>": null, ...}` takes those out and leaves the rest, nulls included."""
    held = " + ".join(f"({quote(name)} IS NOT NULL)::INTEGER" for name in FIELDS)
    drop = ", ".join(
        f"CASE WHEN {quote(name)} IS NOT NULL THEN {literal(json.dumps(name) + ':null')} END"
        for name in FIELDS
    )
    return (
        f"CASE WHEN len(keys) > {held} "
        f"THEN json_merge_patch(j, ('{{' || concat_ws(',', {drop}) || '}}')::JSON)::VARCHAR END"
    )


def _copy_sql(logs: list[str], out: str, offset: int, *, append: bool) -> str:
    structure = literal(json.dumps(dict.fromkeys(FIELDS, "JSON")))
    typed = ",\n".join(f"{_typed(name, kind)} AS {quote(name)}" for name, kind in FIELDS.items())
    options = "APPEND, " if append else ""
    return f"""
        COPY (
            SELECT * EXCLUDE (j, keys, line), {_extra()} AS {EXTRA},
                   line + {offset} AS {LINE},
                   CAST(try_cast(ts AS TIMESTAMPTZ) AS DATE) AS {DAY}
            FROM (SELECT {typed}, j, json_keys(j) AS keys, line
                  FROM (SELECT j, line, json_transform(j, {structure}) AS s
                        FROM {_source(logs)} WHERE json_type(j) = 'OBJECT'))
        ) TO {literal(out)} (FORMAT PARQUET, COMPRESSION 'zstd', PARTITION_BY ({DAY}),
             {options}FILENAME_PATTERN 'part-{{uuid}}', RETURN_STATS)
    """

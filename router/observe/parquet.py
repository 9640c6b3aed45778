"""The routing log as Parquet (contract section 14): the schema `model-router logs compact`
writes, and its rows read back as the records they were.

One row per record (a line of the log that is a JSON object). Column names are the JSON field
names, so that `spark.read.parquet(DIR)` and `read_parquet('DIR/**/*.parquet')` see the
fields the contract names:

- one typed column per field this version knows (FIELDS, sections 5, 8, 11, 12, 15 and the
  `config_loaded`, `config_rejected` and `feedback` events): VARCHAR for strings, BIGINT for
  integers, DOUBLE for numbers, BOOLEAN, and JSON text (VARCHAR) for values of any shape
  (`response`, `label`, `models`, ...). A typed column holds a field only when nothing is lost:
  a string in a VARCHAR column, an integer in 64 bits in BIGINT, a float (or an integer up to
  2**53) in DOUBLE. Null there means "not in this column";
- `_extra`: the rest of the record as a JSON object (text), null when there is no rest: fields
  this version does not know, whatever their JSON type, and known fields that are null or of
  another type than their column's (`"bucket": null`, `"status": "200"`);
- `_line`: the record's line number in the logs compacted (blank lines not counted, bad lines
  counted), across the files in the order given, continuing after the largest already in the
  directory when appending. The label tie rule ("on a tie, the later line", section 7) orders
  by it, in the report and in the rollout controller;
- `day`: the hive partition (`DIR/day=2026-11-25/part-<uuid>.parquet`), the UTC date of `ts`;
  a record without a readable `ts` is under `day=__HIVE_DEFAULT_PARTITION__` (null for
  DuckDB and Spark alike). It is not a field of the record.

A record is its typed columns that are not null, its JSON columns parsed, and `_extra`'s
fields: `record_sql` below. Numbers come back by value (an integer latency `7` as `7.0`); an
integer past 64 bits, which the router never writes, comes back as a double. The files are
zstd-compressed.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any, Final, Literal

import orjson

Kind = Literal["str", "int", "float", "bool", "json"]

# The fields a record of this version may carry, with the column kind each is kept in.
FIELDS: Final[dict[str, Kind]] = {
    # section 5: every record
    "event": "str", "ts": "str", "request_id": "str", "model": "str", "version": "str",
    "assigned_version": "str", "assigned_by": "str", "bucket": "int", "user": "str",
    "method": "str", "path": "str", "status": "int", "outcome": "str",
    "latency_ms": "float", "upstream_ms": "float", "config": "str", "response": "json",
    # config_loaded, config_rejected, feedback
    "source": "str", "pid": "int", "models": "json", "reason": "str", "previous": "str",
    "restart_needed": "json", "error": "json", "label": "json",
    # section 8: shadow copies
    "primary_version": "str", "primary_upstream_ms": "float", "agree": "bool",
    "drop_reason": "str",
    # sections 11, 12, 15
    "protocol": "str", "first_byte_ms": "float", "grpc_status": "str", "trace_id": "str",
}  # fmt: skip

EXTRA: Final = "_extra"
LINE: Final = "_line"
DAY: Final = "day"
# Rows fetched at a time when reading records back: memory holds one batch, whatever the
# size of the directory.
BATCH: Final = 10_000


def files_in(directory: str) -> list[str]:
    """The Parquet files under `directory` (any depth: hive partitions), sorted."""
    return sorted(
        glob.glob(os.path.join(glob.escape(directory), "**", "*.parquet"), recursive=True)
    )


def is_parquet_dir(path: str) -> bool:
    """A directory with Parquet files in it, as `logs compact` writes: read as a log."""
    return os.path.isdir(path) and bool(files_in(path))


def quote(name: str) -> str:
    """`name` as a DuckDB identifier."""
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    """`text` as a DuckDB string literal."""
    return "'" + text.replace("'", "''") + "'"


def record_sql(present: set[str]) -> str:
    """A SQL expression giving each row's record as JSON text: its typed columns that are not
    null (JSON columns as they are), then `_extra`'s fields, which are never among them.
    DuckDB writes the text (`to_json`: strings escaped, doubles shortest), so Python only
    parses it: three times faster than fetching 35 columns as Python values."""
    parts = [
        f"CASE WHEN {quote(name)} IS NOT NULL THEN {literal(json.dumps(name) + ':')} || "
        + (f"{quote(name)}::VARCHAR" if kind == "json" else f"to_json({quote(name)})::VARCHAR")
        + " END"
        for name, kind in FIELDS.items()
        if name in present
    ]
    if EXTRA in present:  # its fields without the braces around them
        parts.append(f"nullif({quote(EXTRA)}[2:-2], '')")
    return f"'{{' || concat_ws(',', {', '.join(parts) or 'NULL'}) || '}}'"


def loads(text: str) -> Any:
    """A JSON text as Python values, integers past 64 bits included."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:  # an integer past 64 bits, which the json module keeps
        return json.loads(text)


class ParquetError(Exception):
    """A Parquet file cannot be read (one still being written, a damaged one)."""


def read_records(paths: Sequence[str], memory_limit: str = "256MB") -> Iterator[dict[str, Any]]:
    """The records of the Parquet files `paths`, in line order (`_line`), a batch at a time;
    raises ParquetError. DuckDB is imported here, only when a directory is read (in the
    `report` and `rollout` extras): ImportError without it."""
    import duckdb

    con = duckdb.connect()
    try:
        con.execute(f"SET memory_limit = {literal(memory_limit)}")
        con.execute("SET enable_progress_bar = false")  # its bar on stderr, past 2 s
        source = f"read_parquet([{', '.join(literal(p) for p in paths)}], union_by_name = true)"
        present = {row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()}
        order = f" ORDER BY {quote(LINE)}" if LINE in present else ""
        result = con.execute(f"SELECT {record_sql(present)} FROM {source}{order}")
        while rows := result.fetchmany(BATCH):
            for (text,) in rows:
                yield loads(text)
    except duckdb.Error as exc:
        raise ParquetError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    finally:
        con.close()

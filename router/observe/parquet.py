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
  directory when appending. The report's label tie rule ("on a tie, the later line", section
  7) orders by it; nothing else does;
- `day`: the hive partition (`DIR/day=2026-11-25/part-<uuid>.parquet`), the UTC date of `ts`;
  a record without a readable `ts` is under `day=__HIVE_DEFAULT_PARTITION__` (null for
  DuckDB and Spark alike). It is not a field of the record.

A record is its typed columns that are not null, its JSON columns parsed, and `_extra`'s
fields: `record_of` below. Numbers come back by value (an integer latency `7` as `7.0`).
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

SQL_TYPES: Final[dict[Kind, str]] = {
    "str": "VARCHAR", "int": "BIGINT", "float": "DOUBLE", "bool": "BOOLEAN", "json": "VARCHAR",
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


def record_of(row: Sequence[Any]) -> dict[str, Any]:
    """The record of a row whose values are FIELDS' columns in order, then `_extra`."""
    record: dict[str, Any] = {}
    for (name, kind), value in zip(FIELDS.items(), row, strict=False):
        if value is not None:
            record[name] = _loads(value) if kind == "json" else value
    extra = row[len(FIELDS)]
    if extra is not None:
        record.update(_loads(extra))
    return record


def _loads(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:  # an integer past 64 bits, which the json module keeps
        return json.loads(text)


def select_list(present: set[str]) -> str:
    """FIELDS' columns then `_extra`, typed; a column no file has is a typed null (a
    directory written by an older version, or by Spark, without it)."""
    names = [*FIELDS, EXTRA]
    kinds: list[Kind] = [*FIELDS.values(), "json"]
    return ", ".join(
        f"{quote(name)}::{SQL_TYPES[kind]}" if name in present else f"NULL::{SQL_TYPES[kind]}"
        for name, kind in zip(names, kinds, strict=True)
    )


class ParquetError(Exception):
    """A Parquet file cannot be read (one still being written, a damaged one)."""


def read_records(paths: Sequence[str], memory_limit: str = "256MB") -> Iterator[dict[str, Any]]:
    """The records of the Parquet files `paths`, in line order (`_line`), a batch at a time;
    raises ParquetError. DuckDB is imported here, only when a directory is read (the
    `report` extra): ImportError without it."""
    import duckdb

    con = duckdb.connect()
    try:
        con.execute(f"SET memory_limit = {literal(memory_limit)}")
        source = f"read_parquet([{', '.join(literal(p) for p in paths)}], union_by_name = true)"
        present = {row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()}
        order = f" ORDER BY {quote(LINE)}" if LINE in present else ""
        result = con.execute(f"SELECT {select_list(present)} FROM {source}{order}")
        while rows := result.fetchmany(BATCH):
            for row in rows:
                yield record_of(row)
    except duckdb.Error as exc:
        raise ParquetError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    finally:
        con.close()

"""Where the report's DuckDB scans read from: JSON lines (plain or `.gz`) with `read_json`,
a directory that `model-router logs compact` wrote with `read_parquet` (contract section 14),
both in one scan when both are given. Every scan gives the same columns with the same types,
so `read.py`'s tables are built by the same SQL whatever the logs are stored as.
"""

from __future__ import annotations

import itertools
import os

import duckdb

from router.observe.parquet import LINE, files_in, is_parquet_dir, literal, quote

# As read.py has always read: a record may be up to 16 MiB (a large `response`).
MAX_OBJECT = 16 * 1024 * 1024
# A line's place in the order given: the source's index above, its line number below.
_LINES_PER_SOURCE = 1 << 40


def scan(
    con: duckdb.DuckDBPyConnection,
    paths: list[str],
    columns: dict[str, str],
    *,
    numbered: bool = False,
) -> str:
    """A FROM item giving `columns` (name -> DuckDB type) of every line of `paths` (files and
    Parquet directories, as read.expand gives them). A JSON line that is not an object has
    every column null, as read_json gives it. `numbered` adds `ordinality`, which orders the
    lines as given: by file in order, by line within a file (in a directory: `_line`)."""
    parts = [
        _parquet(con, group, columns, numbered, index)
        if parquet
        else _json(group, columns, numbered, index)
        for index, (parquet, group) in enumerate(_sources(paths))
    ]
    if len(parts) == 1:
        return parts[0]
    return "(" + " UNION ALL BY NAME ".join(f"SELECT * FROM {part}" for part in parts) + ")"


def _sources(paths: list[str]) -> list[tuple[bool, list[str]]]:
    """(Parquet?, paths): the runs of JSON-lines files and of Parquet (directories, or files
    named `.parquet`), in the order given. Each run is one scan."""
    return [(parquet, list(run)) for parquet, run in itertools.groupby(paths, key=is_parquet)]


def is_parquet(path: str) -> bool:
    """Read with read_parquet: a directory `logs compact` wrote, or one of its files."""
    return path.endswith(".parquet") or is_parquet_dir(path)


def _json(files: list[str], columns: dict[str, str], numbered: bool, index: int) -> str:
    names = ", ".join(literal(f) for f in files)
    types = ", ".join(f"{literal(name)}: {literal(kind)}" for name, kind in columns.items())
    read = (
        f"read_json([{names}], format = 'newline_delimited', columns = {{{types}}}, "
        f"ignore_errors = true, maximum_object_size = {MAX_OBJECT})"
    )
    if not numbered:
        return read
    return (
        f"(SELECT * EXCLUDE (ordinality), {index * _LINES_PER_SOURCE} + ordinality AS ordinality "
        f"FROM {read} WITH ORDINALITY)"
    )


def _parquet(
    con: duckdb.DuckDBPyConnection,
    paths: list[str],
    columns: dict[str, str],
    numbered: bool,
    index: int,
) -> str:
    """The columns of compacted directories (or their files), cast to the report's types. A
    column none of the files has (a directory another tool wrote) is null. With hive
    partitioning a partition column (`day`, or `model` in a lake partitioned by model) is a
    column too. Lines are ordered by `_line`, which is one order across a directory."""
    found = [f for path in paths for f in (files_in(path) if os.path.isdir(path) else [path])]
    files = ", ".join(literal(f) for f in found)
    read = f"read_parquet([{files}], hive_partitioning = true, union_by_name = true)"
    present = {row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {read}").fetchall()}
    selected = [
        f"try_cast({quote(name)} AS {kind}) AS {quote(name)}"
        if name in present
        else f"NULL::{kind} AS {quote(name)}"
        for name, kind in columns.items()
    ]
    if numbered:
        line = f"coalesce({quote(LINE)}, 0)" if LINE in present else "0"
        selected.append(f"{index * _LINES_PER_SOURCE} + {line} AS ordinality")
    return f"(SELECT {', '.join(selected)} FROM {read})"


def directory_error(pattern: str, path: str) -> str | None:
    """Why `path` (named by `pattern`) cannot be read as a log, if it is a directory: one
    with Parquet files in it is a compacted log, any other is not a log at all."""
    if not os.path.isdir(path) or is_parquet_dir(path):
        return None
    return f"{pattern}: is a directory with no Parquet files in it, not a log file"

"""The seam between the report and the engine that runs its SQL (contract section 14).

Every query of the report is written once, in the part of SQL that DuckDB and Spark SQL
share (`count_if`, `min_by`/`max_by`, `coalesce`, `GROUP BY ALL`, `CAST(x AS T)`, named
parameters written `$name`), and the few things they spell differently are the hooks of a
`Dialect`: quantiles, a sum in a fixed order, epoch seconds, structs, canonical JSON. An
`Engine` runs that SQL on the tables a loader made (`requests`, `feedback`, `configs`,
`shadows`; read.py for DuckDB, spark.py for Spark) and answers with rows or NumPy arrays,
so everything above it (the per-user pass in users.py, the statistics in router/stats)
is the same code for both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import duckdb
import numpy as np

Params = Mapping[str, Any] | None


class Result(Protocol):
    """What a query answers: DuckDB's own result, or spark.py's over a DataFrame."""

    def fetchall(self) -> list[tuple[Any, ...]]: ...

    def fetchone(self) -> tuple[Any, ...] | None: ...

    def fetchnumpy(self) -> dict[str, Any]: ...


class Engine(Protocol):
    """Runs the report's SQL on the loaded tables."""

    dialect: Dialect

    def execute(self, sql: str, params: Params = None) -> Result: ...

    def query(self, sql: str, params: Params = None) -> dict[str, np.ndarray]: ...

    def table(self, name: str, columns: Mapping[str, str], rows: Sequence[tuple[Any, ...]]) -> None:
        """A small temporary table of `rows` (`columns`: name -> SQL type), replacing any
        of that name: how values from Python (never spliced into SQL) join a query."""
        ...

    def close(self) -> None: ...


class Source(Protocol):
    """Loaded logs: read.Loaded (DuckDB) or spark.SparkLoaded."""

    @property
    def engine(self) -> Engine: ...

    @property
    def files(self) -> tuple[str, ...]: ...

    @property
    def bad_lines(self) -> int: ...


def counted(condition: str) -> str:
    """SQL: how many rows meet `condition`, a null counted as not met. DuckDB's `count_if`
    of nothing but nulls is null (Spark's is 0): a user whose requests all lack an outcome
    would come back with no error count at all."""
    return f"count_if(coalesce({condition}, false))"


def _floats(values: Sequence[float]) -> str:
    """Our own probabilities as SQL literals (DOUBLE in both dialects: Spark reads a bare
    0.5 as a DECIMAL). Only constants of the report come here, never a value of the log."""
    return ", ".join(f"CAST({float(v)!r} AS DOUBLE)" for v in values)


@dataclass(frozen=True)
class Dialect:
    """The hooks where DuckDB and Spark SQL differ; `name` is "duckdb" or "spark"."""

    name: str

    def quantiles(self, expr: str, ps: Sequence[float]) -> str:
        """The exact quantiles of `expr` at `ps`, as a list, linearly interpolated between
        the two nearest order statistics at (n - 1) p: DuckDB's `quantile_cont` and
        Spark's `percentile` (not `percentile_approx`) compute the same thing."""
        if self.name == "spark":
            return f"percentile({expr}, array({_floats(ps)}))"
        return f"quantile_cont({expr}, [{_floats(ps)}])"

    def sorted_sum(self, expr: str) -> str:
        """The sum of `expr` over the group, added one value at a time in ascending order
        (0 for none): the same double on every run and on both engines, where a plain SUM
        adds partial sums in whatever order the threads or tasks finish."""
        if self.name == "spark":
            return (
                f"aggregate(array_sort(collect_list({expr})), CAST(0 AS DOUBLE), "
                "(acc, v) -> acc + v)"
            )
        return (
            f"coalesce(list_reduce(list_sort(list({expr}) FILTER (WHERE ({expr}) IS NOT NULL)), "
            "lambda acc, v: acc + v, CAST(0 AS DOUBLE)), CAST(0 AS DOUBLE))"
        )

    def epoch(self, expr: str) -> str:
        """Seconds since 1970 of a timestamp, as a DOUBLE made the same way on both."""
        if self.name == "spark":
            return f"(CAST(unix_micros(CAST({expr} AS TIMESTAMP)) AS DOUBLE) / 1000000)"
        return f"(CAST(epoch_us({expr}) AS DOUBLE) / 1000000)"

    def struct(self, **fields: str) -> str:
        """A struct of named fields (read back with `.name`)."""
        if self.name == "spark":
            return "named_struct(" + ", ".join(f"'{k}', {v}" for k, v in fields.items()) + ")"
        return "struct_pack(" + ", ".join(f"{k} := {v}" for k, v in fields.items()) + ")"

    def canonical(self, expr: str) -> str:
        """A JSON text that compares as a value (key order aside, numbers by value). DuckDB
        calls read.py's `json_canonical`; Spark's loader already wrote objects and arrays
        through its VARIANT type, whose JSON has its keys sorted and numbers normalised."""
        return expr if self.name == "spark" else f"json_canonical({expr})"


DUCKDB = Dialect("duckdb")
SPARK = Dialect("spark")


class DuckEngine:
    """The embedded engine: one DuckDB connection that holds the loaded tables."""

    dialect = DUCKDB

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con

    def execute(self, sql: str, params: Params = None) -> Result:
        return self.con.execute(sql, dict(params) if params is not None else None)

    def query(self, sql: str, params: Params = None) -> dict[str, np.ndarray]:
        data = self.con.execute(sql, dict(params) if params is not None else None).fetchnumpy()
        return {name: np.asarray(values) for name, values in data.items()}

    def table(self, name: str, columns: Mapping[str, str], rows: Sequence[tuple[Any, ...]]) -> None:
        spec = ", ".join(f"{column} {kind}" for column, kind in columns.items())
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE {name} ({spec})")
        if rows:
            marks = ", ".join("?" for _ in columns)
            self.con.executemany(f"INSERT INTO {name} VALUES ({marks})", list(rows))

    def close(self) -> None:
        self.con.close()


def as_engine(con: Engine | duckdb.DuckDBPyConnection) -> Engine:
    """An engine for a caller that holds a bare DuckDB connection with the tables loaded
    (read.py's), as the per-user pass accepts one."""
    return DuckEngine(con) if isinstance(con, duckdb.DuckDBPyConnection) else con

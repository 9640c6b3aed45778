"""The report on Apache Spark (contract section 14): `model-router report --engine spark`.

Spark runs the same SQL as DuckDB (engine.py) on tables of the same names and columns,
which this module makes from the logs: any path the cluster can read (local, `hdfs://`,
`s3a://` with its connectors), globs, plain or gzipped JSON lines. Each line is parsed
once with an explicit schema; the prediction and the label are kept as Spark's VARIANT
long enough to know their JSON type, then as JSON text (objects with their keys sorted,
so they compare as values). A line that is not a JSON object with an `event` is a bad
line, as DuckDB counts it. Only aggregates and per-user rows come back to the driver.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from router.observe.parquet import LINE
from router.report.engine import SPARK, Dialect, Params, Result
from router.report.read import LogError, expand

# The fields of contract sections 5 and 8 the report reads. `response` and `label` are
# VARIANT (their JSON type decides how they compare); `models` is STRING, which keeps an
# object's text as written: the split's order names the default baseline.
FIELDS = (
    ("event", "STRING"), ("ts", "STRING"), ("request_id", "STRING"), ("model", "STRING"),
    ("version", "STRING"), ("assigned_version", "STRING"), ("assigned_by", "STRING"),
    ("bucket", "INT"), ("user", "STRING"), ("status", "INT"), ("outcome", "STRING"),
    ("latency_ms", "DOUBLE"), ("config", "STRING"), ("first_byte_ms", "DOUBLE"),
    ("response", "VARIANT"), ("label", "VARIANT"), ("models", "STRING"),
    ("primary_version", "STRING"), ("drop_reason", "STRING"), ("upstream_ms", "DOUBLE"),
    ("primary_upstream_ms", "DOUBLE"), ("agree", "BOOLEAN"),
)  # fmt: skip
SCHEMA = ", ".join(f"`{name}` {kind}" for name, kind in FIELDS)
# SQL on a VARIANT's type (`schema_of_variant`): a JSON number; an object or an array.
_NUMBER = "({k} IN ('BIGINT', 'DOUBLE', 'FLOAT') OR {k} LIKE 'DECIMAL%')"
_STRUCTURED = "({k} LIKE 'OBJECT%' OR {k} LIKE 'ARRAY%')"


class EngineError(Exception):
    """Spark cannot run here: pyspark or Java is missing."""


def check_java() -> None:
    """Spark runs on a JVM: without one, say so before pyspark fails with a page of
    traceback."""
    home = os.environ.get("JAVA_HOME")
    if shutil.which("java") is None and not (home and os.path.exists(f"{home}/bin/java")):
        raise EngineError(
            "--engine spark needs Java 17 or later: no `java` on PATH and JAVA_HOME is not set"
        )


@dataclass(frozen=True)
class SparkResult:
    """A query's DataFrame, collected on the driver when asked."""

    frame: Any  # pyspark.sql.DataFrame

    def fetchall(self) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in self.frame.collect()]

    def fetchone(self) -> tuple[Any, ...] | None:
        rows = self.frame.take(1)
        return tuple(rows[0]) if rows else None

    def fetchnumpy(self) -> dict[str, Any]:
        rows = self.frame.collect()
        out: dict[str, Any] = {}
        for i, field in enumerate(self.frame.schema.fields):
            values = [row[i] for row in rows]
            kind = field.dataType.typeName()
            if kind in ("long", "integer", "short", "byte") and None not in values:
                out[field.name] = np.asarray(values, dtype=np.int64)
            elif kind in ("double", "float", "long", "integer"):
                out[field.name] = np.asarray(
                    [np.nan if v is None else v for v in values], dtype=np.float64
                )
            else:
                out[field.name] = np.asarray(values, dtype=object)
        return out


_PARAM = re.compile(r"\$([A-Za-z_]\w*)")
_TYPES = {"VARCHAR": "STRING"}


class SparkEngine:
    """The report's tables as cached temporary views of one SparkSession."""

    dialect: Dialect = SPARK

    def __init__(self, spark: Any, owned: bool) -> None:
        self.spark = spark
        self.owned = owned  # made here, so stopped here
        self.views: list[str] = []

    def execute(self, sql: str, params: Params = None) -> Result:
        """`$name` parameters become Spark's `:name` markers: values are bound, never
        spliced into the SQL."""
        args = dict(params or {})
        text = _PARAM.sub(lambda m: f":{m.group(1)}" if m.group(1) in args else m.group(0), sql)
        return SparkResult(self.spark.sql(text, args=args or None))

    def query(self, sql: str, params: Params = None) -> dict[str, np.ndarray]:
        data: dict[str, np.ndarray] = self.execute(sql, params).fetchnumpy()
        return data

    def table(self, name: str, columns: Mapping[str, str], rows: Sequence[tuple[Any, ...]]) -> None:
        """A VALUES list with bound parameters, not createDataFrame: that would ship the
        rows as pickles, and a cluster's executors would need Python to read them."""
        kinds = [_TYPES.get(k, k) for k in columns.values()]
        args: dict[str, Any] = {}
        values = []
        for i, row in enumerate(rows):
            marks = []
            for j, (value, kind) in enumerate(zip(row, kinds, strict=True)):
                args[f"v{i}_{j}"] = value
                marks.append(f"CAST(:v{i}_{j} AS {kind})")
            values.append(f"({', '.join(marks)})")
        names = ", ".join(columns)
        if not values:  # no rows: the columns alone
            nulls = ", ".join(
                f"CAST(NULL AS {k}) AS {c}" for c, k in zip(columns, kinds, strict=True)
            )
            sql = f"SELECT {nulls} WHERE false"
        else:
            sql = f"SELECT * FROM VALUES {', '.join(values)} AS t({names})"
        self.spark.sql(sql, args=args or None).createOrReplaceTempView(name)

    def view(self, name: str, sql: str) -> None:
        """A table of the report, computed once and kept (in memory, spilling to disk)."""
        frame = self.spark.sql(sql).persist(_storage())
        frame.createOrReplaceTempView(name)
        self.views.append(name)

    def close(self) -> None:
        from py4j.protocol import Py4JError  # type: ignore[import-untyped]  # no stubs

        try:
            for name in self.views:
                self.spark.catalog.uncacheTable(name)
                self.spark.catalog.dropTempView(name)
            if self.owned:
                self.spark.stop()
        except Py4JError:  # the JVM is gone (it failed): nothing is left to release
            pass


def _storage() -> Any:
    from pyspark import StorageLevel

    return StorageLevel.MEMORY_AND_DISK


def _local_heap() -> str:
    """A quarter of the machine's memory, 1 to 8 GiB: the driver is the executors too."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return "1g"
    return f"{max(1, min(8, total // 4 // 2**30))}g"


def session(master: str) -> tuple[Any, bool]:
    """The SparkSession on `master`, and whether it was made here. A session already
    running in this process (a notebook's, a test's) is used as it is; under
    `spark-submit`, whose launcher hands pyspark its JVM, the submit's `--master` decides.
    Either way the session's time zone is UTC: the log's times are UTC, and Spark reads a
    timestamp's wall time in the session's zone."""
    check_java()
    from pyspark.sql import SparkSession

    spark = SparkSession.getActiveSession()
    owned = spark is None
    if spark is None:
        builder = SparkSession.builder.appName("model-router report")
        submitted = "PYSPARK_GATEWAY_PORT" in os.environ  # started by spark-submit
        if not submitted:
            builder = builder.master(master)
        if master.startswith("local") and not submitted:
            # One machine: a few shuffle partitions (the default 200 is for clusters), no UI,
            # and a heap for the cached tables (Spark's default is 1 GiB) unless the user
            # gave one (PYSPARK_SUBMIT_ARGS="--driver-memory ...").
            if "--driver-memory" not in os.environ.get("PYSPARK_SUBMIT_ARGS", ""):
                builder = builder.config("spark.driver.memory", _local_heap())
            builder = builder.config("spark.sql.shuffle.partitions", "8")
            builder = builder.config("spark.ui.enabled", "false")
            builder = builder.config("spark.ui.showConsoleProgress", "false")
        spark = builder.getOrCreate()
        spark.sparkContext.setLogLevel("ERROR")
    spark.conf.set("spark.sql.session.timeZone", "UTC")
    return spark, owned


@dataclass(frozen=True)
class SparkLoaded:
    """What build.py needs, as read.Loaded gives it for DuckDB."""

    engine: SparkEngine
    files: tuple[str, ...]
    bad_lines: int


def load(patterns: list[str], master: str = "local[*]") -> SparkLoaded:
    """Parse the logs once into the report's tables (read.py's, with the same columns)."""
    spark, owned = session(master)
    engine = SparkEngine(spark, owned)
    try:
        files = _expand(spark, patterns)
        engine.table("log_files", {"path": "VARCHAR", "idx": "INTEGER"},
                     [(qualified, i) for i, (_, qualified, _) in enumerate(files)])  # fmt: skip
        _lines(engine, [(qualified, parquet) for _, qualified, parquet in files])
        bad = engine.execute("SELECT count_if(event IS NULL) FROM raw").fetchone()
        _tables(engine)
    except Exception:
        engine.close()
        raise
    spark.catalog.uncacheTable("raw")
    return SparkLoaded(engine, tuple(name for name, _, _ in files), int(bad[0]) if bad else 0)


def _expand(spark: Any, patterns: list[str]) -> list[tuple[str, str, bool]]:
    """(name shown, path Spark reads, is a Parquet directory) of each log. A path without
    a scheme on a local default filesystem is expanded as DuckDB's reader does
    (read.expand: the same names and errors); any other through Hadoop's FileSystem,
    which knows `hdfs://`, `s3a://` and whatever connectors the cluster has. A directory
    is one that `model-router logs compact` wrote."""
    jvm = spark.sparkContext._jvm
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    local = jvm.org.apache.hadoop.fs.FileSystem.getDefaultUri(conf).getScheme() == "file"
    out: list[tuple[str, str, bool]] = []
    for pattern in patterns:
        if local and "://" not in pattern and not pattern.startswith("file:"):
            names = [(name, os.path.isdir(name)) for name in expand([pattern])]
        else:
            names = _glob(jvm, conf, pattern)
        for name, parquet in names:
            hadoop = jvm.org.apache.hadoop.fs.Path(name)
            qualified = hadoop.getFileSystem(conf).makeQualified(hadoop).toString()
            if all(q != qualified for _, q, _ in out):
                out.append((name, qualified, parquet))
    return out


def _glob(jvm: Any, conf: Any, pattern: str) -> list[tuple[str, bool]]:
    path = jvm.org.apache.hadoop.fs.Path(pattern)
    fs = path.getFileSystem(conf)
    statuses = fs.globStatus(path) or []
    found = [(s.getPath().toString(), s.isDirectory()) for s in statuses]
    found = [(name, d) for name, d in found if not d or _has_parquet(fs, name, jvm)]
    if not found:
        kind = "is a directory with no Parquet files in it" if statuses else "no such log file"
        raise LogError(f"{pattern}: {kind}")
    return sorted(found)


def _has_parquet(fs: Any, directory: str, jvm: Any) -> bool:
    files = fs.listFiles(jvm.org.apache.hadoop.fs.Path(directory), True)
    while files.hasNext():
        if files.next().getPath().getName().endswith(".parquet"):
            return True
    return False


def _lines(engine: SparkEngine, sources: list[tuple[str, bool]]) -> None:
    """The `raw` table: one row per non-blank line (or Parquet row), parsed with SCHEMA,
    with where the line is (file, block, position) for the label tie rule."""
    from pyspark.sql import functions as F

    parts = []
    files = [path for path, parquet in sources if not parquet]
    if files:
        text = engine.spark.read.text(files).where(F.trim("value") != "")
        parts.append(text.select(
            F.from_json("value", SCHEMA).alias("j"),
            F.col("_metadata.file_path").alias("file_path"),
            F.col("_metadata.file_block_start").alias("block_start"),
            F.monotonically_increasing_id().alias("line"),
        ))  # fmt: skip
    parts += [_parquet(engine, path) for path, parquet in sources if parquet]
    lines = parts[0]
    for part in parts[1:]:
        lines = lines.unionByName(part)
    lines.createOrReplaceTempView("lines")
    engine.view(
        "raw",
        f"""
        SELECT j.event AS event, ts,
               xxhash64(j.request_id) AS rid, j.model AS model, j.version AS version,
               j.assigned_version AS assigned_version, j.assigned_by AS assigned_by,
               j.bucket AS bucket, coalesce(j.`user`, chr(1) || j.request_id, chr(2)) AS unit,
               CASE WHEN j.`user` IS NULL THEN NULL ELSE xxhash64(j.`user`) END AS user_h,
               j.status AS status, j.outcome AS outcome, j.latency_ms AS latency_ms,
               j.config AS config, j.first_byte_ms AS first_byte_ms, j.models AS models,
               j.primary_version AS primary_version, j.drop_reason AS drop_reason,
               j.upstream_ms AS upstream_ms, j.primary_upstream_ms AS primary_upstream_ms,
               j.agree AS agree,
               to_json(p) AS prediction, {_number("p", "pk")} AS prediction_number,
               to_json(j.label) AS label, {_number("j.label", "lk")} AS label_number,
               coalesce({_STRUCTURED.format(k="lk")}, false) AS structured,
               CASE WHEN j.event = 'feedback'  -- the label tie rule's order, for labels only
                    THEN struct(coalesce(ts, TIMESTAMP_NTZ '0001-01-01 00:00:00'),
                                coalesce(f.idx, 2147483647), file_path, block_start, line)
               END AS position
        FROM (SELECT *, variant_get(j.response, '$.prediction') AS p,
                     schema_of_variant(variant_get(j.response, '$.prediction')) AS pk,
                     schema_of_variant(j.label) AS lk,
                     CAST(try_to_timestamp(j.ts) AS TIMESTAMP_NTZ) AS ts
              FROM lines) l
        LEFT JOIN log_files f ON f.path = l.file_path
        """,
    )
    engine.execute("SELECT count(*) FROM raw").fetchone()  # parse now, once


def _parquet(engine: SparkEngine, directory: str) -> Any:
    """A directory `logs compact` wrote (router/observe/parquet.py: a column per field,
    named as the field, JSON values as text, `_line` the line's number) as the rows the
    JSON lines give: the same struct, JSON text parsed back to VARIANT, a column the files
    lack null, and `_line` as the position for the tie rule."""
    frame = engine.spark.read.option("mergeSchema", "true").parquet(directory)
    present = set(frame.columns)
    fields = [
        f"CAST(NULL AS {kind})" if name not in present
        else f"try_parse_json(`{name}`)" if kind == "VARIANT"
        else f"try_cast(`{name}` AS {kind})"
        for name, kind in FIELDS
    ]  # fmt: skip
    struct = ", ".join(
        f"{expr} AS `{name}`" for expr, (name, _) in zip(fields, FIELDS, strict=True)
    )
    line = f"coalesce(`{LINE}`, 0)" if LINE in present else "0"
    return frame.selectExpr(
        f"struct({struct}) AS j", f"'{directory.replace(chr(39), chr(39) * 2)}' AS file_path",
        "CAST(0 AS BIGINT) AS block_start", f"CAST({line} AS BIGINT) AS line",
    )  # fmt: skip


def _number(value: str, kind: str) -> str:
    """SQL: the JSON number `value` as a DOUBLE, null for anything else (true is no 1)."""
    test = _NUMBER.format(k=kind)
    return f"CASE WHEN {test} THEN try_variant_get({value}, '$', 'double') END"


def _tables(engine: SparkEngine) -> None:
    """`feedback` (the latest label per request id: latest `ts`, then the later line),
    `configs`, `shadows` and `requests`, from `raw`."""
    engine.view(
        "feedback",
        """
        SELECT rid, latest.col1 AS latest, labels, best.label AS label, best.model AS model,
               best.number AS number, best.structured AS structured
        FROM (SELECT rid, max(position) AS latest, count(*) AS labels,
                     max_by(named_struct('label', label, 'model', model,
                                         'number', label_number, 'structured', structured),
                            position) AS best
              FROM raw WHERE event = 'feedback' GROUP BY rid)
        """,
    )
    engine.view("configs", "SELECT ts, config, models FROM raw WHERE event = 'config_loaded'")
    engine.view(
        "shadows",
        """
        SELECT ts, rid, model, version, primary_version, unit, status, outcome, drop_reason,
               upstream_ms, primary_upstream_ms, agree, config, prediction, prediction_number
        FROM raw WHERE event = 'shadow'
        """,
    )
    engine.view(
        "requests",
        """
        SELECT event, ts, rid, model, version, assigned_version, assigned_by, bucket, unit,
               user_h, status, outcome, latency_ms, config, first_byte_ms, prediction,
               prediction_number
        FROM raw WHERE event = 'request'
        """,
    )
    for name in ("feedback", "configs", "shadows", "requests"):
        engine.execute(f"SELECT count(*) FROM {name}").fetchone()  # computed once, kept

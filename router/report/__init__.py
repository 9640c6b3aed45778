"""`model-router report`: compare model versions from routing logs (contract section 7).

`read` parses logs into DuckDB (or `spark` into Apache Spark's tables, with the same
columns), `build` computes the report as one JSON-ready dict through `engine` (the same SQL
on either) and `router/stats`, and `text` and `html` render it.
"""

from __future__ import annotations

from typing import Any

import duckdb
import orjson

from router.report import text
from router.report.build import ReportError, build
from router.report.engine import Source
from router.report.read import LogError, load
from router.stats.sequential import DEFAULT_T_OPT

__all__ = ["EngineError", "LogError", "ReportError", "make_report", "render"]


class EngineError(Exception):
    """The engine asked for cannot run here (Spark without Java)."""


def render(report: dict[str, Any], fmt: str) -> str:
    """The report as `text`, `json` or `html`."""
    if fmt == "json":
        return orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n"
    if fmt == "html":
        from router.report import html

        return html.render(report)
    return text.render(report)


def make_report(
    paths: list[str],
    model: str | None = None,
    baseline: str | None = None,
    *,
    t_opt: float = DEFAULT_T_OPT,
    engine: tuple[str, str] = ("duckdb", ""),
) -> dict[str, Any]:
    """Read the logs and compute the report; raises LogError, ReportError or EngineError.
    `t_opt` is the always-valid interval's tuning constant (router/stats/sequential.py);
    `engine` is ("duckdb", "") or ("spark", its master URL); with Spark, ImportError
    when pyspark is not installed."""
    loaded = _load(paths, *engine)
    try:
        return build(loaded, model, baseline, t_opt=t_opt)
    except duckdb.OutOfMemoryException as exc:
        first = str(exc).splitlines()[0]
        raise ReportError(
            f"DuckDB ran out of memory on these logs ({first}); "
            "run the report where the logs are with --engine spark (docs/spark.md)"
        ) from None
    finally:
        loaded.engine.close()


def _load(paths: list[str], engine: str, master: str) -> Source:
    if engine != "spark":
        return load(paths)
    from router.report import spark  # pyspark: the `spark` extra

    try:
        return spark.load(paths, master or "local[*]")
    except spark.EngineError as exc:
        raise EngineError(str(exc)) from None

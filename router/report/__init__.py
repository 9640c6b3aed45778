"""`model-router report`: compare model versions from routing logs (contract section 7).

`read` parses logs into DuckDB, `build` computes the report as one JSON-ready dict with
`stats`, and `text` and `html` render it.
"""

from __future__ import annotations

from typing import Any

import orjson

from router.report import text
from router.report.build import ReportError, build
from router.report.read import LogError, load

__all__ = ["LogError", "ReportError", "make_report", "render"]


def render(report: dict[str, Any], fmt: str) -> str:
    """The report as `text`, `json` or `html`."""
    if fmt == "json":
        return orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n"
    if fmt == "html":
        from router.report import html

        return html.render(report)
    return text.render(report)


def make_report(
    paths: list[str], model: str | None = None, baseline: str | None = None
) -> dict[str, Any]:
    """Read the logs and compute the report; raises LogError or ReportError."""
    loaded = load(paths)
    try:
        return build(loaded, model, baseline)
    finally:
        loaded.con.close()

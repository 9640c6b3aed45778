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
from router.stats.sequential import DEFAULT_T_OPT

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
    paths: list[str],
    model: str | None = None,
    baseline: str | None = None,
    *,
    t_opt: float = DEFAULT_T_OPT,
) -> dict[str, Any]:
    """Read the logs and compute the report; raises LogError or ReportError. `t_opt` is the
    always-valid interval's tuning constant (router/stats/sequential.py)."""
    loaded = load(paths)
    try:
        return build(loaded, model, baseline, t_opt=t_opt)
    finally:
        loaded.con.close()

"""The HTML report: one self-contained page, tables and inline SVG charts, no script.

Nothing is fetched from the network: the CSS is inline, the charts are SVG written here
(see `charts` and `svg`), and a Content-Security-Policy forbids loading anything else.
Every name taken from the log goes through `html.escape`.
"""

from __future__ import annotations

from html import escape
from typing import Any

from router.report import charts
from router.report.charts import Estimate, percent
from router.report.text import (
    FIRST_BYTE_HEADER,
    bad_lines,
    feedback_line,
    first_byte_cells,
    shadow_lines,
    streaming,
    summary,
    verdicts,
)

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"

CSS = """
:root { color-scheme: light; }
body { margin: 0; background: #f6f7f9; color: #1f2328;
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
main { max-width: 1100px; margin: 0 auto; padding: 20px 24px 48px; }
h1 { font-size: 22px; margin: 8px 0 4px; }
h2 { font-size: 19px; margin: 0 0 4px; }
h3 { font-size: 15px; margin: 22px 0 8px; }
code { font: 0.95em ui-monospace, "SFMono-Regular", "DejaVu Sans Mono", monospace; }
.meta { color: #57606a; margin: 0 0 6px; }
.banner { background: #b42318; color: #fff; padding: 12px 24px; font-size: 15px; }
.banner + .banner { border-top: 1px solid #e5786f; }
.banner code { color: #fff; }
section.model { background: #fff; border: 1px solid #d8dee4; border-radius: 8px;
  padding: 18px 20px 20px; margin: 18px 0; }
section.model.mismatch { border-color: #b42318; box-shadow: inset 4px 0 0 #b42318; }
.flag { color: #b42318; font-weight: 600; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; width: 100%; }
.scroll { overflow-x: auto; }
th, td { padding: 5px 8px; border-bottom: 1px solid #e4e7eb; text-align: right;
  white-space: nowrap; }
th { background: #f3f4f6; font-weight: 600; color: #3d444d; font-size: 13px; }
th:first-child, td:first-child, td.name, th.name { text-align: left; }
td:first-child, td.name { white-space: normal; overflow-wrap: anywhere; min-width: 5em; }
.ci { color: #57606a; font-size: 12px; }
.swatch { display: inline-block; width: 11px; height: 11px; border-radius: 2px;
  margin-right: 7px; vertical-align: -1px; }
.badge { font-size: 11px; color: #57606a; border: 1px solid #c9d1d9; border-radius: 9px;
  padding: 0 6px; margin-left: 6px; }
ul.verdicts { list-style: none; padding: 0; margin: 10px 0 0; }
ul.verdicts li { padding: 3px 0 3px 12px; border-left: 3px solid #c9d1d9; margin: 4px 0;
  font-variant-numeric: tabular-nums; }
ul.verdicts li.worse { border-left-color: #b42318; }
ul.verdicts li.better { border-left-color: #1a7f37; }
.grid { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 14px 20px; }
figure { margin: 0; }
figure.wide { grid-column: 1 / -1; }
figcaption { font-weight: 600; font-size: 13.5px; margin: 0 0 4px; }
figcaption span { font-weight: 400; color: #57606a; }
svg.chart { display: block; max-width: 100%; height: auto;
  font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
.empty { color: #57606a; font-style: italic; }
footer { color: #57606a; font-size: 12px; margin-top: 24px; }
a.how { font-size: 12px; color: #0969da; margin-left: 6px; }
section.how dt { font-weight: 600; margin-top: 8px; }
section.how dd { margin: 2px 0 0; color: #3d444d; max-width: 80ch; }
"""


def render(report: dict[str, Any]) -> str:
    models: dict[str, Any] = report["models"]
    title = "model-router report" + (f": {', '.join(models)}" if models else "")
    banners = [_banner(name, m["srm"]) for name, m in models.items() if m["srm"]["mismatch"]]
    sections = [_model(name, model) for name, model in models.items()]
    if not sections:
        sections = ['<p class="empty">No requests for any model in the log.</p>']
    body = [*banners, "<main>", f"<h1>{escape(title)}</h1>", _summary(report), *sections,
            _how_to_read(), _footer(), "</main>"]  # fmt: skip
    return _page(title, "\n".join(body))


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )


def _banner(name: str, srm: dict[str, Any]) -> str:
    return (
        f'<div class="banner" role="alert"><strong>Sample ratio mismatch</strong> in model '
        f"<code>{escape(name)}</code>: users split {escape(_shares(srm['observed']))}, but the "
        f"split in force expects {escape(_shares(srm['expected']))} (chi-square p "
        f"{escape(_p(srm['p_value']))}). Assignment is broken somewhere (a rule or client catching "
        "users, lost log records, a bot): the comparison cannot be trusted.</div>"
    )


def _summary(report: dict[str, Any]) -> str:
    files = report["files"]
    names = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
    line = summary(report, names)
    bad = report["bad_lines"]
    if bad:
        line += f"; {bad_lines(bad)}"
    return f'<p class="meta">{escape(line)}</p>'


def _footer() -> str:
    return (
        "<footer>Only randomised traffic (split, no_user_random) enters the comparison, "
        "grouped by assigned version. Error rate counts server_error, timeout and unavailable. "
        "Intervals are 95%, with the user as the unit (delta method).</footer>"
    )


def _model(name: str, model: dict[str, Any]) -> str:
    versions: dict[str, Any] = model["versions"]
    palette = charts.colours(_version_order(model))
    mismatch = bool(model["srm"]["mismatch"])
    base = model["baseline"]
    parts = [
        f'<section class="model{" mismatch" if mismatch else ""}" id="model-{escape(name)}">',
        f"<h2>Model <code>{escape(name)}</code></h2>",
        f'<p class="meta">Baseline <strong>{escape(base or "-")}</strong> · randomised '
        "traffic (split, no_user_random) by assigned version</p>",
        _srm_line(model["srm"]),
    ]
    if feedback := feedback_line(model.get("feedback")):
        parts.append(f'<p class="meta">{escape(feedback[0].upper() + feedback[1:])}</p>')
    if versions:
        table = _versions_table(versions, base, palette, model.get("labels"))
        parts += ["<h3>Versions</h3>", table]
        parts.append(_verdicts(versions, base))
        parts.append(_charts(model, palette))
    else:
        parts.append('<p class="empty">No randomised traffic.</p>')
    parts.append(_shadows(model.get("shadow") or {}))
    parts.append(_others(model["by_assigned_by"]))
    parts.append("</section>")
    return "\n".join(p for p in parts if p)


def _version_order(model: dict[str, Any]) -> list[str]:
    """The compared versions in the table's order, then any other version the charts show."""
    names = list(model["versions"])
    extra = list(model["latency_histogram"].get("versions") or {})
    extra += [p["version"] for p in model["timeline"].get("points") or []]
    for name in extra:
        if name not in names:
            names.append(name)
    return names


def _srm_line(srm: dict[str, Any]) -> str:
    if not srm.get("checked", True):
        return f'<p class="meta">{escape("Sample ratio: not checked: " + srm["reason"])}</p>'
    if not srm["observed"]:
        return ""
    text = (
        f"Sample ratio: users {_shares(srm['observed'])}; split in force "
        f"{_shares(srm['expected'])}; chi-square p {_p(srm['p_value'])}"
    )
    if srm.get("unmatched"):
        text += f"; {srm['unmatched']:,} users under a routing table missing from the log left out"
    flag = ' <span class="flag">mismatch</span>' if srm["mismatch"] else ""
    return f'<p class="meta">{escape(text)}{flag}</p>'


def _versions_table(
    versions: dict[str, Any], base: str | None, palette: dict[str, str], labels: str | None
) -> str:
    quality = ("MAE [95% CI]", "RMSE") if labels == "real" else ("accuracy [95% CI]",)
    first_byte = streaming(versions)  # shown only when a version streams
    head = ("version", "requests", "share", "users", "error rate [95% CI]", "timeouts",
            "p50 ms", "p95 ms", "p99 ms", *(FIRST_BYTE_HEADER if first_byte else ()),
            *quality, "labelled")  # fmt: skip
    rows = [_version_row(v, s, v == base, palette.get(v, "#888"), len(quality), first_byte)
            for v, s in versions.items()]  # fmt: skip
    return _table(head, rows)


def _version_row(
    version: str,
    s: dict[str, Any],
    is_base: bool,
    colour: str,
    quality_cells: int,
    first_byte: bool,
) -> str:
    lat = s["latency_ms"]
    badge = '<span class="badge">baseline</span>' if is_base else ""
    quality = ["<td>-</td>"] * quality_cells
    if s.get("accuracy") is not None:
        quality = [_with_ci(s["accuracy"], s["accuracy_ci95"], 1)]
    elif s.get("mae") is not None:
        quality = [_number_with_ci(s["mae"], s.get("mae_ci95")), _td(f"{s['rmse']:.4g}")]
    cells = [
        f'<td><span class="swatch" style="background:{colour}"></span>'
        f"<code>{escape(version)}</code>{badge}</td>",
        _td(f"{s['requests']:,}"), _td(percent(s["share"])), _td(f"{s['users']:,}"),
        _with_ci(s["error_rate"], s["error_rate_ci95"], 2), _td(percent(s["timeout_rate"], 2)),
        _td(_ms(lat["p50"])), _td(_ms(lat["p95"])), _td(_ms(lat["p99"])),
        *(_td(cell) for cell in (first_byte_cells(s) if first_byte else ())),
        *quality, _td(f"{s['labelled']:,}"),
    ]  # fmt: skip
    return "<tr>" + "".join(cells) + "</tr>"


def _verdicts(versions: dict[str, Any], base: str | None) -> str:
    """Each verdict line, with a link to what its numbers mean (the page's last section)."""
    items = []
    for version, s in versions.items():
        vs = s["vs_baseline"]
        if vs is None or base is None:
            continue
        tone = "" if not vs["significant"] else (
            "worse" if vs["error_rate_diff"] > 0 else "better")  # fmt: skip
        for metric, line in verdicts(version, base, vs):
            cls = f' class="{tone}"' if metric == "error" and tone else ""
            link = f' <a class="how" href="#how-{metric}">how to read this</a>'
            items.append(f"<li{cls}>{escape(line)}{link}</li>")
    if not items:
        return ""
    return '<ul class="verdicts">' + "".join(items) + "</ul>"


# What a verdict's numbers mean, in plain words; docs/statistics.md has the formulas and
# the measured calibration. Each verdict links here by its metric.
HOW_TO_READ = (
    (
        "error",
        "Error rate",
        (
            "The difference is the candidate's error rate minus the baseline's, in percentage "
            "points, with the user as the unit: one user's requests count together, so a few heavy "
            "users cannot make a difference look certain. Periods of constant split are compared "
            "apart and combined, so a ramp or a drift over the day shared by all versions does not "
            "show up as a difference. The first interval and p-value hold for one look at a log "
            "whose size you fixed in advance. The always-valid ones (a confidence sequence) hold "
            "however often the report is re-run as the log grows; they are wider, and the verdict "
            "follows them. With three versions or more, p-values are Holm-adjusted."
        ),
    ),
    (
        "latency",
        "Latency",
        (
            "The p50 and p95 differences are the differences of the quantiles in the table, over "
            "all requests; their intervals come from the users' shares of requests below each "
            "quantile (delta method), so they too take the user as the unit. (n.s.) means the "
            "interval contains zero."
        ),
    ),
    (
        "quality",
        "Accuracy and mean absolute error",
        (
            "From feedback labels joined by request id. Categorical labels give accuracy (the "
            "share of labelled requests whose prediction equals the label, numbers by value); "
            "real-valued labels give mean absolute error and RMSE. The difference, interval and "
            "p-value are fixed-horizon, with the user as the unit. Labels arrive late: a version "
            "that has just started has few."
        ),
    ),
)


def _how_to_read() -> str:
    items = "".join(
        f'<dt id="how-{anchor}">{escape(title)}</dt><dd>{escape(text)}</dd>'
        for anchor, title, text in HOW_TO_READ
    )
    return (
        '<section class="how"><h3>How to read the verdicts</h3><dl>' + items + "</dl>"
        '<p class="meta">The formulas, their sources and the false-positive rates measured by '
        "simulation are in docs/statistics.md of model-router.</p></section>"
    )


def _charts(model: dict[str, Any], palette: dict[str, str]) -> str:
    versions: dict[str, Any] = model["versions"]
    base = model["baseline"]
    errors = [Estimate(v, s["error_rate"], _pair(s["error_rate_ci95"]))
              for v, s in versions.items()]  # fmt: skip
    accuracy = [Estimate(v, s.get("accuracy"), _pair(s.get("accuracy_ci95")))
                for v, s in versions.items()]  # fmt: skip
    step = model["timeline"].get("step_s")
    figures = [
        (charts.latency(model["latency_histogram"], versions, palette),
         "Latency distribution", "share of each version's requests per bin", True),
        (charts.traffic_share(model["timeline"], palette),
         "Traffic share over time", _per(step), False),
        (charts.error_rate(model["timeline"], palette), "Error rate over time", _per(step), False),
        (charts.intervals("Error rate per version with its 95% interval", "error rate", errors,
                          palette, base, from_zero=True),
         "Error rate per version", "with its 95% interval; dashed: baseline", False),
        (charts.intervals("Accuracy per version with its 95% interval", "accuracy", accuracy,
                          palette, base, from_zero=False),
         "Accuracy per version", "against feedback labels, with its 95% interval", False),
    ]  # fmt: skip
    shown = [_figure(*f) for f in figures if f[0] is not None]
    return '<h3>Charts</h3>\n<div class="grid">\n' + "\n".join(shown) + "\n</div>"


def _figure(chart: str | None, title: str, note: str, wide: bool) -> str:
    cls = ' class="wide"' if wide else ""
    caption = f"{escape(title)} <span>{escape(note)}</span>" if note else escape(title)
    return f"<figure{cls}><figcaption>{caption}</figcaption>{chart}</figure>"


def _shadows(shadows: dict[str, Any]) -> str:
    """The shadow versions: copies, agreement with the primary, paired latency, quality."""
    if not shadows:
        return ""
    head = ("shadow", "copies", "dropped", "error rate", "agreement [95% CI]", "judged",
            "by primary", "latency vs primary (p50 of differences)")  # fmt: skip
    rows = []
    for version, s in shadows.items():
        agreement = "<td>-</td>"
        if s["agreement"] is not None:
            agreement = _with_ci(s["agreement"], s["agreement_ci95"] or [0.0, 1.0], 1)
        latency = s["latency_diff_ms"]
        delay = "-"
        if latency is not None:
            ci = latency["ci95"]
            delay = f"{latency['p50']:+.1f} ms" + (f" [{ci[0]:+.1f}, {ci[1]:+.1f}]" if ci else "")
        each = ", ".join(f"{p} {percent(b['agreement'], 1)}" for p, b in s["by_primary"].items()
                         if b["agreement"] is not None)  # fmt: skip
        errors = "-" if s["error_rate"] is None else percent(s["error_rate"], 2)
        cells = [
            f"<td><code>{escape(version)}</code></td>", _td(f"{s['copies']:,}"),
            _td(f"{s['dropped']:,}"), _td(errors), agreement, _td(f"{s['judged']:,}"),
            _td(each or "-"), _td(delay),
        ]  # fmt: skip
        rows.append("<tr>" + "".join(cells) + "</tr>")
    quality = [line for v, s in shadows.items() for line in shadow_lines({v: s})
               if "labelled requests" in line]  # fmt: skip
    note = (
        '<p class="meta">A shadow gets copies of live requests and never answers a client. '
        "Agreement counts copies where both answers were ok JSON and every log_response field "
        "was equal by value; users are the units of every interval.</p>"
    )
    extra = "".join(f'<p class="meta">{escape(line)}</p>' for line in quality)
    return "<h3>Shadow traffic</h3>\n" + _table(head, rows) + note + extra


def _others(rows: list[dict[str, Any]]) -> str:
    other = [r for r in rows if not r["randomised"]]
    if not other:
        return ""
    head = ("assigned by", "version", "requests", "error rate", "p50 ms", "p95 ms", "p99 ms")
    body = []
    for r in other:
        lat = r["latency_ms"]
        cells = [
            f"<td>{escape(r['assigned_by'] or '(refused)')}</td>",
            f'<td class="name"><code>{escape(r["version"] or "-")}</code></td>',
            _td(f"{r['requests']:,}"), _td(percent(r["error_rate"], 2)),
            _td(_ms(lat["p50"])), _td(_ms(lat["p95"])), _td(_ms(lat["p99"])),
        ]  # fmt: skip
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        '<h3>Not in the comparison</h3>\n<p class="meta">Pinned, header and rule traffic: who '
        "asks for a version is not a random sample, so it is shown apart.</p>\n"
        + _table(head, body, left=2)
    )


def _table(head: tuple[str, ...], rows: list[str], left: int = 1) -> str:
    """A table whose first `left` columns hold names (left-aligned) and the rest numbers."""
    th = "".join(
        f'<th class="name">{escape(h)}</th>' if i < left else f"<th>{escape(h)}</th>"
        for i, h in enumerate(head)
    )
    body = "\n".join(rows)
    return (
        f'<div class="scroll"><table>\n<thead><tr>{th}</tr></thead>\n'
        f"<tbody>\n{body}\n</tbody>\n</table></div>"
    )


def _td(value: str, cls: str = "") -> str:
    return f'<td class="{cls}">{escape(value)}</td>' if cls else f"<td>{escape(value)}</td>"


def _pair(values: list[float] | None) -> tuple[float, float] | None:
    return None if values is None else (values[0], values[1])


def _with_ci(value: float, ci95: list[float], digits: int) -> str:
    """`0.94% [0.85%, 1.03%]`, the interval smaller and grey."""
    low, high = percent(ci95[0], digits), percent(ci95[1], digits)
    return f'<td>{percent(value, digits)} <span class="ci">[{low}, {high}]</span></td>'


def _number_with_ci(value: float, ci95: list[float] | None) -> str:
    """`0.412 [0.398, 0.427]`; the interval left out when there is none."""
    if not ci95:
        return _td(f"{value:.4g}")
    return f'<td>{value:.4g} <span class="ci">[{ci95[0]:.4g}, {ci95[1]:.4g}]</span></td>'


def _per(step: float | None) -> str:
    return "" if not step else f"per {charts.duration(step)}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _shares(counts: dict[str, float]) -> str:
    total = sum(counts.values()) or 1
    return ", ".join(f"{v} {c / total:.1%}" for v, c in sorted(counts.items()))


def _p(value: float) -> str:
    """`= 0.11`, `= 0.0032`, or `< 0.0001`, as in the text report."""
    if value < 0.0001:
        return "< 0.0001"
    return f"= {value:.4f}" if value < 0.01 else f"= {value:.2f}"

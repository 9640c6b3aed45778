"""The text report: a readable table per model and one verdict line per candidate."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def render(report: dict[str, Any]) -> str:
    lines: list[str] = []
    for name, model in report["models"].items():
        if model["srm"]["mismatch"]:
            lines.append(_srm_warning(name, model["srm"]))
    if lines:
        lines.append("")
    lines.append(f"model-router report: {summary(report)}")
    if report["bad_lines"]:
        bad = report["bad_lines"]
        lines.append(f"  {bad_lines(bad)}")
    if not report["models"]:
        lines.append("  no request or shadow records for any model: nothing to compare")
    for name, model in report["models"].items():
        lines.append("")
        lines.extend(_model(name, model))
    return "\n".join(lines) + "\n"


def summary(report: dict[str, Any], names: str = "") -> str:
    """`1,204 requests from 2 files (names), <first> to <last>`; the period is left out
    when no request has a time (an empty log): `0 requests from 1 file`."""
    files = len(report["files"])
    line = f"{report['records']:,} requests from {files} file{'s' if files != 1 else ''}"
    line += f" ({names})" if names else ""
    if report["first"] is not None and report["last"] is not None:
        line += f", {report['first']} to {report['last']}"
    return line


def bad_lines(count: int) -> str:
    """`1 line could not be read and was skipped`, or `3 lines ... were skipped`."""
    if count == 1:
        return "1 line could not be read and was skipped"
    return f"{count:,} lines could not be read and were skipped"


def _srm_warning(name: str, srm: dict[str, Any]) -> str:
    observed = _shares(srm["observed"])
    expected = _shares(srm["expected"])
    return (
        f"sample ratio mismatch in model {name}: users split {observed}, but the "
        f"split in force expects {expected} (chi-square p {_p(srm['p_value'])}). Assignment "
        "is broken somewhere (a rule or client catching users, lost log records, a bot): "
        "the comparison below cannot be trusted."
    )


def _shares(counts: dict[str, float]) -> str:
    total = sum(counts.values()) or 1
    return ", ".join(f"{v} {c / total:.1%}" for v, c in sorted(counts.items()))


def _model(name: str, model: dict[str, Any]) -> list[str]:
    if not model["versions"]:
        lines = [f"{name}: no randomised traffic (split, no_user_random) to compare"]
    else:
        lines = _comparison(name, model)
    other = [r for r in model["by_assigned_by"] if not r["randomised"]]
    if other:
        lines.append("  not in the comparison (who asks for a version is not a random sample):")
        rows = [("assigned_by", "version", "requests", "errors", "p50 ms", "p95 ms")]
        for r in other:
            rows.append((
                r["assigned_by"] or "(refused)", r["version"] or "-", f"{r['requests']:,}",
                f"{r['error_rate']:.2%}", _ms(r["latency_ms"]["p50"]), _ms(r["latency_ms"]["p95"]),
            ))  # fmt: skip
        lines.extend("    " + line for line in _table(rows))
    return lines


def _comparison(name: str, model: dict[str, Any]) -> list[str]:
    versions = model["versions"]
    base = model["baseline"]
    lines = [f"{name}: randomised traffic (split, no_user_random) by assigned version; "
             f"baseline {base}"]  # fmt: skip
    quality = ("MAE [95% CI], RMSE (labelled)" if model.get("labels") == "real"
               else "accuracy [95% CI] (labelled)")  # fmt: skip
    first_byte = FIRST_BYTE_HEADER if streaming(versions) else ()
    header = ("version", "requests", "share", "users", "errors", "timeouts", "p50 ms",
              "p95 ms", "p99 ms", *first_byte, quality)  # fmt: skip
    rows: list[tuple[str, ...]] = [header]
    for v, s in versions.items():
        lat = s["latency_ms"]
        rows.append((
            v, f"{s['requests']:,}", f"{s['share']:.1%}", f"{s['users']:,}",
            f"{s['error_rate']:.2%}", f"{s['timeout_rate']:.2%}",
            _ms(lat["p50"]), _ms(lat["p95"]), _ms(lat["p99"]),
            *(first_byte_cells(s) if first_byte else ()), quality_cell(s),
        ))  # fmt: skip
    lines.extend("  " + line for line in _table(rows))
    for v, s in versions.items():
        if s["vs_baseline"] is not None:
            lines.extend("  " + line for _, line in verdicts(v, base, s["vs_baseline"]))
    srm = model["srm"]
    if not srm.get("checked", True):
        lines.append(f"  sample ratio: not checked: {srm['reason']}")
    elif srm["observed"]:
        lines.append(
            f"  sample ratio: users {_shares(srm['observed'])}; split in force "
            f"{_shares(srm['expected'])}; p {_p(srm['p_value'])}"
            + (" (MISMATCH)" if srm["mismatch"] else "")
        )
    if line := feedback_line(model.get("feedback")):
        lines.append("  " + line)
    lines.extend("  " + line for line in shadow_lines(model.get("shadow") or {}))
    return lines


def shadow_lines(shadows: dict[str, Any]) -> list[str]:
    """Per shadow version: `shadow v3: 1,204 copies (12 dropped: overloaded 12), error rate
    0.4%`, then its agreement with the primary, the paired latency and its quality."""
    lines = []
    for version, s in shadows.items():
        dropped = ", ".join(f"{k} {n:,}" for k, n in s["drop_reasons"].items())
        errors = "-" if s["error_rate"] is None else f"{s['error_rate']:.2%}"
        lines.append(
            f"shadow {version}: {s['copies']:,} copies"
            + (f" ({s['dropped']:,} dropped: {dropped})" if s["dropped"] else "")
            + f", error rate {errors} (never seen by a client)"
        )
        if s["agreement"] is not None:
            low, high = s["agreement_ci95"] or (None, None)
            ci = f" [{low:.1%}, {high:.1%}]" if low is not None else ""
            each = ", ".join(
                f"{p} {b['agreement']:.1%}" for p, b in s["by_primary"].items()
                if b["agreement"] is not None
            )  # fmt: skip
            lines.append(
                f"shadow {version}: agrees with the primary on {s['agreement']:.1%}{ci} of "
                f"{s['judged']:,} answers" + (f" (with {each})" if each else "")
            )
        if (latency := s["latency_diff_ms"]) is not None:
            ci = latency["ci95"]
            interval = f" [{ci[0]:+.1f}, {ci[1]:+.1f}]" if ci else ""
            lines.append(
                f"shadow {version}: upstream latency {latency['p50']:+.1f} ms{interval} "
                "against the primary on the same requests (median of the differences)"
            )
        lines.extend(_shadow_quality(version, s))
    return lines


def _shadow_quality(version: str, s: dict[str, Any]) -> list[str]:
    if not s["labelled"]:
        return []
    if s.get("accuracy") is not None:
        low, high = s["accuracy_diff_ci95"] or (math.nan, math.nan)
        return [
            f"shadow {version}: accuracy {s['accuracy']:.1%} against the primary's "
            f"{s['primary_accuracy']:.1%} on the same {s['labelled']:,} labelled requests: "
            f"{_pp(s['accuracy_diff'])} pp [{_pp(low)}, {_pp(high)}]"
        ]
    low, high = s["mae_diff_ci95"] or (math.nan, math.nan)
    return [
        f"shadow {version}: mean absolute error {s['mae']:.4g} against the primary's "
        f"{s['primary_mae']:.4g} on the same {s['labelled']:,} labelled requests: "
        f"{s['mae_diff']:+.4g} [{low:+.4g}, {high:+.4g}]"
    ]


def feedback_line(counts: dict[str, int] | None) -> str:
    """`feedback: 4 joined, 1 matched no request, 1 request id logged twice`, or nothing."""
    if not counts or not any(counts.values()):
        return ""
    return (
        f"feedback: {counts['joined']:,} joined, {counts['unmatched']:,} matched no request, "
        f"{counts['duplicate_request_ids']:,} request ids logged more than once"
    )


def verdicts(version: str, base: str, vs: dict[str, Any]) -> list[tuple[str, str]]:
    """(metric, line) pairs: `v2 vs v1: error rate -0.4 pp [-0.9, +0.1], p = 0.11;
    always-valid [-1.2, +0.4], p = 0.62: no significant difference`, then latency and
    quality. The verdict word follows the always-valid p-value, which stays honest however
    often the report is re-run (docs/statistics.md)."""
    if vs["error_rate_diff"] is None or vs["p_value"] is None:
        return [("error", f"{version} vs {base}: error rate: too few users to compare in a "
                 "common period")]  # fmt: skip
    low, high = vs["ci95"]
    always = vs["always_valid"]
    if not vs["significant"]:
        word = "no significant difference"
    else:
        word = "significantly higher" if vs["error_rate_diff"] > 0 else "significantly lower"
    adjusted = " (Holm)" if vs.get("adjusted") else ""
    lines = [("error", (
        f"{version} vs {base}: error rate {_pp(vs['error_rate_diff'])} pp "
        f"[{_pp(low)}, {_pp(high)}], p {_p(vs['p_value'])}{adjusted}; always-valid "
        f"[{_pp(always['ci95'][0])}, {_pp(always['ci95'][1])}], p {_p(always['p_value'])}: {word}"
    ))]  # fmt: skip
    for timing, what in TIMED_VERDICTS:
        if parts := _quantile_diffs(vs.get(timing)):
            lines.append(("latency", f"{version} vs {base}: {what} " + parts))
    if vs.get("accuracy_diff") is not None:
        low, high = vs["accuracy_ci95"]
        lines.append(("quality", (
            f"{version} vs {base}: accuracy {_pp(vs['accuracy_diff'])} pp "
            f"[{_pp(low)}, {_pp(high)}], p {_p(vs['accuracy_p_value'])}{adjusted}"
        )))  # fmt: skip
    if vs.get("mae_diff") is not None:
        low, high = vs["mae_ci95"]
        lines.append(("quality", (
            f"{version} vs {base}: mean absolute error {vs['mae_diff']:+.4g} "
            f"[{low:+.4g}, {high:+.4g}], p {_p(vs['mae_p_value'])}{adjusted}"
        )))  # fmt: skip
    return lines


# Per timing of a record, what its verdict line calls it (the line is left out without
# differences: a log without first_byte_ms reads as before).
TIMED_VERDICTS = (("latency_ms", "latency"), ("first_byte_ms", "first byte"))
FIRST_BYTE_HEADER = ("first byte p50 ms", "first byte p95 ms")


def _quantile_diffs(diffs: dict[str, Any] | None) -> str:
    """`p50 +1.2 ms [+0.4, +2.0], p95 -0.3 ms [-1.1, +0.5] (n.s.)`, or nothing."""
    parts = []
    for q in ("p50", "p95"):
        diff, ci = (diffs or {}).get(f"{q}_diff"), (diffs or {}).get(f"{q}_ci95")
        if diff is None or ci is None or ci[0] is None:
            continue
        flag = " (n.s.)" if ci[0] <= 0 <= ci[1] else ""
        parts.append(f"{q} {diff:+.1f} ms [{ci[0]:+.1f}, {ci[1]:+.1f}]{flag}")
    return ", ".join(parts)


def streaming(versions: dict[str, Any]) -> bool:
    """Whether some version has first_byte_ms values: only then are they shown."""
    return any(s.get("first_byte_ms") for s in versions.values())


def first_byte_cells(s: dict[str, Any]) -> tuple[str, str]:
    """A version's first-byte p50 and p95, `-` without values."""
    first = s.get("first_byte_ms") or {}
    return _ms(first.get("p50")), _ms(first.get("p95"))


def quality_cell(s: dict[str, Any]) -> str:
    """`91.2% [89.0%, 93.1%] (1,204)`, or `0.412 [0.398, 0.427], 0.530 (1,204)` for MAE
    and RMSE, or `-` without labels."""
    if s.get("accuracy") is not None:
        low, high = s["accuracy_ci95"]
        return f"{s['accuracy']:.1%} [{low:.1%}, {high:.1%}] ({s['labelled']:,})"
    if s.get("mae") is not None:
        ci = s.get("mae_ci95")
        interval = f" [{ci[0]:.4g}, {ci[1]:.4g}]" if ci else ""
        return f"{s['mae']:.4g}{interval}, {s['rmse']:.4g} ({s['labelled']:,})"
    return "-"


def _table(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in
                  enumerate(zip(row, widths, strict=True))).rstrip()
        for row in rows
    ]  # fmt: skip


def _pp(value: float) -> str:
    return f"{value * 100:+.2f}"


def _p(value: float) -> str:
    """`= 0.11`, `= 0.0032`, or `< 0.0001`: to be written after `p `."""
    if value < 0.0001:
        return "< 0.0001"
    return f"= {value:.4f}" if value < 0.01 else f"= {value:.2f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"

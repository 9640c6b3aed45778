"""The charts of the HTML report, as inline SVG built from the report dict.

Each function takes the part of the report it draws and a colour per version, and returns
one `<svg>` element, or None when there is nothing to draw.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from router.report import svg

WIDE = 1040  # a chart across the page
HALF = 510  # one of two charts side by side
PALETTE = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#7f7f7f", "#000000")


def colours(names: Sequence[str]) -> dict[str, str]:
    """A colour per version, in order, from a colour-blind-safe palette (Okabe and Ito)."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def percent(value: float, digits: int = 1) -> str:
    return f"{value * 100:.{digits}f}%"


def _percent_tick(value: float) -> str:
    return f"{value * 100:.3f}".rstrip("0").rstrip(".") + "%"


def _ms_tick(value: float) -> str:
    return f"{value:g}" if value < 1 else f"{value:.0f}"


def _percent_axis(box: svg.Box, top: float, label: str) -> tuple[svg.Linear, str]:
    scale = svg.Linear(0.0, top, box.bottom, box.top)
    ticks = [(v, _percent_tick(v)) for v in svg.nice_ticks(0.0, top, 4)]
    return scale, svg.y_axis(box, scale, ticks, label)


# Latency distribution ------------------------------------------------------------------------


TAIL = 0.005  # the latency axis leaves out at most this share of a version's requests each side


def latency(
    histogram: dict[str, Any], versions: dict[str, Any], palette: dict[str, str]
) -> str | None:
    """Share of each version's requests per log-spaced latency bin, as overlaid steps.

    The axis spans whole decades around the bins that hold all but TAIL of each version's
    requests on either side; what falls outside is written under the chart.
    """
    per_decade = int(histogram.get("bins_per_decade") or 10)
    given = histogram.get("versions") or {}
    shares = {v: _bin_shares(given[v], per_decade) for v in palette if given.get(v)}
    if not shares:
        return None
    spans = [_body(s) for s in shares.values()]
    lo, hi = svg.decades(10 ** (min(a for a, _ in spans) / per_decade),
                         10 ** ((max(b for _, b in spans) + 1) / per_decade))  # fmt: skip
    first, last = round(math.log10(lo) * per_decade), round(math.log10(hi) * per_decade) - 1
    inside = {v: {k: x for k, x in s.items() if first <= k <= last} for v, s in shares.items()}
    items = [(_latency_legend(v, versions.get(v)), palette[v]) for v in shares]
    legend, rows = svg.legend(items, 64, 16, WIDE - 88)
    box = svg.Box(64, 16 + rows * 18 + 4, WIDE - 88, 220)
    x = svg.Log10(lo, hi, box.left, box.right)
    top = svg.nice_ceiling(max(max(s.values(), default=0.0) for s in inside.values()))
    y, y_axis = _percent_axis(box, top, "share of requests")
    major, minor = svg.log_ticks(lo, hi)
    parts = [y_axis, svg.x_axis(box, x, [(v, _ms_tick(v)) for v in major],
                                "latency (ms, log scale)", minor), legend]  # fmt: skip
    parts += [_steps(bins, per_decade, x, y, palette[v]) for v, bins in inside.items() if bins]
    notes = [_outside(v, shares[v], first, last, lo, hi) for v in shares]
    note, note_rows = svg.flow([n for n in notes if n], box.left, box.bottom + 54, box.width)
    parts.append(note)
    title = "Latency distribution per version (share of requests per bin)"
    return svg.chart(WIDE, box.bottom + 44 + note_rows * 18, title, parts)


def _bin_shares(bins: list[list[float]], per_decade: int) -> dict[int, float]:
    """Bin index (lower edge = 10 ** (index / per_decade)) -> share of the version's requests."""
    total = sum(count for _, count in bins) or 1
    out: dict[int, float] = {}
    for edge, count in bins:
        k = round(math.log10(edge) * per_decade)
        out[k] = out.get(k, 0.0) + count / total
    return out


def _body(shares: dict[int, float]) -> tuple[int, int]:
    """The first and last bins once at most TAIL of the requests is left out at each end."""
    keys = sorted(shares)
    below = above = 0.0
    first, last = keys[0], keys[-1]
    for k in keys:
        below += shares[k]
        if below > TAIL:
            first = k
            break
    for k in reversed(keys):
        above += shares[k]
        if above > TAIL:
            last = k
            break
    return first, last


def _outside(
    version: str, shares: dict[int, float], first: int, last: int, lo: float, hi: float
) -> str:
    """`v1: 0.04% below 1 ms, 0.19% above 1000 ms not shown`, or "" when all is shown."""
    below = sum(x for k, x in shares.items() if k < first)
    above = sum(x for k, x in shares.items() if k > last)
    parts = [f"{_small_percent(below)} below {_ms_tick(lo)} ms"] if below else []
    parts += [f"{_small_percent(above)} above {_ms_tick(hi)} ms"] if above else []
    return f"{version}: {' and '.join(parts)} not shown" if parts else ""


def _small_percent(share: float) -> str:
    return "<0.01%" if share < 0.0001 else percent(share, 2)


def _steps(bins: dict[int, float], per_decade: int, x: svg.Scale, y: svg.Scale, colour: str) -> str:
    def edge(k: int) -> float:
        return x(10 ** (k / per_decade))

    first, last = min(bins), max(bins)
    points = [(edge(first), y(0.0))]
    for k in range(first, last + 1):
        share = bins.get(k, 0.0)
        points += [(edge(k), y(share)), (edge(k + 1), y(share))]
    points.append((edge(last + 1), y(0.0)))
    return svg.path([points], colour, 1.8, fill=colour, extra=' fill-opacity="0.10"')


def _latency_legend(version: str, stats: dict[str, Any] | None) -> str:
    lat = (stats or {}).get("latency_ms") or {}
    parts = [f"{q} {lat[q]:.1f}" for q in ("p50", "p95", "p99") if lat.get(q) is not None]
    return f"{version}: " + ", ".join(parts) + " ms" if parts else version


# Over time -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Timeline:
    """Requests and errors per step and version, keyed by the step's start (epoch seconds)."""

    step: float
    times: list[float]
    counts: dict[str, dict[float, tuple[int, int]]]

    @classmethod
    def parse(cls, timeline: dict[str, Any]) -> Timeline | None:
        points, step = timeline.get("points") or [], timeline.get("step_s")
        if not points or not step:
            return None
        counts: dict[str, dict[float, tuple[int, int]]] = {}
        for p in points:
            t = dt.datetime.fromisoformat(p["t"]).timestamp()
            counts.setdefault(p["version"], {})[t] = (p["requests"], p["errors"])
        times = sorted({t for per_time in counts.values() for t in per_time})
        return cls(float(step), times, counts)

    def totals(self) -> dict[float, int]:
        out: dict[float, int] = {}
        for per_time in self.counts.values():
            for t, (n, _) in per_time.items():
                out[t] = out.get(t, 0) + n
        return out


def traffic_share(timeline: dict[str, Any], palette: dict[str, str]) -> str | None:
    """Each version's share of the randomised requests, per step."""
    parsed = Timeline.parse(timeline)
    if parsed is None:
        return None
    totals = parsed.totals()
    series = {
        v: [(t, per_time.get(t, (0, 0))[0] / totals[t] if totals[t] else None)
            for t in parsed.times]
        for v, per_time in parsed.counts.items()
    }  # fmt: skip
    return _over_time(parsed, series, palette, 1.0, "share of requests", "Traffic share over time")


def error_rate(timeline: dict[str, Any], palette: dict[str, str]) -> str | None:
    """Each version's error rate per step; a step without requests of a version is a gap."""
    parsed = Timeline.parse(timeline)
    if parsed is None:
        return None
    series: dict[str, list[tuple[float, float | None]]] = {}
    for v, per_time in parsed.counts.items():
        series[v] = [(t, e / n if n else None) for t, (n, e) in
                     ((t, per_time.get(t, (0, 0))) for t in parsed.times)]  # fmt: skip
    peak = max((r for s in series.values() for _, r in s if r is not None), default=0.0)
    top = svg.nice_ceiling(peak, 4) if peak > 0 else 0.01
    return _over_time(parsed, series, palette, top, "error rate", "Error rate over time")


def _over_time(
    parsed: Timeline,
    series: dict[str, list[tuple[float, float | None]]],
    palette: dict[str, str],
    top: float,
    label: str,
    title: str,
) -> str:
    names = [v for v in palette if v in series]
    legend, rows = svg.legend([(v, palette[v]) for v in names], 64, 16, HALF - 94)
    box = svg.Box(64, 16 + rows * 18 + 4, HALF - 94, 150)
    start, end = parsed.times[0], parsed.times[-1] + parsed.step
    x = svg.Linear(start, end, box.left, box.right)
    y, y_axis = _percent_axis(box, top, label)
    parts = [y_axis, svg.x_axis(box, x, _time_ticks(start, end), _time_label(start, end))]
    half = parsed.step / 2
    for v in names:
        runs: list[list[svg.Point]] = [[]]
        for t, value in series[v]:
            if value is None:
                runs.append([])
            else:
                runs[-1].append((x(t + half), y(value)))
        parts.append(svg.path(runs, palette[v]))
        if len(parsed.times) <= 12:
            parts.extend(svg.dot(px, py, palette[v], 3) for run in runs for px, py in run)
    parts.append(legend)
    per = duration(parsed.step)
    return svg.chart(HALF, box.bottom + 44, f"{title} (per {per})", parts)


_TICK_STEPS = (1, 5, 10, 15, 30, 60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200,
               86400, 2 * 86400, 7 * 86400, 14 * 86400, 28 * 86400)  # fmt: skip


def _time_ticks(start: float, end: float, most: int = 6) -> list[tuple[float, str]]:
    """Round UTC times between start and end, HH:MM (or MM-DD at midnight or for long spans)."""
    step = next((s for s in _TICK_STEPS if (end - start) / s <= most), _TICK_STEPS[-1])
    ticks = []
    for k in range(math.ceil(start / step), math.floor(end / step) + 1):
        when = dt.datetime.fromtimestamp(k * step, dt.UTC)
        daily = step >= 86400 or (when.hour == 0 and when.minute == 0 and end - start > 86400)
        form = "%m-%d" if daily else "%H:%M" if step >= 60 else "%H:%M:%S"
        ticks.append((float(k * step), when.strftime(form)))
    return ticks


def _time_label(start: float, end: float) -> str:
    first = dt.datetime.fromtimestamp(start, dt.UTC).strftime("%Y-%m-%d")
    last = dt.datetime.fromtimestamp(end - 1, dt.UTC).strftime("%Y-%m-%d")
    return f"time (UTC), {first}" + ("" if first == last else f" to {last}")


def duration(seconds: float) -> str:
    for unit, size in (("day", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            n = int(seconds // size)
            return f"{n} {unit}{'s' if unit == 'day' and n != 1 else ''}"
    return f"{seconds:g} s"


# Intervals -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Estimate:
    """One row of an interval chart: a version's value and 95% interval, if it has one."""

    version: str
    value: float | None
    ci95: tuple[float, float] | None


def intervals(
    title: str,
    label: str,
    rows: Sequence[Estimate],
    palette: dict[str, str],
    baseline: str | None,
    from_zero: bool,
) -> str | None:
    """Dot and whisker per version; a dashed line marks the baseline's value."""
    known = [r for r in rows if r.value is not None and r.ci95 is not None]
    if not known:
        return None
    lo, hi = _interval_domain(known, from_zero)
    names = [r.version + (" (baseline)" if r.version == baseline else "") for r in rows]
    values = [_interval_text(r) for r in rows]
    left = min(max(max(svg.text_width(n) for n in names) + 18, 64), 170)
    right = max(svg.text_width(v) for v in values) + 24
    box = svg.Box(left, 12, HALF - left - right, 30 * len(rows) + 8)
    x = svg.Linear(lo, hi, box.left, box.right)
    ticks = [(v, _percent_tick(v)) for v in svg.nice_ticks(lo, hi, 4)]
    parts = [svg.x_axis(box, x, ticks, label)]
    parts.append(svg.line(box.left, box.top, box.left, box.bottom, svg.AXIS))
    base = next((r for r in known if r.version == baseline), None)
    if base is not None and base.value is not None:
        bx = x(base.value)
        parts.append(svg.line(bx, box.top, bx, box.bottom, "#999", ' stroke-dasharray="4 3"'))
    for i, (row, name, value) in enumerate(zip(rows, names, values, strict=True)):
        parts.append(_interval_row(row, name, value, box, x, box.top + 19 + 30 * i, palette))
    return svg.chart(HALF, box.bottom + 44, title, parts)


def _interval_domain(known: Sequence[Estimate], from_zero: bool) -> tuple[float, float]:
    low = min(r.ci95[0] for r in known if r.ci95 is not None)
    high = max(r.ci95[1] for r in known if r.ci95 is not None)
    if from_zero or high - low <= 0:
        return 0.0, min(svg.nice_ceiling(high, 4), 1.0) if high > 0 else 0.01
    step = svg.nice_step(high - low, 4)
    return max(math.floor(low / step) * step, 0.0), min(math.ceil(high / step) * step, 1.0)


def _interval_text(row: Estimate) -> str:
    """`1.28% [1.23%, 1.32%]`, with two decimals below 10% and one above."""
    if row.value is None or row.ci95 is None:
        return ""
    digits = 2 if row.ci95[1] < 0.1 else 1
    low, high = row.ci95
    return f"{percent(row.value, digits)} [{percent(low, digits)}, {percent(high, digits)}]"


def _interval_row(
    row: Estimate,
    name: str,
    value: str,
    box: svg.Box,
    x: svg.Scale,
    y: float,
    palette: dict[str, str],
) -> str:
    colour = palette.get(row.version, svg.AXIS)
    parts = [svg.text(box.left - 8, y + 4, svg.clip(name, box.left - 12), "end")]
    if row.value is None or row.ci95 is None:
        parts.append(svg.text(box.left + 8, y + 4, "no data", fill=svg.AXIS))
        return "".join(parts)
    low, high = row.ci95
    parts.append(svg.whisker(x(low), x(high), y, colour))
    parts.append(svg.dot(x(row.value), y, colour))
    parts.append(svg.text(box.right + 10, y + 4, value))
    return "".join(parts)

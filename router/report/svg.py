"""Small SVG primitives for the HTML report: scales, ticks, axes, lines, whiskers, legends.

Every function returns markup as a string and escapes the text it is given, so callers can
pass names taken from the log. The charts are plain inline SVG: no script, no external file.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from html import escape

FONT_PX = 11
CHAR_PX = 6.4  # average width of a character at FONT_PX, for laying out legends and margins
AXIS = "#555"
GRID = "#e6e6e6"

Scale = Callable[[float], float]
Point = tuple[float, float]


@dataclass(frozen=True, slots=True)
class Box:
    """The plotting area of a chart, in pixels from the top left of the SVG."""

    left: float
    top: float
    width: float
    height: float

    @property
    def right(self) -> float:
        return self.left + self.width

    @property
    def bottom(self) -> float:
        return self.top + self.height


@dataclass(frozen=True, slots=True)
class Linear:
    """Maps [lo, hi] onto [start, end]."""

    lo: float
    hi: float
    start: float
    end: float

    def __call__(self, value: float) -> float:
        if self.hi == self.lo:
            return (self.start + self.end) / 2
        return self.start + (value - self.lo) / (self.hi - self.lo) * (self.end - self.start)


@dataclass(frozen=True, slots=True)
class Log10:
    """Maps [lo, hi] (both > 0) onto [start, end] on a logarithmic scale."""

    lo: float
    hi: float
    start: float
    end: float

    def __call__(self, value: float) -> float:
        linear = Linear(math.log10(self.lo), math.log10(self.hi), self.start, self.end)
        return linear(math.log10(max(value, self.lo)))


def text_width(text: str, px: float = FONT_PX) -> float:
    return len(text) * CHAR_PX * px / FONT_PX


def clip(text: str, width: float) -> str:
    """The text, cut short with an ellipsis if it would be wider than `width` pixels."""
    if text_width(text) <= width:
        return text
    keep = max(int(width / CHAR_PX) - 1, 1)
    return text[:keep] + "\u2026"


def nice_step(span: float, count: int) -> float:
    """A round step (1, 2, 2.5 or 5 times a power of ten) giving about `count` intervals."""
    if span <= 0:
        return 1.0
    raw = span / count
    power = 10 ** math.floor(math.log10(raw))
    return float(next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw))


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round values from lo to hi, about `count` intervals apart; lo and hi should be nice."""
    step = nice_step(hi - lo, count)
    first = math.ceil(lo / step - 1e-9)
    last = math.floor(hi / step + 1e-9)
    return [round(k * step, 12) for k in range(first, last + 1)]


def nice_ceiling(value: float, count: int = 5) -> float:
    """The smallest round value at or above `value`, to end an axis on a tick."""
    if value <= 0:
        return 1.0
    step = nice_step(value, count)
    return math.ceil(value / step - 1e-9) * step


def decades(lo: float, hi: float) -> tuple[float, float]:
    """The powers of ten just around [lo, hi]."""
    return 10.0 ** math.floor(math.log10(lo)), 10.0 ** math.ceil(math.log10(hi) - 1e-9)


def log_ticks(lo: float, hi: float) -> tuple[list[float], list[float]]:
    """Major ticks at powers of ten and minor ticks at 2..9 times them, from lo to hi."""
    major: list[float] = []
    minor: list[float] = []
    for exponent in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        base = 10.0**exponent
        if lo <= base <= hi:
            major.append(base)
        minor.extend(m * base for m in range(2, 10) if lo <= m * base <= hi)
    return major, minor


def _n(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def chart(width: float, height: float, title: str, parts: Iterable[str]) -> str:
    """An SVG element of the given size, described by `title` for screen readers."""
    label = escape(title)
    return (
        f'<svg class="chart" width="{_n(width)}" height="{_n(height)}" '
        f'viewBox="0 0 {_n(width)} {_n(height)}" role="img" aria-label="{label}">'
        f"<title>{label}</title>{''.join(parts)}</svg>"
    )


def text(
    x: float,
    y: float,
    content: str,
    anchor: str = "start",
    px: float = FONT_PX,
    fill: str = "#222",
    extra: str = "",
) -> str:
    return (
        f'<text x="{_n(x)}" y="{_n(y)}" text-anchor="{anchor}" font-size="{_n(px)}" '
        f'fill="{fill}"{extra}>{escape(content)}</text>'
    )


def line(x1: float, y1: float, x2: float, y2: float, stroke: str, extra: str = "") -> str:
    return (
        f'<line x1="{_n(x1)}" y1="{_n(y1)}" x2="{_n(x2)}" y2="{_n(y2)}" stroke="{stroke}"{extra}/>'
    )


def x_axis(
    box: Box,
    scale: Scale,
    ticks: Sequence[tuple[float, str]],
    label: str,
    minor: Sequence[float] = (),
) -> str:
    """Baseline, ticks and labels under the box, vertical grid lines, the axis title below."""
    parts = [line(scale(v), box.top, scale(v), box.bottom, GRID) for v, _ in ticks]
    parts.append(line(box.left, box.bottom, box.right, box.bottom, AXIS))
    for value in minor:
        x = scale(value)
        parts.append(line(x, box.bottom, x, box.bottom + 3, AXIS))
    for value, name in ticks:
        x = scale(value)
        parts.append(line(x, box.bottom, x, box.bottom + 5, AXIS))
        parts.append(text(x, box.bottom + 17, name, "middle"))
    parts.append(text(box.left + box.width / 2, box.bottom + 34, label, "middle", fill=AXIS))
    return "".join(parts)


def y_axis(box: Box, scale: Scale, ticks: Sequence[tuple[float, str]], label: str) -> str:
    """Horizontal grid lines with labels on the left, and the axis title rotated beside them."""
    parts = []
    for value, name in ticks:
        y = scale(value)
        parts.append(line(box.left, y, box.right, y, GRID))
        parts.append(text(box.left - 6, y + 4, name, "end"))
    parts.append(line(box.left, box.top, box.left, box.bottom, AXIS))
    x, y = box.left - 44, box.top + box.height / 2
    parts.append(
        text(x, y, label, "middle", fill=AXIS, extra=f' transform="rotate(-90 {_n(x)} {_n(y)})"')
    )
    return "".join(parts)


def path(
    segments: Iterable[Sequence[Point]],
    stroke: str,
    width: float = 2,
    fill: str = "none",
    extra: str = "",
) -> str:
    """One path through each run of points; runs are drawn apart, so gaps stay gaps."""
    d = " ".join("M" + " L".join(f"{_n(x)},{_n(y)}" for x, y in run) for run in segments if run)
    if not d:
        return ""
    return (
        f'<path d="{d}" fill="{fill}" stroke="{stroke}" stroke-width="{_n(width)}" '
        f'stroke-linejoin="round"{extra}/>'
    )


def dot(x: float, y: float, colour: str, r: float = 4.5) -> str:
    return (
        f'<circle cx="{_n(x)}" cy="{_n(y)}" r="{_n(r)}" fill="{colour}" '
        f'stroke="#fff" stroke-width="1.5"/>'
    )


def whisker(x1: float, x2: float, y: float, colour: str, cap: float = 5) -> str:
    """A horizontal interval from x1 to x2 with end caps."""
    extra = ' stroke-width="2"'
    return (
        line(x1, y, x2, y, colour, extra)
        + line(x1, y - cap, x1, y + cap, colour, extra)
        + line(x2, y - cap, x2, y + cap, colour, extra)
    )


def legend(items: Sequence[tuple[str, str]], x: float, y: float, width: float) -> tuple[str, int]:
    """Swatches with labels from (x, y), wrapped to `width`; returns markup and rows used."""
    parts, cx, row = [], x, 0
    for name, colour in items:
        size = 22 + text_width(name) + 18
        if cx > x and cx + size > x + width:
            cx, row = x, row + 1
        cy = y + row * 18
        parts.append(line(cx, cy, cx + 16, cy, colour, ' stroke-width="3"'))
        parts.append(text(cx + 22, cy + 4, name))
        cx += size
    return "".join(parts), row + 1 if items else 0


def flow(items: Sequence[str], x: float, y: float, width: float) -> tuple[str, int]:
    """Short texts one after another from (x, y), wrapped to `width`; returns markup and rows."""
    parts, cx, row = [], x, 0
    for item in items:
        size = text_width(item) + 18
        if cx > x and cx + size > x + width:
            cx, row = x, row + 1
        parts.append(text(cx, y + row * 18, item, fill=AXIS))
        cx += size
    return "".join(parts), row + 1 if items else 0

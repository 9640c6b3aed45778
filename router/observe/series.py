"""Each version's request metrics, kept lean and written out in slices.

prometheus-client gives every labelled child its own objects: a latency histogram of 13
buckets is 16 locked values, 4.4 KB, and its exposition formats each sample through label
validation and escaping, 7 µs a line. On a table of 2,000 models that was most of the
router's memory per model, and a scrape of /metrics held the serving loop for 0.7 s.

So in a single process the per-version families (requests by outcome, latency, up, in
flight, queued) live here: one slotted record per version, its bucket counts in an
`array` (which the cyclic collector never walks), its label text escaped once. The text
is written in the exposition format, a slice of versions at a time, each slice sent as it
is written with the event loop let through between slices (a table of 10,000 models is
33 MB of text: neither writing nor sending it may hold the loop). Workers (`serve
--workers`) keep prometheus-client's multiprocess values instead, which the supervisor
sums (metrics.py).
"""

from __future__ import annotations

import time
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterator

from prometheus_client.utils import floatToGoString

SLICE_S = 0.001  # the longest the event loop waits on writing the text at a time: a request
# takes a few turns of the loop, each of which may wait for one slice

# Each family the records hold, as its HELP and TYPE lines say it.
REQUESTS = ("model_router_requests", "counter",
            "Requests by model, version that answered and outcome.")  # fmt: skip
LATENCY = ("model_router_request_duration_seconds", "histogram", "Time in the router per request.")
UP = ("model_router_upstream_up", "gauge",
      "1 while a version takes traffic, 0 while it is marked down.")  # fmt: skip
IN_FLIGHT = ("model_router_upstream_in_flight", "gauge",
             "Requests forwarded to a version and not yet answered whole.")  # fmt: skip
QUEUED = ("model_router_upstream_queued", "gauge",
          "Requests waiting for a place at a version (max_in_flight reached).")  # fmt: skip


class Series:
    """One (model, version)'s numbers."""

    __slots__ = ("counts", "in_flight", "labels", "outcomes", "queued", "sum", "up")

    def __init__(self, model: str, version: str, buckets: int) -> None:
        self.labels = f'model="{_escape(model)}",version="{_escape(version)}"'
        self.outcomes: dict[str, int] = {}
        self.counts = array("q", bytes(8 * (buckets + 1)))  # the last: above every bound
        self.sum = 0.0
        self.up: int | None = None  # None: not a version of a table (`none`), no gauges
        self.in_flight = 0
        self.queued = 0


class SeriesBook:
    """The records of every version seen, by (model, version), until a reload removes the
    version: then it leaves the text (contract section 13), at once if nothing is in
    flight at it, else when the last request held there is done (so that the gauges never
    go below 0). A version brought back starts from 0, which Prometheus reads as a counter
    reset. A request begun on the old table and answered after the removal is still
    counted, under the removed version, as what it was."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self._les = [_number(b) for b in bounds] + ["+Inf"]
        self._by_key: dict[tuple[str, str], Series] = {}
        self._leaving: set[tuple[str, str]] = set()  # removed, requests still in flight

    def get(self, model: str, version: str) -> Series:
        series = self._by_key.get((model, version))
        if series is None:
            series = self._by_key[model, version] = Series(model, version, len(self.bounds))
        return series

    def observe(self, model: str, version: str, outcome: str, seconds: float) -> None:
        series = self.get(model, version)
        series.outcomes[outcome] = series.outcomes.get(outcome, 0) + 1
        series.counts[bisect_left(self.bounds, seconds)] += 1
        series.sum += seconds

    def track(self, model: str, version: str, up: bool) -> None:
        """A version of the table in force: its gauges are shown from now on."""
        self._leaving.discard((model, version))
        self.get(model, version).up = int(up)

    def forget(self, model: str, version: str) -> None:
        """A version a reload removed: its lines go, now or once nothing is in flight."""
        series = self._by_key.get((model, version))
        if series is None:
            return
        series.up = None  # its gauges leave the text now
        if series.in_flight or series.queued:
            self._leaving.add((model, version))
        else:
            del self._by_key[model, version]

    def set_up(self, model: str, version: str, up: bool) -> None:
        series = self._by_key.get((model, version))
        if series is not None and series.up is not None:  # a removed version stays out
            series.up = int(up)

    def in_flight(self, model: str, version: str, change: int) -> None:
        series = self.get(model, version)
        series.in_flight += change
        if self._leaving:
            self._left(model, version, series)

    def queued(self, model: str, version: str, change: int) -> None:
        series = self.get(model, version)
        series.queued += change
        if self._leaving:
            self._left(model, version, series)

    def _left(self, model: str, version: str, series: Series) -> None:
        if not series.in_flight and not series.queued and (model, version) in self._leaving:
            self._leaving.discard((model, version))
            del self._by_key[model, version]

    def chunks(self) -> Iterator[bytes]:
        """The exposition of every family, family by family, in chunks of at most about
        SLICE_S of work each: the caller lets the event loop run between them."""
        parts: list[str] = []
        started = time.perf_counter()
        for (name, kind, doc), lines in (
            (REQUESTS, self._requests),
            (LATENCY, self._latency),
            (UP, _gauge(UP[0], "up")),
            (IN_FLIGHT, _gauge(IN_FLIGHT[0], "in_flight")),
            (QUEUED, _gauge(QUEUED[0], "queued")),
        ):
            shown = f"{name}_total" if kind == "counter" else name  # as prometheus-client
            parts.append(f"# HELP {shown} {doc}\n# TYPE {shown} {kind}\n")
            for series in list(self._by_key.values()):
                parts.extend(lines(series))
                if time.perf_counter() - started > SLICE_S:
                    yield "".join(parts).encode()
                    parts.clear()
                    started = time.perf_counter()
        yield "".join(parts).encode()

    @staticmethod
    def _requests(series: Series) -> Iterator[str]:
        for outcome, count in series.outcomes.items():
            yield f'model_router_requests_total{{{series.labels},outcome="{outcome}"}} {count}.0\n'

    def _latency(self, series: Series) -> Iterator[str]:
        name, labels, total = LATENCY[0], series.labels, 0
        for le, count in zip(self._les, series.counts, strict=True):
            total += count
            yield f'{name}_bucket{{{labels},le="{le}"}} {total}.0\n'
        yield f"{name}_count{{{labels}}} {total}.0\n"
        yield f"{name}_sum{{{labels}}} {_number(series.sum)}\n"


def _gauge(name: str, field: str) -> Callable[[Series], Iterator[str]]:
    """A gauge's line for a version of a table (not for the `none` of an unrouted request)."""

    def lines(series: Series) -> Iterator[str]:
        if series.up is not None:
            yield f"{name}{{{series.labels}}} {getattr(series, field)}.0\n"

    return lines


def _number(value: float) -> str:
    """A float as prometheus-client writes it (Go's formatting: `10.0`, `1e-05`, `+Inf`)."""
    return str(floatToGoString(value))  # type: ignore[no-untyped-call]  # untyped upstream


def _escape(value: str) -> str:
    """A label value as the text format writes it."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")

"""A worker's per-version request metrics, written straight into prometheus-client's files.

Workers (`serve --workers`) keep their metrics in prometheus-client's multiprocess files,
one per process, which the supervisor sums (pooled.py). prometheus-client's own write takes
its lock, asks whether the process forked and looks the value's key up in the file, each
time: 0.75 µs to count a request, 1.6 µs for a latency, 0.75 µs for each move of a gauge,
about 10% of a request's instructions in all. The values below are written by the event
loop alone, so each is kept as its place in the file, found once when its child is made
(prometheus-client registers the key and reads the value back then): a write is an
addition and one `pack_into`, with nothing to lock (the routing log's thread writes only
its own counter, through prometheus-client, under its lock).

This reads prometheus-client's internals (`MmapedValue._file`, `._key`, `._value`;
`MmapedDict._positions`, `._m`), as prometheus-client 0.26 has them (the version it was
checked against); tests/test_metrics_series.py checks what the supervisor reads from the
files, and the worker's own registry, against the single process's book, so a release that
changes them fails there first.
"""

from __future__ import annotations

import struct
from bisect import bisect_left
from typing import Any

_VALUE = struct.Struct("dd")  # a value and its timestamp, as mmap_dict.py packs them


class Place:
    """One value in this process's file: a child's MmapedValue and its place there."""

    __slots__ = ("_file", "_pos", "_value")

    def __init__(self, mmaped: Any) -> None:
        self._value = mmaped  # its `_value` kept in step: a process's own registry reads it
        self._file = mmaped._file
        self._pos: int = self._file._positions[mmaped._key]

    def add(self, amount: float) -> None:
        value = self._value
        value._value += amount
        # `_m` read each time: a new key may have grown the file into a new mapping.
        _VALUE.pack_into(self._file._m, self._pos, value._value, 0.0)


class Latency:
    """A version's latency histogram as places: its buckets (the last one +Inf) and sum."""

    __slots__ = ("bounds", "buckets", "sum")

    def __init__(self, histogram: Any, bounds: tuple[float, ...]) -> None:
        """`histogram` is the version's Histogram child, of these bounds (+Inf left out)."""
        self.bounds = bounds
        self.buckets = [Place(bucket) for bucket in histogram._buckets]
        self.sum = Place(histogram._sum)

    def observe(self, seconds: float) -> None:
        # The bucket prometheus-client's Histogram.observe counts: the first whose bound is
        # at least `seconds`; buckets are kept apart in the files, summed when shown.
        self.buckets[bisect_left(self.bounds, seconds)].add(1.0)
        self.sum.add(seconds)

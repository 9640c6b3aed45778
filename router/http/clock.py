"""Wall-clock texts: the `Date` header and the log's timestamps.

Each depends on the current second only, so it is formatted once a second (`PerSecond`)
rather than for every request: strftime and formatdate cost more than the rest of a record.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from email.utils import formatdate


class PerSecond:
    """A text of the current second, formatted again only when the second changes."""

    __slots__ = ("_format", "_second", "_text")

    def __init__(self, format_second: Callable[[int], str]) -> None:
        self._format = format_second
        self._second = -1
        self._text = ""

    def __call__(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second, self._text = second, self._format(second)
        return self._text


_HTTP_DATE = PerSecond(lambda second: formatdate(second, usegmt=True))
_RFC3339_SECOND = PerSecond(lambda second: time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))


def http_date() -> str:
    """The `Date` header's value now (RFC 9110 5.6.7)."""
    return _HTTP_DATE(time.time())


# Each millisecond's tail, written once: formatting `:03d` costs more than the rest.
_MILLIS = tuple(f".{ms:03d}Z" for ms in range(1000))


def now_rfc3339() -> str:
    """The current UTC time as RFC 3339 with milliseconds and a `Z`, e.g.
    `2026-11-25T20:03:16.123Z`, as records carry it."""
    now = time.time()
    return _RFC3339_SECOND(now) + _MILLIS[int((now - int(now)) * 1000)]


def iso_utc(ts: float) -> str:
    """A UNIX time as RFC 3339 UTC to the second, e.g. `2026-11-25T20:03:16Z`."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))

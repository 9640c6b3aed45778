"""An answer on the public port: held whole (`body`) or streamed (`prepare`, `write`).

The status line and headers are serialised here once, in one string: the headers the
proxy chose, then the framing the connection needs (`Content-Length`, chunked transfer
coding, `Connection`), and `Date` when the backend sent none (RFC 9110 6.6.1).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from http import HTTPStatus

from router.http.clock import http_date
from router.http.request import Request

# Set by the framing below, never taken from the headers handed in.
_FRAMING = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})
_REASONS = {status.value: status.phrase for status in HTTPStatus}
_REASONS[499] = "Client Closed Request"


# What each header name (as given) is to the head: written as it is, the Date, or framing
# set below (Content-Length among it, remembered). Learnt per name, up to _KINDS_KEPT
# names: a dict look-up a header instead of lowering and comparing it.
_PLAIN, _DATE, _LENGTH, _FRAMED = "plain", "date", "length", "framed"
_KINDS_KEPT = 1024
_kinds: dict[str, str] = {}


def _kind_learnt(name: str) -> str:
    lower = name.lower()
    kind = (
        (_LENGTH if lower == "content-length" else _FRAMED)
        if lower in _FRAMING
        else _DATE
        if lower == "date"
        else _PLAIN
    )
    if len(_kinds) < _KINDS_KEPT:
        _kinds[name] = kind
    return kind


def reason_phrase(status: int) -> str:
    return _REASONS.get(status, "")


def _bodiless(method: str, status: int) -> bool:
    """An answer that never has a body (RFC 9110 6.4.1), whatever its headers say."""
    return method == "HEAD" or status < 200 or status in (204, 304)


class StreamResponse:
    """A streamed answer: `prepare` sends the head, `write` each chunk, `write_eof` the end.

    Without a `Content-Length` from the backend, an HTTP/1.1 client gets the chunked transfer
    coding and an HTTP/1.0 one a body that the close of the connection ends.
    """

    __slots__ = (
        "_chunked",
        "_request",
        "body",
        "close",
        "first_byte",
        "headers",
        "prepared",
        "reason",
        "status",
    )

    def __init__(
        self,
        status: int = 200,
        *,
        reason: str | None = None,
        headers: Iterable[tuple[str, str]] | Mapping[str, str] = (),
        body: bytes = b"",
        content_type: str | None = None,
    ) -> None:
        self.status = status
        self.reason = reason if reason is not None else reason_phrase(status)
        # A list or tuple first: Mapping is an ABC, whose isinstance is a Python-level call.
        if isinstance(headers, list | tuple) or not isinstance(headers, Mapping):
            self.headers: list[tuple[str, str]] = list(headers)
        else:
            self.headers = list(headers.items())
        if content_type is not None:
            self.headers.append(("Content-Type", content_type))
        self.body = body
        self.prepared = False
        self.close = False  # close the connection after this answer
        self._request: Request | None = None
        self._chunked = False
        # When the first byte of the body went to the client (`time.perf_counter()`): the
        # record's first_byte_ms, time to first token for a streamed answer.
        self.first_byte: float | None = None

    def force_close(self) -> None:
        self.close = True

    def _head(self, request: Request, length: int | None) -> bytes:
        """The status line and headers; `length` None means streamed."""
        keep = not self.close and request.channel.keeps_alive()
        lines = [f"HTTP/1.1 {self.status} {self.reason}\r\n"]
        given_length = None
        dated = False
        append = lines.append
        for name, value in self.headers:
            kind = _kinds.get(name)
            if kind is None:
                kind = _kind_learnt(name)
            if kind is _PLAIN:
                append(f"{name}: {value}\r\n")
            elif kind is _DATE:
                dated = True
                append(f"{name}: {value}\r\n")
            elif kind is _LENGTH:
                given_length = value
        if not dated:
            lines.append(f"Date: {http_date()}\r\n")
        if _bodiless(request.method, self.status):
            # HEAD: the length GET would have, if known: the backend's, or that of the
            # router's own answer; never a length made up for an empty body.
            shown = given_length if given_length is not None else length or None
            if shown is not None and self.status >= 200 and self.status not in (204, 304):
                lines.append(f"Content-Length: {shown}\r\n")
        elif length is not None:
            lines.append(f"Content-Length: {length}\r\n")
        elif given_length is not None:
            lines.append(f"Content-Length: {given_length}\r\n")
        elif request.version >= (1, 1):
            self._chunked = True
            lines.append("Transfer-Encoding: chunked\r\n")
        else:
            keep = False  # HTTP/1.0 without a length: the close ends the body
        if not keep:
            self.close = True
            lines.append("Connection: close\r\n")
        elif request.version < (1, 1):
            lines.append("Connection: keep-alive\r\n")
        lines.append("\r\n")
        return "".join(lines).encode("utf-8", "surrogateescape")

    async def prepare(self, request: Request) -> None:
        """Send the status line and headers."""
        if not self.prepared:
            self.prepared = True
            self._request = request
            await request.channel.write(self._head(request, None))

    async def write(self, chunk: bytes) -> None:
        """One piece of the body; waits while the client reads slowly."""
        assert self._request is not None, "prepare() first"
        if not chunk or _bodiless(self._request.method, self.status):
            return
        if self.first_byte is None:
            self.first_byte = time.perf_counter()
        if self._chunked:
            chunk = b"%x\r\n%b\r\n" % (len(chunk), chunk)
        await self._request.channel.write(chunk)

    async def write_eof(self) -> None:
        assert self._request is not None, "prepare() first"
        if self._chunked:
            await self._request.channel.write(b"0\r\n\r\n")
        self._request.channel.finished(self.close)


class Response(StreamResponse):
    """A whole answer: `body` goes out with the head in one write, with its length."""

    __slots__ = ()

    async def prepare(self, request: Request) -> None:
        self.prepared = True
        self._request = request

    async def write_eof(self) -> None:
        request = self._request
        assert request is not None, "prepare() first"
        body = b"" if _bodiless(request.method, self.status) else self.body
        if body:
            self.first_byte = time.perf_counter()
        await request.channel.write(self._head(request, len(self.body)) + body)
        request.channel.finished(self.close)

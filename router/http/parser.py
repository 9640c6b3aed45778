"""Requests out of bytes: llhttp's callbacks (through httptools) gather each head within
the limits, check its framing (`framing.py`) and make it a `Request`, whose body they
then feed. What to do with the requests is the connection's (`Incoming`)."""

from __future__ import annotations

import enum
from typing import Protocol

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from router.http.body import BadBody
from router.http.framing import BadHead, check_field_name, check_head
from router.http.limits import ServerLimits
from router.http.request import Channel, Request


class Incoming(Channel, Protocol):
    """The connection, as the parser sees it: the channel of its requests."""

    def received(self, request: Request) -> None:
        """A request's head is in; its body follows."""
        ...

    def completed(self) -> None:
        """The body of the request being received is in whole."""
        ...


class Stop(Exception):
    """Raised in a callback: a request began that will not be taken."""


class _Part(enum.Enum):
    """Which part of a message llhttp is in, for counting what it holds back."""

    HEAD = "a head, its lines not all handed over yet"
    TRAILER = "a chunked body's trailer, or the size line that may start one"
    OTHER = "a body's data, or between messages"


# The parts as module names: an Enum member looked up on its class costs about 1,000
# instructions on 3.11 (callgrind), and llhttp's callbacks ask for one eight times a request.
_HEAD, _TRAILER, _OTHER = _Part


class RequestParser:
    """Feeds bytes to llhttp and turns its callbacks into requests for `incoming`."""

    def __init__(self, incoming: Incoming, limits: ServerLimits) -> None:
        self.incoming = incoming
        self.limits = limits
        self.parser = httptools.HttpRequestParser(self)
        self.parsing: Request | None = None  # whose body is arriving
        self.taking = True  # False once no new request may begin (a shutdown)
        self.last_keep_alive = True  # whether the last request let the connection go on
        self._url: list[bytes] = []
        self._headers: CIMultiDict[str] = CIMultiDict()
        self._head_size = 0
        self._part = _OTHER
        self._fed = 0  # bytes of an unfinished head or trailer, counted by _bound
        self._parts = 0  # messages and chunks begun so far, for _bound
        self.arriving = 0  # while a head is arriving (its first byte is in): its own number

    def feed(self, data: bytes) -> None:
        """Parse `data`. Raises httptools' errors (a `Stop`, a `BadHead` or a `BadBody` as
        their cause when it came from here), or BadHead / BadBody for a head or trailer
        that grew past the limit unfinished."""
        marks = (self._part, self._parts)
        self.parser.feed_data(data)
        self._bound(len(data), *marks)

    def _bound(self, size: int, part: _Part, parts: int) -> None:
        """httptools hands a header or trailer line over only once it has ended, holding
        it meanwhile: count what went into an unfinished head or trailer, so that an endless
        line is refused rather than held. `data` is counted only when all of it went into
        one: in it before and after, and no message or chunk began in between."""
        if parts != self._parts or part is _OTHER or part is not self._part:
            return
        self._fed += size
        limit = self.limits.max_head
        if self._fed <= limit:
            return
        if part is _HEAD:
            raise BadHead(f"the headers are larger than {limit // 1024} KiB")
        raise BadBody(f"its trailer is larger than {limit // 1024} KiB")

    # --- llhttp's callbacks ---

    def on_message_begin(self) -> None:
        if not self.taking:
            raise Stop
        self._url = []
        self._headers = CIMultiDict()
        self._head_size = 0
        self._fed = 0
        self._part = _HEAD
        self._parts += 1
        self.arriving = self._parts

    def on_url(self, url: bytes) -> None:
        self._url.append(url)  # llhttp may hand the target over in pieces
        self._head_size += len(url)
        if self._head_size > self.limits.max_line:
            raise BadHead(f"the request target is longer than {self.limits.max_line} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        limits = self.limits
        size = len(name) + len(value)
        self._head_size += size + 4  # ": " and CRLF
        if size > limits.max_line:
            raise BadHead(f"a header line is longer than {limits.max_line} bytes")
        if self._head_size > limits.max_head:
            raise BadHead(f"the headers are larger than {limits.max_head // 1024} KiB")
        if self._part is not _HEAD:
            return  # a chunked body's trailer: never merged into the headers (RFC 9110 6.5.1)
        if len(self._headers) >= limits.max_fields:
            raise BadHead(f"more than {limits.max_fields} header lines")
        if b"_" in name:
            check_field_name(name)
        # Values as UTF-8, bytes that are not kept as surrogates (as aiohttp does), so the
        # proxy forwards the client's bytes unchanged.
        self._headers.add(
            name.decode("latin-1"), value.decode("utf-8", "surrogateescape").strip(" \t")
        )

    def on_headers_complete(self) -> None:
        self._part = _OTHER
        self._head_size = 0  # a trailer, if any, has the same budget as the head
        self.arriving = 0
        parser = self.parser
        headers = self._headers
        method = parser.get_method()
        target = b"".join(self._url)
        if b"#" in target:  # a fragment is the client's own business (RFC 9112 3.2)
            target = target.partition(b"#")[0]
        version, chunked = check_head(parser.get_http_version(), method, target, headers)
        length = headers.get("Content-Length")
        # llhttp answers this only inside its callbacks: ask it here.
        keep_alive = self.last_keep_alive = parser.should_keep_alive()
        request = Request(
            self.incoming,
            method.decode("ascii"),
            target.decode("utf-8", "surrogateescape"),
            version,
            CIMultiDictProxy(headers),
            int(length) if length is not None else None,
            chunked,
            keep_alive,
        )
        self.parsing = request
        self.incoming.received(request)

    def on_body(self, body: bytes) -> None:
        self._part = _OTHER  # a chunk with data: not the last one
        if self.parsing is not None:
            self.parsing.content.feed(body)

    def on_chunk_header(self) -> None:
        # The last chunk (size 0) is followed by the trailer; any other by its data, which
        # on_body gets at once. Until data comes, this may be the trailer.
        self._part = _TRAILER
        self._fed = 0
        self._parts += 1

    def on_chunk_complete(self) -> None:
        self._part = _OTHER

    def on_message_complete(self) -> None:
        if self.parsing is not None:
            self.parsing.content.finish()
            self.parsing = None
            self.incoming.completed()

    def end_body(self, error: BaseException | None = None) -> None:
        """The body being received ends here (cut short by `error`, if given)."""
        if self.parsing is not None:
            self.parsing.content.finish(error)
            self.parsing = None

"""A request as the public port's server (`router/server.py`) hands it to the proxy.

Only what the proxy uses: method, target, version, headers, cookies, query and a body
read on demand. Everything is parsed once, by llhttp, before the handler starts; cookies
and the query string only when asked for (most routing looks at a header).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Mapping
from functools import cached_property
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from multidict import CIMultiDictProxy, MultiDict, MultiDictProxy

if TYPE_CHECKING:
    from router.server import Connection

# Reading from the client pauses while this much of a body waits unread: a slow backend
# holds back the client, not the router's memory.
BODY_HIGH_WATER = 1 << 20


class BadBody(Exception):
    """The body broke its own framing (a bad chunk size, bytes after the last chunk)."""


class Body:
    """The request body as it arrives, read by the handler at its own pace."""

    __slots__ = ("_chunks", "_done", "_error", "_flow", "_loop", "_size", "_waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop, flow: Callable[[bool], None]) -> None:
        self._loop = loop
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._flow = flow  # flow(True) pauses reading from the client, flow(False) resumes

    # --- fed by the connection ---

    def feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._size += len(chunk)
        if self._size > BODY_HIGH_WATER:
            self._flow(True)
        self._wake()

    def finish(self, error: BaseException | None = None) -> None:
        if not self._done:
            self._done = True
            self._error = error
            self._wake()

    @property
    def complete(self) -> bool:
        """The whole body has arrived (it may not all have been read)."""
        return self._done and self._error is None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- read by the handler ---

    def read_nowait(self, n: int) -> bytes:
        """Up to `n` bytes of what has already arrived, without waiting."""
        parts = []
        while n > 0 and self._chunks:
            chunk = self._chunks[0]
            if len(chunk) <= n:
                parts.append(self._chunks.popleft())
            else:
                parts.append(chunk[:n])
                self._chunks[0] = chunk[n:]
            n -= len(parts[-1])
        data = b"".join(parts)
        self._taken(len(data))
        return data

    async def readany(self) -> bytes:
        """The next piece that arrives, or b"" at the end of the body."""
        while not self._chunks:
            if self._done:
                if self._error is not None:
                    raise self._error
                return b""
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunk = self._chunks.popleft()
        self._taken(len(chunk))
        return chunk

    async def readexactly(self, n: int) -> bytes:
        """Exactly `n` bytes; IncompleteReadError if the body ends first."""
        data = await self.read(n)
        if len(data) < n:
            raise asyncio.IncompleteReadError(data, n)
        return data

    async def read(self, n: int) -> bytes:
        """Up to `n` bytes: fewer only if the body ends first."""
        parts = [self.read_nowait(n)]
        got = len(parts[0])
        while got < n:
            chunk = await self.readany()
            if not chunk:
                break
            if got + len(chunk) > n:
                self._chunks.appendleft(chunk[n - got :])
                self._size += len(chunk) - (n - got)
                chunk = chunk[: n - got]
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    def _taken(self, size: int) -> None:
        self._size -= size
        if self._size <= BODY_HIGH_WATER // 2:
            self._flow(False)


class Request:
    """One request: parsed head, body stream, and the task that handles it."""

    __slots__ = (
        "__dict__",
        "_conn",
        "body_exists",
        "content",
        "content_length",
        "headers",
        "keep_alive",
        "method",
        "raw_path",
        "task",
        "version",
    )  # fmt: skip

    def __init__(
        self,
        conn: Connection,
        method: str,
        raw_path: str,
        version: tuple[int, int],
        headers: CIMultiDictProxy[str],
        content_length: int | None,
        chunked: bool,
        keep_alive: bool,
    ) -> None:
        self._conn = conn
        self.method = method
        self.raw_path = raw_path  # the target as sent: origin-form, absolute-form or `*`
        self.version = version
        self.headers = headers
        self.content_length = content_length
        self.body_exists = chunked or bool(content_length)
        self.keep_alive = keep_alive  # what the client asked for (llhttp's reading of it)
        self.content = Body(conn.server.loop, conn.body_flow)
        self.task: asyncio.Task[None] | None = None

    @property
    def remote(self) -> str | None:
        """The client's address, as X-Forwarded-For should append it."""
        return self._conn.remote

    @property
    def scheme(self) -> str:
        return "http"

    @property
    def responded(self) -> bool:
        """Some of the answer (its status line at least) has gone out to the client."""
        return self._conn.responded

    @cached_property
    def cookies(self) -> Mapping[str, str]:
        """The Cookie header's pairs (RFC 6265 5.4); a later pair with the same name wins."""
        found: dict[str, str] = {}
        for header in self.headers.getall("Cookie", ()):
            for pair in header.split(";"):
                name, eq, value = pair.partition("=")
                name, value = name.strip(), value.strip()
                if not eq or not name:
                    continue
                if len(value) >= 2 and value[0] == value[-1] == '"':
                    value = value[1:-1]
                found[name] = value
        return found

    @cached_property
    def query(self) -> MultiDictProxy[str]:
        """The query string's parameters, decoded (`+` is a space); the first one wins."""
        _, _, query = self.raw_path.partition("?")
        return MultiDictProxy(MultiDict(parse_qsl(query, keep_blank_values=True)))

    def send_continue(self) -> None:
        """`100 Continue` for a client that sent `Expect: 100-continue`, once it is wanted
        (RFC 9110 10.1.1): a request refused before (413) never makes the client send it."""
        if self.version >= (1, 1) and self.headers.get("Expect", "").lower() == "100-continue":
            self._conn.send_continue()

    def close_connection(self) -> None:
        """Close the client's connection now: an answer that broke off must look broken."""
        self._conn.close()

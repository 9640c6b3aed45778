"""A body as it arrives over a connection, read on demand by whoever consumes it.

The same on both sides of the proxy: a client's request body (`connection.py`) and a
backend's answer (`client/pool.py`). Reading from the connection pauses while
HIGH_WATER bytes wait unread, so a slow reader holds back the sender, not memory.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

HIGH_WATER = 1 << 20


class BadBody(Exception):
    """The body broke its own framing (a bad chunk size, bytes after the last chunk)."""


class Body:
    """Chunks fed by a connection's protocol, read by a task at its own pace."""

    __slots__ = ("_chunks", "_done", "_error", "_flow", "_held", "_loop", "_size", "_waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop, flow: Callable[[bool], None]) -> None:
        self._loop = loop
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._flow = flow  # flow(True) pauses reading from the connection, flow(False) resumes
        self._held = False  # it asked for a pause and has not yet let go

    # --- fed by the connection ---

    def feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._size += len(chunk)
        if self._size > HIGH_WATER and not self._held:
            self._held = True
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

    async def read(self, n: int = -1) -> bytes:
        """Up to `n` bytes, or all of it with n < 0: fewer only if the body ends first."""
        if n < 0:
            parts = []
            while chunk := await self.readany():
                parts.append(chunk)
            return b"".join(parts)
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
        if self._held and self._size <= HIGH_WATER // 2:
            self._held = False
            self._flow(False)

"""The lean upstream transport for the hot path: asyncio protocols over a keep-alive pool.

It carries requests whose body the router holds whole (the common case) to plain-http
versions; `aio.py` carries the rest. Answers are parsed by llhttp (through httptools) and
read whole or piece by piece, with flow control. Why a client of our own rather than
aiohttp's for this: docs/performance.md.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Iterable
from typing import cast

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from router.http.body import Body
from router.http.client.errors import (
    BadResponse,
    ConnectTimeout,
    ResponseTimeout,
    connect_error,
)
from router.http.client.interface import IDEMPOTENT, connect_timeout, not_replayed
from router.http.flow import FlowControl, Pause
from router.http.origin import Origin

# Idle keep-alive connections kept per version address, per process (nginx's `keepalive`
# directive, which has no default; Go keeps 100 in all). Steady concurrency above it to one
# version reconnects for the excess; a burst of thousands leaves this many behind, not
# thousands of descriptors.
MAX_IDLE = 256


class _Unanswered(BadResponse):
    """Closed before the answer's head was in. `received`: a byte of an answer came;
    `sent`: the request was written, so the backend may have acted on it."""

    def __init__(self, message: str, *, received: bool, sent: bool = True) -> None:
        super().__init__(message)
        self.received = received
        self.sent = sent


class PoolResponse:
    """An `UpstreamResponse` read by a pooled connection."""

    def __init__(self, conn: _Connection, timeout_s: float) -> None:
        self.status = conn.status
        self.reason = conn.reason
        self.headers = CIMultiDictProxy(conn.headers)
        length = conn.headers.get("Content-Length")
        self.content_length = int(length) if length is not None and length.isdigit() else None
        self._conn = conn
        self._timeout_s = timeout_s

    async def read(self) -> bytes:
        return await self._conn.body.read()  # under the exchange's deadline

    async def chunks(self) -> AsyncIterator[bytes]:
        conn = self._conn
        pool = conn.pool
        while True:
            pool._watch(conn, pool.loop.time() + self._timeout_s)  # for each piece
            try:
                chunk = await conn.body.readany()
            finally:
                pool._unwatch(conn)
            if not chunk:
                return
            yield chunk

    def release(self) -> None:
        """Back to the pool if the answer was read whole and the connection may be kept."""
        self._conn.finish()


class _Connection(asyncio.Protocol):
    def __init__(self, pool: Pool, key: tuple[str, int]) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        # Bare LF line ends: RFC 9112 2.2 lets a recipient accept them, as aiohttp's client does.
        self.parser.set_dangerous_leniencies(lenient_optional_cr_before_lf=True)
        self.closed = False
        self.flow: FlowControl | None = None
        self.idle_since = 0.0  # loop time it went back to the pool
        self.deadline = 0.0  # loop time by which the exchange in progress must be over
        self._reset()

    def _reset(self) -> None:
        self.headers: CIMultiDict[str] = CIMultiDict()
        self.reason = ""
        self.status = 0
        self.interim = False  # the message being parsed is a 1xx, to skip
        self.extra = False  # a message after the answer: the backend is out of step
        self.body = Body(self.loop, self.body_flow)
        self.head: asyncio.Future[None] = self.loop.create_future()
        self.complete = False
        self.keep_alive = False
        self.received = False
        self.in_use = False  # a request was sent and its exchange is not over

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, but act as one.
        self.transport = cast(asyncio.Transport, transport)
        self.flow = FlowControl(self.transport)

    def data_received(self, data: bytes) -> None:
        if not self.in_use:  # bytes nobody asked for: this connection cannot be trusted
            self.close()
            return
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self.in_use:
                self._fail(BadResponse(f"bad answer: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.in_use and not self.complete:
            if self.head.done() and self._ends_at_close():
                self.complete = True  # a body delimited by the close (RFC 9112 6.3, rule 8)
                self.body.finish()
            elif self.head.done():
                self.body.finish(BadResponse("closed in the middle of its answer"))
            else:
                message = "closed the connection without answering"
                self.head.set_exception(_Unanswered(message, received=self.received))
        self.pool._forget(self)

    def _ends_at_close(self) -> bool:
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        return "Content-Length" not in self.headers and not chunked

    # --- httptools callbacks ---

    def on_message_begin(self) -> None:
        if self.head.done():  # a second answer to one request: never reuse this connection
            self.extra = True
            return
        self.headers = CIMultiDict()  # each message its own, 1xx ones included
        self.reason = ""

    def on_status(self, status: bytes) -> None:
        if not self.extra:
            # Bytes as aiohttp keeps them: UTF-8, with undecodable bytes as surrogates.
            self.reason += status.decode("utf-8", "surrogateescape")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.head.done():  # a chunked body's trailer, or an extra message: not headers
            return
        self.headers.add(
            name.decode("latin-1"), value.decode("utf-8", "surrogateescape").strip(" \t")
        )

    def on_headers_complete(self) -> None:
        if self.head.done():
            return
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (100 Continue, 103 Early Hints): skip it
            self.interim = True
            return
        self.status = status
        self.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        if not self.extra:
            self.body.feed(body)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        if self.extra:
            self.keep_alive = False
            return
        # llhttp answers should_keep_alive() only inside its callbacks: ask it here.
        self.keep_alive = self.parser.should_keep_alive()
        self.complete = True
        self.body.finish()

    # --- use ---

    def time_out(self) -> None:
        """The exchange outlived its deadline: fail it and drop the connection."""
        self._fail(ResponseTimeout("no answer within timeout_s"))
        self.close()

    def _fail(self, error: Exception) -> None:
        if not self.head.done():
            self.head.set_exception(error)
        else:
            self.body.finish(error)

    def body_flow(self, pause: bool) -> None:
        """Stop reading from the backend while its answer waits unread, and go on after."""
        if self.flow is not None:
            self.flow.hold(Pause.BODY_UNREAD, pause)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.closed = True

    def finish(self) -> None:
        """The exchange is over: keep the connection for the next one, or close it."""
        self.pool._unwatch(self)
        if self.complete and self.keep_alive and not self.closed:
            self._reset()  # llhttp itself is ready for the next message on the connection
            self.body_flow(False)  # if a reader left part of a large body unread
            self.pool._give_back(self)
        else:
            self.close()


class Pool:
    """Keep-alive connections per (host, port), most recently used first.

    Each exchange has a deadline (`within` seconds): the answer must have come whole by then. One
    timer serves all of them, set for the earliest; an exchange only notes its deadline and
    joins a set. (An `asyncio.timeout` per request, a timer armed and cancelled each time,
    cost 5-8% of a worker's time in the profile.) The timer fires when the earliest deadline
    passes, fails what is overdue and is set again for the next one.
    """

    def __init__(self, idle_s: float = 30.0, max_idle: int = MAX_IDLE) -> None:
        self.idle_s = idle_s  # an idle pooled connection is closed after this long
        self.max_idle = max_idle  # per (host, port): one more handed back is closed
        self._idle: dict[tuple[str, int], deque[_Connection]] = {}
        self._all: set[_Connection] = set()
        self._watched: set[_Connection] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._sweeper: asyncio.TimerHandle | None = None
        # Kept, not asked for: on Python 3.11 `asyncio.get_running_loop()` makes a getpid
        # system call each time, 10% of a worker's time in a native profile.
        self.loop = asyncio.get_running_loop()

    async def send(
        self,
        origin: Origin,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]],
        body: bytes | None,
        timeout_s: float,
        *,
        replay: bool = False,
    ) -> PoolResponse:
        """Send a request whose body is held whole; returns once the headers are in.

        The answer must start and, if read whole, end within `timeout_s`, or its waits
        raise ResponseTimeout; `chunks` gives each piece its own `timeout_s`. A request
        written to a kept-alive connection that then closed unanswered is sent again on a
        new one only if its method is idempotent or `replay` says it is safe anyway.
        """
        deadline = self.loop.time() + timeout_s
        host, port = origin.host, origin.port
        head = [f"{method} {origin.base}{target} HTTP/1.1\r\nHost: {origin.authority}\r\n"]
        for name, value in headers:
            if name.lower() not in ("content-length", "host"):
                head.append(f"{name}: {value}\r\n")
        if body or method in ("POST", "PUT", "PATCH"):
            head.append(f"Content-Length: {len(body or b'')}\r\n")
        head.append("\r\n")
        data = "".join(head).encode("utf-8", "surrogateescape") + (body or b"")
        connect_s = connect_timeout(timeout_s)
        conn, reused = await self._connection(host, port, connect_s)
        try:
            await self._send(conn, data, deadline)
        except _Unanswered as exc:
            # A kept-alive connection closed unanswered: most often the backend closed it,
            # idle, as it was reused, and never read the request. But a backend may also
            # have read it and died acting on it: only a request that may run twice (RFC
            # 9110 9.2.2, or `replay`), or that was never written, goes again on a new
            # connection (nginx's proxy_next_upstream without non_idempotent; Go's too).
            if not reused or exc.received:
                raise
            if exc.sent and not replay and method not in IDEMPOTENT:
                raise not_replayed(exc, method) from exc
            conn, _ = await self._connection(host, port, connect_s, reuse=False)
            await self._send(conn, data, deadline)
        return PoolResponse(conn, timeout_s)

    async def _send(self, conn: _Connection, data: bytes, deadline: float) -> None:
        assert conn.transport is not None
        if conn.closed or conn.transport.is_closing():  # nothing of it can reach the backend
            raise _Unanswered("closed before the request was written", received=False, sent=False)
        conn.in_use = True
        self._watch(conn, deadline)
        conn.transport.write(data)
        try:
            await conn.head
        except BaseException:
            conn.close()
            raise

    async def _connection(
        self, host: str, port: int, connect_s: float, *, reuse: bool = True
    ) -> tuple[_Connection, bool]:
        """A kept-alive connection if there is one (and `reuse`), else a new one."""
        idle = self._idle.get((host, port))
        stale = self.loop.time() - self.idle_s
        while idle and reuse:
            conn = idle.popleft()
            if conn.idle_since < stale:
                conn.close()
            elif not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn, True
        try:
            async with asyncio.timeout(connect_s):
                transport, conn = await self.loop.create_connection(
                    lambda: _Connection(self, (host, port)), host, port
                )
            # uvloop may call connection_made only after create_connection returns.
            conn.transport = transport
        except TimeoutError:
            raise ConnectTimeout(f"no connection within {connect_s:g} s") from None
        except OSError as exc:
            raise connect_error(exc) from exc
        self._all.add(conn)
        return conn, False

    # --- deadlines ---

    def _watch(self, conn: _Connection, deadline: float) -> None:
        conn.deadline = deadline
        self._watched.add(conn)
        if self._timer is None or deadline < self._timer_at:
            self._arm(deadline)

    def _unwatch(self, conn: _Connection) -> None:
        self._watched.discard(conn)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_at(when, self._expire)
        self._timer_at = when

    def _expire(self) -> None:
        self._timer = None
        # The loop's timers may fire a little early (libuv counts milliseconds).
        now = self.loop.time() + 0.001
        earliest = None
        for conn in list(self._watched):
            if conn.deadline <= now:
                self._watched.discard(conn)
                conn.time_out()
            elif earliest is None or conn.deadline < earliest:
                earliest = conn.deadline
        if earliest is not None:
            self._arm(earliest)

    def _give_back(self, conn: _Connection) -> None:
        idle = self._idle.setdefault(conn.key, deque())
        if len(idle) >= self.max_idle:
            conn.close()  # a burst is over: its connections are not all kept
            return
        idle.appendleft(conn)
        conn.idle_since = self.loop.time()
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self.idle_s / 2, self._sweep)

    def _sweep(self) -> None:
        """Close connections idle for idle_s, every idle_s / 2 while any are idle (one timer
        for the pool, not one per connection handed back)."""
        self._sweeper = None
        stale = self.loop.time() - self.idle_s
        for conn in [c for idle in self._idle.values() for c in idle if c.idle_since < stale]:
            conn.close()  # its connection_lost takes it out of the pool
        if any(self._idle.values()):
            self._sweeper = self.loop.call_later(self.idle_s / 2, self._sweep)

    def _forget(self, conn: _Connection) -> None:
        self._all.discard(conn)
        self._watched.discard(conn)
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    async def close(self) -> None:
        for timer in (self._timer, self._sweeper):
            if timer is not None:
                timer.cancel()
        for conn in list(self._all):
            conn.close()
        self._idle.clear()
        await asyncio.sleep(0)

"""The public port's HTTP/1.1 server: an asyncio protocol over llhttp (through httptools).

After the upstream client, aiohttp's server was the largest cost per request left in the
profile: a task to run each request plus a long-lived one to wait for it, a request object
built for every feature of a web framework, and answers assembled in several layers. This
server does what a proxy needs, in one place per concern:

- llhttp parses requests (strictly: `Content-Length` with `Transfer-Encoding`, bad chunk
  sizes and junk are errors, never guesses), `router/framing.py` holds the limits and the
  framing rules the head must meet; each request runs as one task;
- keep-alive and pipelining (one request at a time per connection, in order);
- bodies are read on demand, with reading from the client paused while 1 MiB waits unread;
  answers are written with back-pressure from a slow client;
- a client that hangs up cancels its request's task (the proxy then stops waiting on the
  backend and logs 499);
- a request refused before it could be routed (junk, oversized head) gets the contract's
  JSON error, and the `refused` hook logs its record;
- after an early answer (413 before the body) the rest of the body is read and dropped for
  up to 2 s before the close, as nginx's lingering close does, so the client sees the answer
  rather than a reset;
- shutdown in the usual order: stop accepting, close idle connections, let requests in
  flight finish, close the rest.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, cast

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from router.errors import RouterError
from router.http.framing import MAX_FIELDS, MAX_HEAD, MAX_LINE, BadHead, check_head
from router.http.request import BadBody, Request
from router.http.response import StreamResponse, http_date, reason_phrase
from router.proxy.headers import new_request_id

PIPELINE_DEPTH = 32  # requests received ahead of the one being handled, at most
IDLE_S = 75.0  # a keep-alive connection with no request for this long is closed (nginx's)
LINGER_S = 2.0  # how long the rest of a refused body is read and dropped before the close
SWEEP_S = 1.0
SEND_S = 60.0  # a client that reads nothing of its answer for this long is cut off (nginx's)

Handler = Callable[[Request], Awaitable[StreamResponse]]
# Logs the record of a request refused before routing, given its status; returns its id.
Refused = Callable[[int], str]
# Logs the record of a request received but never started: its connection closed first,
# closed by the router (True) or by the client.
Dropped = Callable[[Request, bool], None]

_log = logging.getLogger("model-router")


class _Stop(Exception):
    """Raised in a parser callback: no more requests are taken on this connection."""


class Connection(asyncio.Protocol):
    """One client connection: parses its requests, runs them in order, writes the answers.

    Requests received whole are answered in order, even after the connection has started
    to end (a refusal, a shutdown); only the last answer says `Connection: close`.
    """

    def __init__(self, server: Server) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.remote: str | None = None
        self.current: Request | None = None  # being handled
        self.waiting: deque[Request] = deque()  # received, behind it (pipelining)
        self.parsing: Request | None = None  # whose body is arriving
        self.responded = False  # the current answer has started to go out
        self.closing = False  # shutting down: take no new request, close when done
        self.ending = False  # no more requests are parsed (broken framing, refusal, upgrade)
        self.closed = False
        self.discarding = False  # read and drop whatever comes: the connection is ending
        self.refusal: BadHead | None = None  # to answer after the requests before it
        self.idle_since = server.loop.time()
        self.body_paused = False
        self.read_paused = False
        self.write_waiter: asyncio.Future[None] | None = None
        self.write_paused = False
        self._url: list[bytes] = []
        self._headers: CIMultiDict[str] = CIMultiDict()
        self._head_size = 0
        self._in_head = False
        self._last_keep_alive = True
        self._head_fed = 0  # bytes of an unfinished head, counted by _bound
        self._in_trailer = False  # after the last chunk's size line: trailer fields come
        self._trailer_fed = 0  # bytes of an unfinished trailer, counted by _bound
        self._parts = 0  # messages and chunks begun so far, for _bound

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, but act as one.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if isinstance(peer, tuple) else None
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.connections.add(self)
        self.closing = self.server.stopping  # accepted just as the shutdown began

    def data_received(self, data: bytes) -> None:
        if self.discarding or self.closed:
            return
        marks = (self._in_head, self._in_trailer, self._parts)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # No protocol switch here (Upgrade is hop-by-hop and dropped): the request is
            # answered as a plain one and the connection closes after it.
            if self.parsing is not None:
                self.parsing.content.finish()
                self.parsing = None
            self._stop_parsing()
        except httptools.HttpParserError as exc:
            self._parse_failed(exc)
        else:
            self._bound(len(data), *marks)

    def _bound(self, size: int, in_head: bool, in_trailer: bool, parts: int) -> None:
        """httptools hands a header or trailer line over only once it has ended, holding
        it meanwhile: count what went into an unfinished head or trailer, so that an endless
        line is refused rather than held. `data` is counted only when all of it went into
        one: in it before and after, and no message or chunk began in between."""
        if parts != self._parts:
            return
        if in_head and self._in_head:
            self._head_fed += size
            if self._head_fed > MAX_HEAD:
                self._refused_head(BadHead(f"the headers are larger than {MAX_HEAD // 1024} KiB"))
        elif in_trailer and self._in_trailer:
            self._trailer_fed += size
            if self._trailer_fed > MAX_HEAD:
                self._bad_body(f"its trailer is larger than {MAX_HEAD // 1024} KiB")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        gone = ConnectionResetError("the client closed the connection")
        if self.parsing is not None:
            self.parsing.content.finish(gone)
        self._drop_unstarted(by_router=False)
        current = self.current
        if current is None or current.task is None or current.task.done():
            return
        waiter = self.write_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(gone)  # the answer's write fails: the proxy logs 499
        else:
            current.task.cancel()  # the proxy stops waiting on the backend and logs 499

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        waiter = self.write_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- httptools callbacks ---

    def on_message_begin(self) -> None:
        if self.closing:
            raise _Stop  # shutting down: a request not yet begun is not taken
        self._url = []
        self._headers = CIMultiDict()
        self._head_size = 0
        self._head_fed = 0
        self._in_head = True
        self._parts += 1

    def on_url(self, url: bytes) -> None:
        self._url.append(url)  # llhttp may hand the target over in pieces
        self._head_size += len(url)
        if self._head_size > MAX_LINE:
            raise BadHead(f"the request target is longer than {MAX_LINE} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value)
        self._head_size += size + 4  # ": " and CRLF
        if size > MAX_LINE:
            raise BadHead(f"a header line is longer than {MAX_LINE} bytes")
        if self._head_size > MAX_HEAD:
            raise BadHead(f"the headers are larger than {MAX_HEAD // 1024} KiB")
        if not self._in_head:
            return  # a chunked body's trailer: never merged into the headers (RFC 9110 6.5.1)
        if len(self._headers) >= MAX_FIELDS:
            raise BadHead(f"more than {MAX_FIELDS} header lines")
        # Values as aiohttp keeps them: UTF-8, bytes that are not as surrogates.
        self._headers.add(
            name.decode("latin-1"), value.decode("utf-8", "surrogateescape").strip(" \t")
        )

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_size = 0  # a trailer, if any, has the same budget as the head
        parser = self.parser
        headers = self._headers
        method = parser.get_method()
        version, chunked = check_head(parser.get_http_version(), method, headers)
        length = headers.get("Content-Length")
        target = b"".join(self._url)
        if b"#" in target:  # a fragment is the client's own business (RFC 9112 3.2)
            target = target.partition(b"#")[0]
        # llhttp answers this only inside its callbacks: ask it here.
        keep_alive = self._last_keep_alive = parser.should_keep_alive()
        request = Request(
            self,
            method.decode("ascii"),
            target.decode("utf-8", "surrogateescape"),
            version,
            CIMultiDictProxy(headers),
            int(length) if length is not None else None,
            chunked,
            keep_alive,
        )
        self.parsing = request
        if self.current is None:
            self._start(request)
        else:
            self.waiting.append(request)
            self._flow()

    def on_body(self, body: bytes) -> None:
        self._in_trailer = False  # a chunk with data: not the last one
        if self.parsing is not None:
            self.parsing.content.feed(body)

    def on_chunk_header(self) -> None:
        # The last chunk (size 0) is followed by the trailer; any other by its data, which
        # on_body gets at once. Until data comes, this may be the trailer.
        self._in_trailer = True
        self._trailer_fed = 0
        self._parts += 1

    def on_chunk_complete(self) -> None:
        self._in_trailer = False

    def on_message_complete(self) -> None:
        if self.parsing is not None:
            self.parsing.content.finish()
            self.parsing = None
            if self.read_paused:
                self._flow()

    # --- running requests ---

    def _start(self, request: Request) -> None:
        self.current = request
        self.responded = False
        request.task = self.server.track(self._run(request))

    async def _run(self, request: Request) -> None:
        request.started = True  # from here the handler logs the request, whatever happens
        try:
            response = await self.server.handler(request)
            if self.current is request and not self.closed:  # left unfinished by the handler
                if not response.prepared:
                    await response.prepare(request)
                await response.write_eof()
        except (asyncio.CancelledError, ConnectionError):
            self.close()  # the client left, or the shutdown cut this request off
        except Exception:
            _log.exception("the request handler failed on %s %s", request.method,
                           request.raw_path)  # fmt: skip
            if self.current is request and not self.responded and not self.closed:
                error = RouterError("internal_error", "the router failed on this request")
                self._write_error(error, new_request_id())
            self.close()

    def keeps_alive(self, request: Request) -> bool:
        """Whether the answer to `request` leaves the connection open for another."""
        if not request.keep_alive or not request.content.complete:
            return False  # the client asked, or the rest of its body was never read
        if self.ending or self.closing:
            return bool(self.waiting) or self.refusal is not None  # more answers follow
        return True

    def finished(self, close: bool) -> None:
        """The current answer is out (`close`: it said `Connection: close`): run the next
        request, refuse what could not be parsed, wait for more, or close."""
        request = self.current
        self.current = None
        self.responded = False
        if self.closed:
            return
        if close or request is None:
            self._close_after(request)
            return
        self.body_paused = False  # that body's reader is gone, read or not
        if self.waiting:
            self._start(self.waiting.popleft())
        elif self.refusal is not None:
            self._refuse(self.refusal)
            return
        elif self.ending or self.closing:
            self.close()
            return
        else:
            self.idle_since = self.server.loop.time()
        self._flow()

    def _close_after(self, request: Request | None) -> None:
        """Close; if the client may still be sending a body, read and drop it for a while
        first, so that it reads its answer rather than a reset."""
        if request is not None and request.content.complete and not self.discarding:
            self.close()
            return
        assert self.transport is not None
        self._stop_parsing()
        try:
            if self.transport.can_write_eof():
                self.transport.write_eof()
        except OSError:  # the client is already gone
            self.close()
            return
        self.server.loop.call_later(LINGER_S, self.close)

    def _stop_parsing(self) -> None:
        """No more requests are taken; what comes is read and dropped."""
        self.ending = True
        self.discarding = True
        self._flow()

    # --- refusals ---

    def _parse_failed(self, exc: httptools.HttpParserError) -> None:
        cause = exc.__cause__ or exc.__context__
        busy = self.current is not None or bool(self.waiting)
        if isinstance(cause, _Stop) or (
            # Bytes after a request that closes the connection are never a request
            # (RFC 9112 9.6): not answered, not logged.
            self.parsing is None and not self._last_keep_alive and not isinstance(cause, BadHead)
        ):
            self._stop_parsing()
            if not busy:
                self.close()
            return
        if self.parsing is not None:
            self._bad_body(str(cause) if isinstance(cause, BadHead) else str(exc))
        elif isinstance(cause, BadHead):
            self._refused_head(cause)
        else:
            self._refused_head(BadHead(f"the request is not valid HTTP/1.1: {exc}"))

    def _bad_body(self, message: str) -> None:
        """The head was fine, the body broke its framing: its reader gets the error, and
        the proxy answers 400 bad_body."""
        assert self.parsing is not None
        self.parsing.content.finish(BadBody(message))
        self.parsing = None
        self._stop_parsing()

    def _refused_head(self, refusal: BadHead) -> None:
        self._stop_parsing()
        if self.current is not None or self.waiting:
            self.refusal = refusal  # answered after the requests received before it
        else:
            self._refuse(refusal)

    def _refuse(self, refusal: BadHead) -> None:
        error = RouterError(refusal.code, str(refusal))
        request_id = self.server.refused(error.status)
        self._write_error(error, request_id)
        self._close_after(None)

    def _write_error(self, error: RouterError, request_id: str) -> None:
        """A JSON error of the router's own, for a request the proxy did not answer."""
        body = error.body(request_id)
        status = error.status
        head = (
            f"HTTP/1.1 {status} {reason_phrase(status)}\r\nDate: {http_date()}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"X-Request-ID: {request_id}\r\nConnection: close\r\n\r\n"
        )
        assert self.transport is not None
        self.responded = True
        self.transport.write(head.encode("ascii") + body)

    # --- used by requests and responses ---

    async def write(self, data: bytes) -> None:
        """Write, then wait while the client is SEND_S behind in reading; a client that
        reads nothing for that long is cut off (nginx's `send_timeout`)."""
        if self.closed or self.transport is None:
            raise ConnectionResetError("the client closed the connection")
        self.responded = True
        self.transport.write(data)
        if self.write_paused:
            waiter = self.write_waiter = self.server.loop.create_future()
            timer = self.server.loop.call_later(SEND_S, self._send_timed_out, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self.write_waiter = None

    def _send_timed_out(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_exception(ConnectionResetError(f"the client read nothing for {SEND_S:g} s"))
        self.abort()  # what is left unsent will never be read

    def send_continue(self) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def body_flow(self, pause: bool) -> None:
        self.body_paused = pause
        self._flow()

    def _flow(self) -> None:
        """Read from the client unless a body waits unread, the body of a request not yet
        being handled is arriving, or PIPELINE_DEPTH requests wait their turn. Reading on
        behind a few bodiless requests is what lets a client's hang-up be seen (uvloop
        reports neither end nor reset while reading is paused)."""
        pause = (
            self.body_paused
            or len(self.waiting) >= PIPELINE_DEPTH
            or (self.parsing is not None and self.parsing is not self.current)
        ) and not self.discarding
        if pause != self.read_paused and not self.closed and self.transport is not None:
            self.read_paused = pause
            if pause:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def close(self) -> None:
        """Close after what is already written; nothing more is read or written. Requests
        received but not started are logged as the router's doing (503). A client that
        does not take what is left within SEND_S is cut off."""
        if self.transport is not None and not self.closed:
            self.closed = True
            self._drop_unstarted(by_router=True)
            self.transport.close()
            if self.transport.get_write_buffer_size():
                self.server.loop.call_later(SEND_S, self.transport.abort)

    def abort(self) -> None:
        """The end of the shutdown: drop the connection at once, written or not."""
        if self.transport is not None:
            if not self.closed:
                self.closed = True
                self._drop_unstarted(by_router=True)
            self.transport.abort()

    def _drop_unstarted(self, *, by_router: bool) -> None:
        """Log the requests received but never started, as this connection ends: each
        still gets its record, though no answer."""
        gone = ConnectionResetError("the connection was closed")
        for request in self.waiting:
            request.content.finish(gone)
            self.server.dropped(request, by_router)
        self.waiting.clear()
        current = self.current
        if current is not None and not current.started and current.task is not None:
            current.task.cancel()  # it never ran: cancelled now, it would log nothing
            self.server.dropped(current, by_router)

    @property
    def idle(self) -> bool:
        return self.current is None and not self.waiting and self.parsing is None


class Server:
    """The listening sockets and the connections of the public port."""

    def __init__(self, handler: Handler, refused: Refused, dropped: Dropped) -> None:
        self.handler = handler
        self.refused = refused
        self.dropped = dropped
        self.loop = asyncio.get_running_loop()
        self.connections: set[Connection] = set()
        self.stopping = False
        # Every request's task, from its creation (not its first step): a pipelined request
        # started by the answer before it is in flight before that one's task ends.
        self.in_flight: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._servers: list[asyncio.Server] = []
        self._sweeper: asyncio.TimerHandle | None = None

    async def listen(self, host: str, port: int, *, reuse_port: bool = False) -> None:
        server = await self.loop.create_server(
            lambda: Connection(self), host, port, backlog=1024, reuse_port=reuse_port or None
        )
        self._servers.append(server)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(SWEEP_S, self._sweep)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [sock.getsockname()[:2] for s in self._servers for sock in s.sockets]

    def _sweep(self) -> None:
        """Close keep-alive connections idle for IDLE_S (or sending a head that slowly)."""
        deadline = self.loop.time() - IDLE_S
        for conn in list(self.connections):
            if conn.current is None and not conn.waiting and conn.idle_since < deadline:
                conn.close()
        self._sweeper = self.loop.call_later(SWEEP_S, self._sweep)

    def track(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = self.loop.create_task(coro)
        self.in_flight.add(task)
        self._idle.clear()
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self.in_flight.discard(task)
        if not self.in_flight:
            self._idle.set()

    async def drained(self, seconds: float) -> bool:
        """Wait until no request is in flight, for up to `seconds`; True if none is left."""
        try:
            async with asyncio.timeout(seconds):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    def cut_off(self) -> None:
        """Cancel the requests still running (the drain time is over). One whose task has
        not begun is left to begin: it answers 503 at once, and logs it."""
        for conn in self.connections:
            request = conn.current
            if request is not None and request.started and request.task is not None:
                request.task.cancel()

    def stop_accepting(self) -> None:
        """New connections are refused; idle ones close; busy ones close after their answer."""
        self.stopping = True
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            conn.closing = True
            if conn.idle:
                conn.close()

    def close(self) -> None:
        """Close every connection left (after the drain)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            conn.abort()

"""The public port's HTTP/1.1 server: an asyncio protocol over llhttp (through httptools).

After the upstream client, aiohttp's server was the largest cost per request left in the
profile: a task to run each request plus a long-lived one to wait for it, a request object
built for every feature of a web framework, and answers assembled in several layers. This
server does what a proxy needs, in one place per concern:

- llhttp parses requests (strictly: `Content-Length` with `Transfer-Encoding`, bad chunk
  sizes and junk are errors, never guesses); each request runs as one task;
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
from collections.abc import Awaitable, Callable
from typing import cast

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from router.errors import RouterError
from router.headers import new_request_id
from router.request import BadBody, Request
from router.response import StreamResponse, http_date, reason_phrase

MAX_LINE = 8190  # bytes in the request line or one header line (aiohttp's, nginx's 8 KiB)
MAX_HEAD = 64 * 1024  # bytes in all header lines together
IDLE_S = 75.0  # a keep-alive connection with no request for this long is closed (nginx's)
LINGER_S = 2.0  # how long the rest of a refused body is read and dropped before the close
SWEEP_S = 1.0

Handler = Callable[[Request], Awaitable[StreamResponse]]
# Logs the record of a request refused before routing, given its status; returns its id.
Refused = Callable[[int], str]

_log = logging.getLogger("model-router")
_VERSIONS = {"1.1": (1, 1), "1.0": (1, 0)}


class _BadHead(Exception):
    """Raised in a parser callback: the request is refused (400 bad_request)."""


class Connection(asyncio.Protocol):
    """One client connection: parses its requests, runs them in order, writes the answers."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.remote: str | None = None
        self.current: Request | None = None  # being handled
        self.waiting: deque[Request] = deque()  # pipelined behind it
        self.parsing: Request | None = None  # whose body is arriving
        self.responded = False  # the current answer has started to go out
        self.closing = False  # close after the current answer (shutdown, broken framing)
        self.closed = False
        self.discarding = False  # read and drop whatever comes: the connection is ending
        self.refusal: str | None = None  # to answer once the current request is answered
        self.idle_since = server.loop.time()
        self.body_paused = False
        self.read_paused = False
        self.write_waiter: asyncio.Future[None] | None = None
        self.write_paused = False
        self._url: list[bytes] = []
        self._headers: CIMultiDict[str] = CIMultiDict()
        self._head_size = 0

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

    def data_received(self, data: bytes) -> None:
        if self.discarding or self.closed:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # No protocol switch here (Upgrade is hop-by-hop and dropped): the request is
            # answered as a plain one and the connection closes after it.
            if self.parsing is not None:
                self.parsing.content.finish()
                self.parsing = None
            self._end_reading()
        except httptools.HttpParserError as exc:
            self._parse_failed(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        gone = ConnectionResetError("the client closed the connection")
        if self.parsing is not None:
            self.parsing.content.finish(gone)
        for request in self.waiting:
            request.content.finish(gone)
        self.waiting.clear()
        current = self.current
        if current is not None and current.task is not None and not current.task.done():
            current.task.cancel()  # the proxy stops waiting on the backend and logs 499
        waiter = self.write_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(gone)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        waiter = self.write_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- httptools callbacks ---

    def on_message_begin(self) -> None:
        self._url = []
        self._headers = CIMultiDict()
        self._head_size = 0

    def on_url(self, url: bytes) -> None:
        self._url.append(url)  # llhttp may hand the target over in pieces
        self._head_size += len(url)
        if self._head_size > MAX_LINE:
            raise _BadHead(f"the request target is longer than {MAX_LINE} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value)
        self._head_size += size
        if size > MAX_LINE:
            raise _BadHead(f"a header line is longer than {MAX_LINE} bytes")
        if self._head_size > MAX_HEAD:
            raise _BadHead(f"the headers are larger than {MAX_HEAD // 1024} KiB")
        # Values as aiohttp keeps them: UTF-8, bytes that are not as surrogates.
        self._headers.add(
            name.decode("latin-1"), value.decode("utf-8", "surrogateescape").strip(" \t")
        )

    def on_headers_complete(self) -> None:
        parser = self.parser
        headers = self._headers
        length = headers.get("Content-Length")
        http_version = parser.get_http_version()
        version = _VERSIONS.get(http_version) or cast(
            tuple[int, int], tuple(int(part) for part in http_version.split("."))
        )
        if version >= (1, 1) and len(headers.getall("Host", ())) != 1:
            raise _BadHead("an HTTP/1.1 request needs exactly one Host header")
        request = Request(
            self,
            parser.get_method().decode("ascii"),
            b"".join(self._url).decode("utf-8", "surrogateescape"),
            version,
            CIMultiDictProxy(headers),
            int(length) if length is not None else None,
            "chunked" in headers.get("Transfer-Encoding", "").lower(),
            # llhttp answers this only inside its callbacks: ask it here.
            parser.should_keep_alive(),
        )
        self.parsing = request
        if self.current is None:
            self._start(request)
        else:
            self.waiting.append(request)
            self._flow()

    def on_body(self, body: bytes) -> None:
        if self.parsing is not None:
            self.parsing.content.feed(body)

    def on_message_complete(self) -> None:
        if self.parsing is not None:
            self.parsing.content.finish()
            self.parsing = None

    # --- running requests ---

    def _start(self, request: Request) -> None:
        self.current = request
        self.responded = False
        request.task = self.server.loop.create_task(self._run(request))

    async def _run(self, request: Request) -> None:
        try:
            response = await self.server.handler(request)
            if self.current is request and not self.closed:  # left unfinished by the handler
                if not response.prepared:
                    await response.prepare(request)
                await response.write_eof()
        except asyncio.CancelledError:
            self.close()  # the client left, or the shutdown cut this request off
        except ConnectionError:
            self.close()
        except Exception:
            _log.exception("the request handler failed on %s %s", request.method,
                           request.raw_path)  # fmt: skip
            if self.current is request and not self.responded and not self.closed:
                error = RouterError("internal_error", "the router failed on this request")
                self._write_error(error, new_request_id())
            self.close()

    def finished(self, close: bool) -> None:
        """The current answer is out: run the next request, wait for one, or close."""
        request = self.current
        self.current = None
        self.responded = False
        if self.closed:
            return
        if self.refusal is not None:
            self._refuse(self.refusal)
        elif close or self.closing or request is None or not request.keep_alive:
            self._close_after(request)
        else:
            self.body_paused = False  # that body's reader is gone, read or not
            if self.waiting:
                self._start(self.waiting.popleft())
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
        self._end_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.server.loop.call_later(LINGER_S, self.close)

    def _end_reading(self) -> None:
        """Nothing more is parsed on this connection: it closes after the current answer."""
        self.discarding = True
        self.closing = True
        self._flow()

    # --- refusals ---

    def _parse_failed(self, exc: httptools.HttpParserError) -> None:
        cause = exc.__cause__ or exc.__context__
        if self.parsing is not None:
            # The head was fine, the body broke its framing: its reader gets the error,
            # and the proxy answers 400 bad_body.
            self.parsing.content.finish(BadBody(str(exc)))
            self.parsing = None
            self._end_reading()
            return
        if isinstance(cause, _BadHead):
            refusal = str(cause)
        else:
            refusal = f"the request is not valid HTTP/1.1: {exc}"
        self._end_reading()
        if self.current is None:
            self._refuse(refusal)
        else:
            self.refusal = refusal

    def _refuse(self, message: str) -> None:
        error = RouterError("bad_request", message)
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
        if self.closed or self.transport is None:
            raise ConnectionResetError("the client closed the connection")
        self.responded = True
        self.transport.write(data)
        if self.write_paused:
            self.write_waiter = self.server.loop.create_future()
            try:
                await self.write_waiter
            finally:
                self.write_waiter = None

    def send_continue(self) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def body_flow(self, pause: bool) -> None:
        self.body_paused = pause
        self._flow()

    def _flow(self) -> None:
        """Read from the client unless a body waits unread or requests wait their turn."""
        pause = (self.body_paused or bool(self.waiting)) and not self.discarding
        if pause != self.read_paused and not self.closed and self.transport is not None:
            self.read_paused = pause
            if pause:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def close(self) -> None:
        """Close after what is already written; nothing more is read or written."""
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    @property
    def idle(self) -> bool:
        return self.current is None and not self.waiting and self.parsing is None


class Server:
    """The listening sockets and the connections of the public port."""

    def __init__(self, handler: Handler, refused: Refused) -> None:
        self.handler = handler
        self.refused = refused
        self.loop = asyncio.get_running_loop()
        self.connections: set[Connection] = set()
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

    def stop_accepting(self) -> None:
        """New connections are refused; idle ones close; busy ones close after their answer."""
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
            conn.close()

"""One client connection of the public port: the asyncio protocol that runs the requests
its `RequestParser` (parser.py) makes out of the bytes, in order, and writes their answers.

Requests received whole are answered in order, even after the connection has started to
end (a refusal, a shutdown); only the last answer says `Connection: close`. Where the
connection stands is its `phase` (`phase.py` has the table of moves); why reading is
paused is a set of reasons in its `FlowControl`. The limits come in as `ServerLimits`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from collections.abc import Coroutine
from typing import Any, Protocol, cast

import httptools

from router.http.body import BadBody
from router.http.clock import http_date
from router.http.flow import FlowControl, Pause
from router.http.framing import ALLOW, BadHead, Fields
from router.http.hooks import Hooks
from router.http.limits import ServerLimits
from router.http.parser import RequestParser, Stop
from router.http.phase import Phase, advance
from router.http.request import Request, new_request_id
from router.http.response import Response, StreamResponse, reason_phrase

_log = logging.getLogger("model-router")


# The phases as module names: an Enum member looked up on its class costs 60 ns on 3.11,
# and a connection asks for one several times a request.
_OPEN, _DRAINING, _ENDING, _LINGERING, _CLOSED = Phase


class Server(Protocol):
    """What a connection needs of the server that accepted it (`server.Server`)."""

    loop: asyncio.AbstractEventLoop
    limits: ServerLimits
    hooks: Hooks
    stopping: bool
    connections: set[Connection]

    def track(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]: ...

    def closed_one(self) -> None: ...


class Connection(asyncio.Protocol):
    """Parses a client's requests, runs them in order, writes the answers."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.loop = server.loop
        self.limits = server.limits
        self.phase = _DRAINING if server.stopping else _OPEN
        self.transport: asyncio.Transport | None = None
        self.flow: FlowControl | None = None
        self.reader = RequestParser(self, self.limits)
        self.reader.taking = self.phase < _DRAINING  # accepted just as the shutdown began
        self.remote: str | None = None
        self.current: Request | None = None  # being handled
        self.waiting: deque[Request] = deque()  # received, behind it (pipelining)
        self.refusal: BadHead | None = None  # to answer after the requests before it
        self.idle_since = self.loop.time()  # since the last answer, or a head's first byte
        self._head = 0  # the parser's number of the head arriving, once its time is noted

    @property
    def closed(self) -> bool:
        return self.phase is _CLOSED

    def _move(self, to: Phase) -> None:
        self.phase = advance(self.phase, to)
        self.reader.taking = self.phase < _DRAINING  # shutting down: no request is begun

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, but act as one.
        self.transport = cast(asyncio.Transport, transport)
        self.flow = FlowControl(self.transport)
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if isinstance(peer, tuple) else None
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.phase >= _ENDING:
            return  # read and dropped
        try:
            self.reader.feed(data)
            if self.reader.arriving != self._head:  # a head began (or ended) over reads
                self._head = self.reader.arriving
                if self._head:  # its time runs from now (or the answer before it, if later)
                    self.idle_since = self.loop.time()
        except httptools.HttpParserUpgrade:
            # No protocol switch here (Upgrade is hop-by-hop and dropped): the request is
            # answered as a plain one and the connection closes after it.
            self.reader.end_body()
            self._stop_parsing()
        except httptools.HttpParserError as exc:
            self._parse_failed(exc)
        except BadHead as refusal:
            self._refused_head(refusal)
        except BadBody as exc:
            self._bad_body(str(exc))

    def connection_lost(self, exc: Exception | None) -> None:
        self._move(_CLOSED)
        self.server.connections.discard(self)
        self.server.closed_one()
        gone = ConnectionResetError("the client closed the connection")
        self.reader.end_body(gone)
        self._drop_unstarted(by_router=False)
        current = self.current
        if current is None or current.task is None or current.task.done():
            return
        if self.flow is None or not self.flow.fail_drain(gone):  # a write waits: it fails
            current.task.cancel()  # the proxy stops waiting on the backend and logs 499

    def pause_writing(self) -> None:
        assert self.flow is not None
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        assert self.flow is not None
        self.flow.resume_writing()

    # --- what the parser hands over (`parser.Incoming`) ---

    def received(self, request: Request) -> None:
        if self.current is None:
            self._start(request)
        else:
            self.waiting.append(request)
            self._flow()

    def completed(self) -> None:
        if self.flow is not None and not self.flow.reading:
            self._flow()

    # --- running requests ---

    def _start(self, request: Request) -> None:
        self.current = request
        request.task = self.server.track(self._run(request))

    async def _run(self, request: Request) -> None:
        request.started = True  # from here the handler logs the request, whatever happens
        try:
            if request.raw_path == "*":  # OPTIONS: framing.py refuses `*` with any other method
                response = self._about_server(request)
            else:
                response = await self.server.hooks.handle(request)
            if self.current is request and self.phase is not _CLOSED:  # left unfinished
                if not response.prepared:
                    await response.prepare(request)
                await response.write_eof()
        except (asyncio.CancelledError, ConnectionError):
            self.close()  # the client left, or the shutdown cut this request off
        except Exception:
            _log.exception("the request handler failed on %s %s", request.method, request.raw_path)
            if self.current is request and not request.responded and not self.closed:
                message = "the router failed on this request"
                self._write_error("internal_error", 500, message, new_request_id())
            self.close()

    def _about_server(self, request: Request) -> StreamResponse:
        """`OPTIONS *` asks what the server supports (RFC 9110 9.3.7): answered here, never
        forwarded, and logged as the router's own answer (no model)."""
        request_id = self.server.hooks.refused(200, request)
        return Response(200, headers=(("Allow", ALLOW), ("X-Request-ID", request_id)))

    def keeps_alive(self) -> bool:
        """Whether the answer to the current request leaves the connection open for another."""
        request = self.current
        if request is None or not request.keep_alive or not request.content.complete:
            return False  # the client asked, or the rest of its body was never read
        if self.phase >= _DRAINING:
            return bool(self.waiting) or self.refusal is not None  # more answers follow
        return True

    def finished(self, close: bool) -> None:
        """The current answer is out (`close`: it said `Connection: close`): run the next
        request, refuse what could not be parsed, wait for more, or close."""
        request = self.current
        self.current = None
        if self.phase is _CLOSED:
            return
        if close or request is None:
            self._close_after(request)
            return
        if self.waiting:
            self._start(self.waiting.popleft())
        elif self.refusal is not None:
            self._refuse(self.refusal)
            return
        elif self.phase >= _DRAINING:
            self.close()
            return
        else:
            self.idle_since = self.loop.time()
        self._flow(Pause.BODY_UNREAD)  # that body's reader is gone, read or not

    def _close_after(self, request: Request | None) -> None:
        """Close; if the client may still be sending a body, read and drop it for a while
        first (lingering close), so that it reads its answer rather than a reset."""
        if request is not None and request.content.complete and self.phase < _ENDING:
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
        self._move(_LINGERING)
        self.loop.call_later(self.limits.linger_s, self.close)

    def _stop_parsing(self) -> None:
        """No more requests are taken; what comes is read and dropped."""
        self._move(_ENDING)
        if self.flow is not None:
            self.flow.release_all()

    # --- a head that comes too slowly (nginx's client_header_timeout) ---

    def head_overdue(self, now: float) -> bool:
        """Whether a head has been arriving for more than `client_header_s`, counted from
        its first byte or the answer before it, whichever came last (the sweep asks)."""
        if not self.reader.arriving or self.phase >= _ENDING or self.current or self.waiting:
            return False
        return now - self.idle_since > self.limits.client_header_s

    def time_out_head(self) -> None:
        """408 `request_timeout` for a head that is overdue; the connection closes."""
        seconds = self.limits.client_header_s
        message = f"the request head did not arrive whole within {seconds:g} s"
        self._refused_head(BadHead(message, "request_timeout"))

    # --- refusals ---

    def _parse_failed(self, exc: httptools.HttpParserError) -> None:
        cause = exc.__cause__ or exc.__context__
        busy = self.current is not None or bool(self.waiting)
        reader = self.reader
        if isinstance(cause, Stop) or (
            # Bytes after a request that closes the connection are never a request
            # (RFC 9112 9.6): not answered, not logged.
            reader.parsing is None and not reader.last_keep_alive and not isinstance(cause, BadHead)
        ):
            self._stop_parsing()
            if not busy:
                self.close()
            return
        if reader.parsing is not None:
            self._bad_body(str(cause) if isinstance(cause, BadHead) else str(exc))
        elif isinstance(cause, BadHead):
            self._refused_head(cause)
        else:
            self._refused_head(BadHead(f"the request is not valid HTTP/1.1: {exc}"))

    def _bad_body(self, message: str) -> None:
        """The head was fine, the body broke its framing: its reader gets the error, and
        the proxy answers 400 bad_body."""
        self.reader.end_body(BadBody(message))
        self._stop_parsing()

    def _refused_head(self, refusal: BadHead) -> None:
        self._stop_parsing()
        if self.current is not None or self.waiting:
            self.refusal = refusal  # answered after the requests received before it
        else:
            self._refuse(refusal)

    def _refuse(self, refusal: BadHead) -> None:
        request_id = self.server.hooks.refused(refusal.status, None)
        self._write_error(refusal.code, refusal.status, str(refusal), request_id, refusal.headers)
        self._close_after(None)

    def _write_error(
        self, code: str, status: int, message: str, request_id: str, headers: Fields = ()
    ) -> None:
        """A JSON error of the router's own (the hook renders it), for a request the proxy
        did not answer, with `headers` (`Allow`); the connection closes after it."""
        body = self.server.hooks.error_body(code, message, request_id)
        more = "".join(f"{name}: {value}\r\n" for name, value in headers)
        head = (
            f"HTTP/1.1 {status} {reason_phrase(status)}\r\nDate: {http_date()}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{more}"
            f"X-Request-ID: {request_id}\r\nX-Router-Error: {code}\r\nConnection: close\r\n\r\n"
        ).encode("ascii")
        assert self.transport is not None
        self.transport.write(head + body)

    # --- used by requests and responses (the `Channel` of a request) ---

    async def write(self, data: bytes) -> None:
        """Write, then wait while the client is behind in reading; a client that reads
        nothing for `send_s` is cut off (nginx's `send_timeout`)."""
        if self.phase is _CLOSED or self.transport is None or self.flow is None:
            raise ConnectionResetError("the client closed the connection")
        if self.current is not None:
            self.current.responded = True
        self.transport.write(data)
        if not self.flow.writing:
            timer = self.loop.call_later(self.limits.send_s, self._send_timed_out)
            try:
                await self.flow.drain()
            finally:
                timer.cancel()

    def _send_timed_out(self) -> None:
        assert self.flow is not None
        seconds = self.limits.send_s
        self.flow.fail_drain(ConnectionResetError(f"the client read nothing for {seconds:g} s"))
        self.abort()  # what is left unsent will never be read

    def send_continue(self) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def body_flow(self, pause: bool) -> None:
        if self.flow is not None:
            self.flow.hold(Pause.BODY_UNREAD, pause and self.phase < _ENDING)

    def _flow(self, release: int = 0) -> None:
        """Read from the client unless a body waits unread, the body of a request not yet
        being handled is arriving, or `pipeline_depth` requests wait their turn. Reading on
        behind a few bodiless requests is what lets a client's hang-up be seen (uvloop
        reports neither end nor reset while reading is paused)."""
        flow = self.flow
        if flow is None or self.phase >= _ENDING:
            return  # what comes is dropped: never held back
        reasons = Pause.PIPELINE if len(self.waiting) >= self.limits.pipeline_depth else 0
        parsing = self.reader.parsing
        if parsing is not None and parsing is not self.current:
            reasons |= Pause.BODY_AHEAD
        flow.update(Pause.PIPELINE | Pause.BODY_AHEAD | release, reasons)

    def close(self) -> None:
        """Close after what is already written; nothing more is read or written. Requests
        received but not started are logged as the router's doing (503). A client that
        does not take what is left within `send_s` is cut off."""
        if self.transport is not None and not self.closed:
            self._move(_CLOSED)
            self._drop_unstarted(by_router=True)
            self.transport.close()
            if self.transport.get_write_buffer_size():
                self.loop.call_later(self.limits.send_s, self.transport.abort)

    def abort(self) -> None:
        """The end of the shutdown: drop the connection at once, written or not."""
        if self.transport is not None:
            if not self.closed:
                self._move(_CLOSED)
                self._drop_unstarted(by_router=True)
            self.transport.abort()

    def drain(self) -> None:
        """The server stops accepting: take no new request; close now if idle."""
        self._move(_DRAINING)
        if self.idle:
            self.close()

    def _drop_unstarted(self, *, by_router: bool) -> None:
        """Log the requests received but never started, as this connection ends: each
        still gets its record, though no answer."""
        gone = ConnectionResetError("the connection was closed")
        for request in self.waiting:
            request.content.finish(gone)
            self.server.hooks.dropped(request, by_router)
        self.waiting.clear()
        current = self.current
        if current is not None and not current.started and current.task is not None:
            current.task.cancel()  # it never ran: cancelled now, it would log nothing
            self.server.hooks.dropped(current, by_router)

    @property
    def idle(self) -> bool:
        return self.current is None and not self.waiting and self.reader.parsing is None

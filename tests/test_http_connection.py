"""The public port's connection as a state machine, without sockets (as uvicorn tests its
protocol): bytes in through `data_received`, answers out through a recording transport,
phases and pause reasons checked as they change. The raw-socket tests of the same server
are in test_server.py."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from router.http.connection import Connection
from router.http.flow import Pause
from router.http.hooks import Hooks
from router.http.limits import ServerLimits
from router.http.phase import MOVES, Phase, advance
from router.http.request import Request
from router.http.response import Response, StreamResponse
from router.http.server import Server
from tests.support.waiting import poll


class RecordingTransport(asyncio.Transport):
    """Keeps what is written and whether reading is paused; closing ends the connection
    on the next loop turn, as asyncio's transports do."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.reading = True
        self.eof = False
        self.closing = False
        self.aborted = False
        self.protocol: Connection | None = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            assert self.protocol is not None
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.aborted = True
        self.close()

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def get_write_buffer_size(self) -> int:
        return 0


Handle = Callable[[Request], Awaitable[StreamResponse]]


async def echo_path(request: Request) -> StreamResponse:
    return Response(200, body=f"ok {request.raw_path}".encode())


def connect(handle: Handle = echo_path, **limits: Any) -> tuple[Connection, RecordingTransport]:
    hooks = Hooks(
        handle=handle,
        refused=lambda status, request: "refused-id",
        dropped=lambda request, by_router: None,
        error_body=lambda code, message, request_id: f'{{"code": "{code}"}}'.encode(),
    )
    server = Server(hooks, ServerLimits(**limits))
    conn = Connection(server)
    transport = RecordingTransport()
    transport.protocol = conn
    conn.connection_made(transport)
    return conn, transport


def get(path: str, *headers: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: x", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def answers(transport: RecordingTransport, count: int) -> list[bytes]:
    async def written() -> list[bytes] | None:
        parts = bytes(transport.written).split(b"HTTP/1.1 ")[1:]
        return parts if len(parts) >= count else None

    return await poll(written, 2.0, f"{count} answers")


async def test_keep_alive_answers_one_request_after_another() -> None:
    conn, transport = connect()
    conn.data_received(get("/a"))
    await answers(transport, 1)
    conn.data_received(get("/b"))
    first, second = await answers(transport, 2)
    assert first.startswith(b"200 OK")
    assert first.endswith(b"ok /a")
    assert second.endswith(b"ok /b")
    assert b"Connection: close" not in second
    assert conn.phase is Phase.OPEN
    assert conn.idle
    assert not transport.closing


async def test_pipelined_requests_are_answered_in_order_and_reading_pauses_at_the_depth() -> None:
    release = asyncio.Event()

    async def held(request: Request) -> StreamResponse:
        await release.wait()
        return await echo_path(request)

    conn, transport = connect(held, pipeline_depth=2)
    conn.data_received(get("/1") + get("/2") + get("/3"))
    assert len(conn.waiting) == 2
    assert not transport.reading  # two wait behind the one being handled: no more reads
    release.set()
    parts = await answers(transport, 3)
    assert [p.rsplit(b" ", 1)[1] for p in parts] == [b"/1", b"/2", b"/3"]
    assert transport.reading


async def test_a_closing_request_ends_the_connection_after_its_answer() -> None:
    conn, transport = connect()
    conn.data_received(get("/last", "Connection: close") + get("/never"))
    (answer,) = await answers(transport, 1)
    assert b"Connection: close" in answer
    await until(lambda: conn.closed, "the close")
    assert b"/never" not in transport.written  # bytes after a closing request are no request


async def test_an_early_answer_lingers_reading_the_body_then_closes() -> None:
    """An answer sent before the client's body arrived (a 413) shuts the write side and
    reads on for linger_s, so the client sees the answer rather than a reset."""

    async def refuse(request: Request) -> StreamResponse:
        response = Response(413, body=b"too big")
        response.force_close()
        return response

    conn, transport = connect(refuse, linger_s=0.5)
    conn.data_received(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc")
    await answers(transport, 1)
    assert conn.phase is Phase.LINGERING
    assert transport.eof
    assert not transport.closing
    conn.data_received(b"more of the body, dropped")
    assert transport.reading  # a lingering connection reads and drops, never pauses
    await until(lambda: conn.closed, "the end of the linger")


async def test_a_client_that_reads_nothing_is_cut_off_after_send_s() -> None:
    failures: list[BaseException] = []

    async def stream(request: Request) -> StreamResponse:
        response = StreamResponse(200)
        try:
            await response.prepare(request)
            await response.write(b"x" * 10)
        except (ConnectionResetError, asyncio.CancelledError) as exc:
            failures.append(exc)  # the write fails, or the close that follows cancels it
            raise
        return response

    conn, transport = connect(stream, send_s=0.05)
    conn.pause_writing()  # the client's window is full
    conn.data_received(get("/slow"))
    await until(lambda: bool(failures), "the send timeout")
    assert transport.aborted
    assert conn.closed


async def test_a_shutdown_closes_an_idle_connection_and_lets_a_busy_one_finish() -> None:
    idle, idle_transport = connect()
    idle.drain()
    assert idle.closed
    assert idle_transport.closing

    release = asyncio.Event()

    async def held(request: Request) -> StreamResponse:
        await release.wait()
        return await echo_path(request)

    busy, transport = connect(held)
    busy.data_received(get("/in-flight"))
    busy.drain()
    assert busy.phase is Phase.DRAINING
    busy.data_received(get("/too-late"))  # begun after the shutdown: never taken
    assert busy.phase is Phase.ENDING  # type: ignore[comparison-overlap]  # data_received moved it
    assert not busy.waiting
    release.set()
    (answer,) = await answers(transport, 1)
    assert answer.endswith(b"ok /in-flight")
    assert b"Connection: close" in answer
    await until(lambda: busy.closed, "the close after the last answer")


async def test_junk_is_refused_with_the_hooks_error_and_the_connection_ends() -> None:
    conn, transport = connect(linger_s=0.05)
    conn.data_received(b"NOT HTTP AT ALL\r\n\r\n")
    (answer,) = await answers(transport, 1)
    assert answer.startswith(b"400 Bad Request")
    assert b"X-Request-ID: refused-id" in answer
    assert answer.endswith(b'{"code": "bad_request"}')
    assert conn.phase >= Phase.ENDING


async def test_a_head_is_overdue_client_header_s_after_its_start_or_the_answer_before() -> None:
    """What the server's sweep asks: no deadline while nothing was sent or a request is
    being handled; then 408 `request_timeout` and the end of the connection."""
    release = asyncio.Event()

    async def held(request: Request) -> StreamResponse:
        await release.wait()
        return await echo_path(request)

    conn, transport = connect(held, client_header_s=10, linger_s=0.05)
    late = conn.loop.time() + 11
    assert not conn.head_overdue(late)  # nothing sent: idle, for the idle sweep
    conn.data_received(get("/a") + b"GET /b HTTP/1.1\r\nHo")
    assert not conn.head_overdue(late)  # behind a request being handled
    release.set()
    await answers(transport, 1)
    answered = conn.idle_since
    assert not conn.head_overdue(answered + 9.9)
    assert conn.head_overdue(answered + 10.1)
    conn.time_out_head()
    _, timed_out = await answers(transport, 2)
    assert timed_out.startswith(b"408 Request Timeout")
    assert timed_out.endswith(b'{"code": "request_timeout"}')
    assert conn.phase >= Phase.ENDING
    assert not conn.head_overdue(late)


async def test_an_unread_body_pauses_reading_for_its_reason() -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def slow_reader(request: Request) -> StreamResponse:
        started.set()
        await release.wait()
        await request.content.read()
        return Response(200, body=b"read")

    conn, transport = connect(slow_reader)
    head = b"POST /u HTTP/1.1\r\nHost: x\r\nContent-Length: 3000000\r\n\r\n"
    conn.data_received(head + b"x" * 1_500_000)
    await started.wait()
    assert conn.flow is not None
    assert not conn.flow.reading
    assert not transport.reading
    release.set()
    conn.data_received(b"x" * 1_500_000)
    await answers(transport, 1)
    assert transport.reading
    conn.flow.hold(Pause.BODY_UNREAD, False)  # idempotent: nothing left to release


LEGAL = {
    (Phase.OPEN, Phase.DRAINING), (Phase.OPEN, Phase.ENDING), (Phase.OPEN, Phase.CLOSED),
    (Phase.DRAINING, Phase.ENDING), (Phase.DRAINING, Phase.CLOSED),
    (Phase.ENDING, Phase.LINGERING), (Phase.ENDING, Phase.CLOSED),
    (Phase.LINGERING, Phase.CLOSED),
}  # fmt: skip


def test_the_table_lists_exactly_the_legal_moves() -> None:
    assert {(a, b) for a in Phase for b in MOVES[a]} == LEGAL
    for phase in Phase:
        for earlier in Phase:
            if earlier <= phase:
                assert advance(phase, earlier) is phase  # a move back is no move


@pytest.mark.parametrize(
    ("current", "to"),
    [(a, b) for a in Phase for b in Phase if b > a and (a, b) not in LEGAL],
)
def test_an_illegal_forward_move_raises(current: Phase, to: Phase) -> None:
    """Lingering is only for a connection that stopped parsing: OPEN or DRAINING must pass
    through ENDING first (h11's state machine raises on a move its table lacks, too)."""
    with pytest.raises(RuntimeError, match=f"from {current.name} to {to.name}"):
        advance(current, to)


@pytest.mark.parametrize(("current", "to"), sorted(LEGAL))
def test_a_legal_move_lands_where_it_says(current: Phase, to: Phase) -> None:
    assert advance(current, to) is to


@pytest.mark.parametrize("to", list(Phase))
def test_any_phase_can_close(to: Phase) -> None:
    assert advance(to, Phase.CLOSED) is Phase.CLOSED


async def until(check: Callable[[], bool], what: str) -> None:
    async def probe() -> bool | None:
        return True if check() else None

    await poll(probe, 2.0, what)

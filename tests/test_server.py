"""The public port's HTTP/1.1 server (router/http/), black-box over raw sockets.

Each test talks bytes to the real router on 127.0.0.1 and reads the answers with a small,
strict HTTP/1.1 reader of its own (RFC 9112 6.3: how a message's body length is known), so
that a framing mistake by the server shows up as a wrong answer, never as a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from pytest_aiohttp import AiohttpServer

from router.http.limits import ServerLimits
from tests.support.echo import SEEN, create_echo_app
from tests.support.errors import contract_error
from tests.support.running import RunningRouter, router_running, serve
from tests.support.sockets import exchange
from tests.support.tables import one_model
from tests.support.waiting import poll

WAIT = 5.0  # seconds for any one read: generous, and a hang fails rather than blocks
MIB = 1 << 20
LIMIT = 8190  # the documented limit on a request line and on a header line

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@dataclass
class Answer:
    status_line: bytes
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def status(self) -> int:
        return int(self.status_line.split(b" ")[1])

    def values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def header(self, name: str) -> str | None:
        """The header's one value, None if absent (a repeated header fails the test)."""
        found = self.values(name)
        assert len(found) <= 1, f"{name} sent {len(found)} times: {found}"
        return found[0] if found else None

    def json(self) -> Any:
        return orjson.loads(self.body)


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    """A chunked body, decoded strictly (RFC 9112 7.1): any framing error fails the test."""
    parts = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line[:-2].partition(b";")[0], 16)
        if size == 0:
            break
        parts.append(await reader.readexactly(size))
        assert await reader.readexactly(2) == b"\r\n", "chunk data not followed by CRLF"
    while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailer section
        pass
    return b"".join(parts)


async def read_answer(reader: asyncio.StreamReader, method: str = "GET") -> Answer:
    """One answer, its body delimited as RFC 9112 6.3 says; interim (1xx) ones included."""
    async with asyncio.timeout(WAIT):
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head[:-4].split(b"\r\n")
        assert status_line.startswith(b"HTTP/1.1 "), status_line
        headers = []
        for line in lines:
            name, colon, value = line.partition(b":")
            assert colon, f"header line without a colon: {line!r}"
            assert name == name.strip(), f"whitespace around a field name: {line!r}"
            headers.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))
        answer = Answer(status_line, headers, b"")
        status = answer.status
        if method == "HEAD" or status < 200 or status in (204, 304):
            return answer
        coding = answer.header("Transfer-Encoding")
        length = answer.header("Content-Length")
        if coding is not None:
            assert length is None, "both Transfer-Encoding and Content-Length"
            assert coding.lower() == "chunked", coding
            answer.body = await read_chunked(reader)
        elif length is not None:
            answer.body = await reader.readexactly(int(length))
        else:
            answer.body = await reader.read()  # close-delimited
    return answer


async def rest(reader: asyncio.StreamReader) -> bytes:
    """Whatever comes until the server closes the connection (b"" if nothing more)."""
    async with asyncio.timeout(WAIT):
        return await reader.read()


@asynccontextmanager
async def connected(r: RunningRouter) -> AsyncIterator[Conn]:
    host, port = r.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


@asynccontextmanager
async def raw_backend(answer: Callable[[bytes], bytes]) -> AsyncIterator[str]:
    """A backend of raw bytes: `answer` turns each request head into the bytes sent back
    (bodiless requests only). Yields its base URL."""
    writers: set[asyncio.StreamWriter] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.add(writer)
        try:
            while True:
                writer.write(answer(await reader.readuntil(b"\r\n\r\n")))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writers.discard(writer)
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        for writer in list(writers):
            writer.close()
        await server.wait_closed()


async def ask(conn: Conn, data: bytes, method: str = "GET") -> Answer:
    reader, writer = conn
    writer.write(data)
    await writer.drain()
    return await read_answer(reader, method)


def get(target: str, *extra: str, version: str = "1.1", method: str = "GET") -> bytes:
    lines = [f"{method} {target} HTTP/{version}", "Host: x", *extra, "", ""]
    return "\r\n".join(lines).encode()


def parse(raw: bytes) -> Answer:
    """An answer already read whole (by `exchange`), with its body as sent."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.split(b"\r\n")
    headers = [(k.decode(), v.strip().decode()) for k, _, v in (x.partition(b":") for x in lines)]
    return Answer(status_line, headers, body)


def assert_refused(answer: Answer) -> str:
    """The contract's JSON 400 for a request refused before routing; returns its id."""
    return assert_router_error(answer, 400, "bad_request")


def assert_rejected_record(record: dict[str, Any], request_id: str) -> None:
    assert (record["status"], record["outcome"]) == (400, "rejected")
    assert (record["model"], record["method"], record["path"]) == (None, None, None)
    assert record["request_id"] == request_id


# --- keep-alive and pipelining ---


async def test_keep_alive_serves_two_requests_on_one_connection(
    backends: dict[str, str], tmp_path: Path
) -> None:
    async with router_running(one_model(backends), tmp_path) as r, connected(r) as conn:
        first = await ask(conn, get("/models/m/echo?n=1"))
        second = await ask(conn, get("/models/m/echo?n=2"))
    for n, answer in enumerate((first, second), 1):
        assert answer.status == 200
        assert answer.header("Content-Length") == str(len(answer.body))
        assert answer.header("Transfer-Encoding") is None
        assert answer.header("Connection") is None  # HTTP/1.1: persistent by default
        assert answer.json()["target"] == f"/echo?n={n}"
    records = r.records()
    assert [(rec["path"], rec["status"]) for rec in records] == [("/models/m/echo", 200)] * 2
    assert first.header("X-Request-ID") == records[0]["request_id"]
    assert second.header("X-Request-ID") == records[1]["request_id"]


async def test_pipelined_requests_are_answered_in_order_then_the_connection_closes(
    backends: dict[str, str], tmp_path: Path
) -> None:
    """Three requests in one write, a chunked body in the middle one (RFC 9112 9.3.2)."""
    chunked_post = (
        b"POST /models/m/echo?n=2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n"
    )
    burst = (
        get("/models/m/echo?n=1") + chunked_post + get("/models/m/echo?n=3", "Connection: close")
    )
    async with router_running(one_model(backends), tmp_path) as r, connected(r) as conn:
        reader, writer = conn
        writer.write(burst)
        await writer.drain()
        answers = [await read_answer(reader) for _ in range(3)]
        after = await rest(reader)
    assert [a.status for a in answers] == [200, 200, 200]
    assert [a.json()["target"] for a in answers] == ["/echo?n=1", "/echo?n=2", "/echo?n=3"]
    assert [a.json()["method"] for a in answers] == ["GET", "POST", "GET"]
    assert answers[1].json()["body_bytes"] == 5
    assert [a.header("Connection") for a in answers] == [None, None, "close"]
    assert after == b""  # closed after the third answer, nothing else sent
    assert [rec["status"] for rec in r.records()] == [200, 200, 200]


async def test_junk_pipelined_after_a_good_request_is_refused_after_its_answer(
    backends: dict[str, str], tmp_path: Path
) -> None:
    async with router_running(one_model(backends), tmp_path) as r, connected(r) as conn:
        reader, writer = conn
        writer.write(get("/models/m/slow?s=0.2") + b"\x01\x02 junk\r\n\r\n")
        await writer.drain()
        good = await read_answer(reader)
        refused = await read_answer(reader)
        after = await rest(reader)
    assert good.status == 200
    assert good.json()["slept"] is True
    request_id = assert_refused(refused)
    assert after == b""
    # One record each; the log's order is not the answers' order (the refusal is logged
    # while the answer before it is still being finished).
    good_record, refused_record = sorted(r.records(), key=lambda rec: rec["status"])
    assert good_record["request_id"] == good.header("X-Request-ID")
    assert good_record["status"] == 200
    assert_rejected_record(refused_record, request_id)


# --- HTTP/1.0 ---


async def test_http10_without_keep_alive_is_answered_then_closed(
    backends: dict[str, str], tmp_path: Path
) -> None:
    async with router_running(one_model(backends), tmp_path) as r, connected(r) as conn:
        answer = await ask(conn, get("/models/m/echo?n=1", version="1.0"))
        after = await rest(conn[0])
    assert answer.status == 200
    assert answer.json()["target"] == "/echo?n=1"
    assert answer.header("Connection") == "close"
    assert answer.header("Content-Length") == str(len(answer.body))
    assert after == b""
    assert len(r.records()) == 1


async def test_http10_with_keep_alive_stays_open(backends: dict[str, str], tmp_path: Path) -> None:
    async with router_running(one_model(backends), tmp_path) as r, connected(r) as conn:
        first = await ask(conn, get("/models/m/echo?n=1", "Connection: keep-alive", version="1.0"))
        second = await ask(conn, get("/models/m/echo?n=2", version="1.0"))
        after = await rest(conn[0])
    assert (first.status, second.status) == (200, 200)
    assert first.header("Connection") == "keep-alive"  # RFC 9112 C.2.2
    assert first.header("Content-Length") == str(len(first.body))
    assert first.json()["target"] == "/echo?n=1"
    assert second.json()["target"] == "/echo?n=2"
    assert second.header("Connection") == "close"  # this one did not ask to keep it
    assert after == b""
    assert len(r.records()) == 2


# --- streamed answers ---


async def test_a_streamed_answer_reaches_http11_chunked_and_the_connection_is_reused(
    backends: dict[str, str], tmp_path: Path
) -> None:
    async with router_running(one_model(backends), tmp_path) as r, connected(r) as conn:
        streamed = await ask(conn, get("/models/m/predict-chunked"))
        after = await ask(conn, get("/models/m/echo?n=2"))
    assert streamed.status == 200
    assert streamed.header("Transfer-Encoding") == "chunked"
    assert streamed.header("Content-Length") is None
    assert streamed.header("Connection") is None
    assert streamed.json() == {"prediction": 0, "version": "v1"}  # decoded by read_chunked
    assert after.status == 200
    assert after.json()["target"] == "/echo?n=2"
    assert [rec["status"] for rec in r.records()] == [200, 200]


@pytest.mark.parametrize("connection", [None, "keep-alive"])
async def test_a_streamed_answer_reaches_http10_delimited_by_the_close(
    backends: dict[str, str], tmp_path: Path, connection: str | None
) -> None:
    """HTTP/1.0 has no chunked coding: the close ends the body (RFC 9112 6.3 item 8), even
    for a client that asked for keep-alive."""
    extra = [f"Connection: {connection}"] if connection else []
    async with router_running(one_model(backends), tmp_path) as r, connected(r) as conn:
        answer = await ask(conn, get("/models/m/predict-chunked", *extra, version="1.0"))
    assert answer.status == 200
    assert answer.header("Transfer-Encoding") is None
    assert answer.header("Content-Length") is None
    assert answer.header("Connection") == "close"
    assert orjson.loads(answer.body) == {"prediction": 0, "version": "v1"}  # read to EOF
    assert [rec["status"] for rec in r.records()] == [200]


async def test_a_streamed_answer_with_a_length_keeps_it(
    backends: dict[str, str], tmp_path: Path
) -> None:
    """Over 1 MiB the answer is streamed, but with the backend's Content-Length, not chunked."""
    async with router_running(one_model(backends), tmp_path) as r, connected(r) as conn:
        big = await ask(conn, get("/models/m/download?mb=2"))
        after = await ask(conn, get("/models/m/echo?n=2"))
    assert big.status == 200
    assert big.header("Content-Length") == str(2 * MIB)
    assert big.header("Transfer-Encoding") is None
    assert big.body == b"\0" * (2 * MIB)
    assert after.json()["target"] == "/echo?n=2"
    assert [rec["status"] for rec in r.records()] == [200, 200]


# --- HEAD, bodiless statuses ---


async def test_head_has_no_body_keeps_the_length_and_the_connection(
    backends: dict[str, str], tmp_path: Path
) -> None:
    async with router_running(one_model(backends), tmp_path) as r, connected(r) as conn:
        head = await ask(conn, get("/models/m/predict", method="HEAD"), "HEAD")
        # Were a body sent after the HEAD answer, this would read it as the next status line.
        full = await ask(conn, get("/models/m/predict"))
    assert head.status == 200
    assert full.status == 200
    assert full.header("Content-Length") == str(len(full.body))
    assert head.header("Content-Length") == full.header("Content-Length")  # RFC 9110 9.3.2
    assert head.header("Transfer-Encoding") is None
    assert full.json()["prediction"] == 1
    assert [(rec["method"], rec["status"]) for rec in r.records()] == [("HEAD", 200), ("GET", 200)]


async def test_head_of_a_streamed_answer_claims_no_false_length(tmp_path: Path) -> None:
    """The backend answers GET chunked and HEAD with the same head and no body (RFC 9110
    9.3.2). A Content-Length on the router's HEAD answer must be the length GET's content
    would have (RFC 9110 8.6); here none is known, so it may only leave it out."""
    chunked_head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )

    def answer(request_head: bytes) -> bytes:
        if request_head.startswith(b"HEAD "):
            return chunked_head
        return chunked_head + b'8\r\n{"a": 1}\r\n0\r\n\r\n'

    async with raw_backend(answer) as url:
        models = {"m": {"versions": {"v1": {"url": url}}, "split": {"v1": 100}}}
        async with router_running(models, tmp_path) as r, connected(r) as conn:
            head = await ask(conn, get("/models/m/x", method="HEAD"), "HEAD")
            full = await ask(conn, get("/models/m/x"))
    assert head.status == 200
    assert full.status == 200
    assert full.json() == {"a": 1}
    assert full.header("Transfer-Encoding") == "chunked"
    assert head.header("Content-Length") in (None, str(len(full.body)))
    assert len(r.records()) == 2


@pytest.mark.parametrize("status", [204, 304])
async def test_bodiless_statuses_send_no_body_nor_length(
    backends: dict[str, str], tmp_path: Path, status: int
) -> None:
    """204 and 304 never have content (RFC 9110 15.3.5, 15.4.5); no Content-Length on 204
    (RFC 9110 8.6); the next request on the connection is read correctly."""
    async with router_running(one_model(backends), tmp_path) as r, connected(r) as conn:
        empty = await ask(conn, get(f"/models/m/status/{status}"))
        after = await ask(conn, get("/models/m/echo?n=2"))
    assert empty.status == status
    assert empty.header("Transfer-Encoding") is None
    if status == 204:
        assert empty.header("Content-Length") is None
    assert after.status == 200
    assert after.json()["target"] == "/echo?n=2"
    assert [rec["status"] for rec in r.records()] == [status, 200]


# --- Date ---


async def test_every_answer_carries_one_date(backends: dict[str, str], tmp_path: Path) -> None:
    """RFC 9110 6.6.1: an origin server with a clock MUST send Date (2xx to 5xx)."""
    async with router_running(one_model(backends), tmp_path, max_body_mb=1, drain_s=0.2) as r:
        async with connected(r) as conn:
            answers = [
                await ask(conn, get("/models/m/echo")),  # whole, from the backend
                await ask(conn, get("/models/m/predict-chunked")),  # streamed
                await ask(conn, get("/models/m/predict", method="HEAD"), "HEAD"),
                await ask(conn, get("/models/nope/echo")),  # the router's own 404
                await ask(conn, get("/models/m/status/204")),
            ]
        async with connected(r) as conn:  # no body sent: the 413 comes before it
            too_big = get("/models/m/upload", f"Content-Length: {2 * MIB}", method="POST")
            answers.append(await ask(conn, too_big))
        answers.append(parse(await exchange(r.url, b"\x01junk\r\n\r\n")))  # refused: 400
    assert [a.status for a in answers] == [200, 200, 200, 404, 204, 413, 400]
    now = time.time()
    for answer in answers:
        date = answer.header("Date")
        assert date is not None, answer.status_line
        assert date.endswith(" GMT")
        assert abs(parsedate_to_datetime(date).timestamp() - now) < 30


# --- refusals before routing ---


async def test_headers_over_64_kib_in_all_are_refused(
    backends: dict[str, str], tmp_path: Path
) -> None:
    many = [f"X-Filler-{i}: " + "c" * 8000 for i in range(9)]  # each line under the limit
    async with router_running(one_model(backends), tmp_path) as r, connected(r) as conn:
        answer = await ask(conn, get("/models/m/echo", *many))
    request_id = assert_refused(answer)
    (record,) = r.records()
    assert_rejected_record(record, request_id)


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(b"FOO /models/m/echo HTTP/1.1\r\nHost: x\r\n\r\n", id="unknown-method"),
        pytest.param(
            # RFC 9112 6.1: a smuggling vector; the router documents refusing it.
            b"POST /models/m/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            id="content-length-and-transfer-encoding",
        ),
        pytest.param(
            # RFC 9112 6.3 item 5: differing Content-Length values are unrecoverable.
            b"POST /models/m/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            b"Content-Length: 6\r\n\r\nhello!",
            id="two-content-lengths",
        ),
        pytest.param(
            # RFC 9112 5.1: whitespace between a field name and the colon MUST get 400.
            b"GET /models/m/echo HTTP/1.1\r\nHost : x\r\n\r\n",
            id="space-before-colon",
        ),
        pytest.param(get("/models/m/echo?q=" + "a" * LIMIT), id="request-line-over-the-limit"),
        pytest.param(get("/models/m/echo", "X-Long: " + "b" * LIMIT), id="header-over-the-limit"),
    ],
)
async def test_a_refused_request_gets_the_contract_json_and_one_record(
    backends: dict[str, str], tmp_path: Path, request_bytes: bytes
) -> None:
    async with router_running(one_model(backends), tmp_path) as r, connected(r) as conn:
        answer = await ask(conn, request_bytes)
        after = await rest(conn[0])
    request_id = assert_refused(answer)
    assert after == b""
    (record,) = r.records()
    assert_rejected_record(record, request_id)


@pytest.mark.parametrize(
    "host_lines",
    [pytest.param(b"", id="no-host"), pytest.param(b"Host: a\r\nHost: b\r\n", id="two-hosts")],
)
async def test_an_http11_request_without_exactly_one_host_is_400(
    backends: dict[str, str], tmp_path: Path, host_lines: bytes
) -> None:
    """RFC 9112 3.2: a server MUST answer 400 to an HTTP/1.1 request that lacks Host or
    has more than one Host field line."""
    request = b"GET /models/m/echo HTTP/1.1\r\n" + host_lines + b"Connection: close\r\n\r\n"
    async with router_running(one_model(backends), tmp_path) as r, connected(r) as conn:
        answer = await ask(conn, request)
    assert answer.status == 400
    assert answer.json()["error"]["code"] == "bad_request"
    (record,) = r.records()
    assert record["status"] == 400


# --- clients that leave early ---


async def test_a_half_sent_head_then_a_hang_up_leaves_the_router_serving(
    backends: dict[str, str], tmp_path: Path
) -> None:
    async with router_running(one_model(backends), tmp_path) as r:
        async with connected(r) as conn:
            conn[1].write(b"GET /models/m/echo?n=1 HTTP/1.1\r\nHost: x\r\nX-Half: ")
            await conn[1].drain()
        async with connected(r) as conn:
            answer = await ask(conn, get("/models/m/echo?n=2"))
    assert answer.status == 200
    assert answer.json()["target"] == "/echo?n=2"
    records = r.records()
    assert records  # the request served was logged...
    assert (records[-1]["path"], records[-1]["status"]) == ("/models/m/echo", 200)
    assert records[-1]["request_id"] == answer.header("X-Request-ID")
    # ...and the half-sent one, if at all, never as a routed request.
    assert all(rec["status"] != 200 for rec in records[:-1])


async def test_a_connection_closed_without_a_byte_leaves_no_record(
    backends: dict[str, str], tmp_path: Path
) -> None:
    async with router_running(one_model(backends), tmp_path) as r:
        for _ in range(3):
            async with connected(r):
                pass
        async with connected(r) as conn:  # the router is still fine, and logs this one
            answer = await ask(conn, get("/models/m/echo"))
    assert answer.status == 200
    (record,) = r.records()  # nothing was requested on the first three
    assert record["request_id"] == answer.header("X-Request-ID")


# --- early answers, 100-continue ---


async def test_an_early_413_is_read_whole_while_the_body_is_still_coming(
    backends: dict[str, str], tmp_path: Path
) -> None:
    """The 413 goes out before the body (whose Content-Length is over max_body_mb) and says
    `Connection: close`; the client that keeps sending its body for a moment still reads the
    whole answer and then the close, not a reset: the lingering close router/http/connection.py
    describes (RFC 9112 9.6)."""
    size = 4 * MIB
    head = get("/models/m/upload", f"Content-Length: {size}", method="POST")
    async with (
        router_running(one_model(backends), tmp_path, max_body_mb=1, drain_s=0.2) as r,
        connected(r) as conn,
    ):
        reader, writer = conn
        writer.write(head + b"x" * (64 * 1024))
        answer = await read_answer(reader)
        assert answer.status == 413
        assert answer.json()["error"]["code"] == "body_too_large"
        assert answer.header("Connection") == "close"
        writer.write(b"x" * (size - 64 * 1024))  # the rest, after the answer came
        async with asyncio.timeout(WAIT):
            await writer.drain()
        assert await rest(reader) == b""
    (record,) = r.records()
    assert (record["status"], record["outcome"]) == (413, "rejected")


@pytest.mark.parametrize(
    ("target", "status", "code"),
    [
        ("/models/m/upload", 413, "body_too_large"),  # over max_body_mb
        ("/models/nope/upload", 404, "unknown_model"),  # answered before the body is read
    ],
)
async def test_after_an_early_answer_the_connection_closes_or_serves_the_next_request(
    backends: dict[str, str], tmp_path: Path, target: str, status: int, code: str
) -> None:
    """A client sends a 2 MiB body the router answers without reading, and a second
    request, all at once. The server may close after its answer, or read and drop the body
    and go on (RFC 9112 9.3, RFC 9110 15.5.14); either way it must not hang."""
    size = 2 * MIB
    head = get(target, f"Content-Length: {size}", method="POST")
    async with (
        router_running(one_model(backends), tmp_path, max_body_mb=1, drain_s=0.2) as r,
        connected(r) as conn,
    ):
        reader, writer = conn
        writer.write(head + b"x" * size + get("/models/m/echo?n=2"))
        answer = await read_answer(reader)
        assert answer.status == status
        assert answer.json()["error"]["code"] == code
        if answer.header("Connection") == "close":
            assert await rest(reader) == b""
            expected = [status]
        else:
            after = await read_answer(reader)
            assert after.status == 200
            assert after.json()["target"] == "/echo?n=2"
            expected = sorted([status, 200])
    assert sorted(rec["status"] for rec in r.records()) == expected


async def test_100_continue_then_the_connection_is_kept_alive(
    backends: dict[str, str], tmp_path: Path
) -> None:
    """test_proxy_edges covers 100 Continue on a closing connection; here it is kept."""
    head = get("/models/m/echo?n=1", "Expect: 100-continue", "Content-Length: 5", method="POST")
    async with router_running(one_model(backends), tmp_path) as r, connected(r) as conn:
        interim = await ask(conn, head)
        conn[1].write(b"hello")
        final = await read_answer(conn[0])
        after = await ask(conn, get("/models/m/echo?n=2"))
    assert interim.status_line == b"HTTP/1.1 100 Continue"
    assert final.status == 200
    assert final.json()["body_bytes"] == 5
    assert after.json()["target"] == "/echo?n=2"
    assert [rec["status"] for rec in r.records()] == [200, 200]


async def test_an_expectation_in_http10_is_ignored(
    backends: dict[str, str], tmp_path: Path
) -> None:
    """RFC 9110 10.1.1: a server MUST ignore a 100-continue expectation in HTTP/1.0."""
    request = get(
        "/models/m/echo", "Expect: 100-continue", "Content-Length: 5", method="POST", version="1.0"
    )
    async with router_running(one_model(backends), tmp_path) as r, connected(r) as conn:
        answer = await ask(conn, request + b"hello")
        after = await rest(conn[0])
    assert answer.status == 200  # not 100: that would be an interim answer
    assert answer.json()["body_bytes"] == 5
    assert after == b""
    assert len(r.records()) == 1


# --- regressions: framing, trailers, versions, limits, closes ---


@pytest.fixture
async def watched(aiohttp_server: AiohttpServer) -> tuple[str, list[str]]:
    """An echo backend: its URL, and the raw target of every request it received."""
    app = create_echo_app("v1")
    return await serve(aiohttp_server, app), app[SEEN]


def on(url: str) -> dict[str, Any]:
    """One model `m`, wholly on the backend at `url`."""
    return {"m": {"versions": {"v1": {"url": url}}, "split": {"v1": 100}}}


def assert_router_error(answer: Answer, status: int, code: str) -> str:
    """The contract's JSON error, on a connection that closes after it; returns its id."""
    assert answer.status == status, (answer.status_line, answer.body)
    assert answer.header("Content-Type") == "application/json"
    assert answer.header("Connection") == "close"
    error = contract_error(answer.json(), code)
    assert answer.header("X-Request-ID") == error["request_id"]
    assert answer.header("X-Router-Error") == code
    return error["request_id"]


CHUNKED_HELLO = b"5\r\nhello\r\n0\r\n\r\n"


@pytest.mark.parametrize(
    ("codings", "status", "code"),
    [
        # Not ending with chunked: the body's length cannot be known (RFC 9112 6.3 item 4).
        pytest.param([b"gzip"], 400, "bad_request", id="gzip"),
        # Ending with chunked, but gzip would have to be undone for the backend.
        pytest.param([b"gzip, chunked"], 501, "not_implemented", id="gzip-chunked"),
        # Two field lines are one list (RFC 9110 5.3): the same as "gzip, chunked".
        pytest.param([b"gzip", b"chunked"], 501, "not_implemented", id="gzip-then-chunked-lines"),
    ],
)
async def test_a_transfer_coding_other_than_chunked_is_refused_before_the_backend(
    tmp_path: Path, codings: list[bytes], status: int, code: str, watched: tuple[str, list[str]]
) -> None:
    url, seen = watched
    lines = b"".join(b"Transfer-Encoding: " + c + b"\r\n" for c in codings)
    request = b"POST /models/m/echo HTTP/1.1\r\nHost: x\r\n" + lines + b"\r\n" + CHUNKED_HELLO
    async with (
        router_running(on(url), tmp_path, drain_s=0.2) as r,
        connected(r) as conn,
    ):
        answer = await ask(conn, request)
        after = await rest(conn[0])
    request_id = assert_router_error(answer, status, code)
    assert after == b""
    assert seen == []  # the backend never saw it
    (record,) = r.records()
    assert (record["status"], record["outcome"]) == (status, "rejected")
    assert record["request_id"] == request_id


async def test_transfer_encoding_chunked_alone_still_reaches_the_backend(
    tmp_path: Path, watched: tuple[str, list[str]]
) -> None:
    url, seen = watched
    request = b"POST /models/m/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    async with (
        router_running(on(url), tmp_path) as r,
        connected(r) as conn,
    ):
        answer = await ask(conn, request + CHUNKED_HELLO)
        after = await ask(conn, get("/models/m/echo?n=2"))  # the framing was read exactly
    assert answer.status == 200
    assert answer.json()["body_bytes"] == 5
    assert after.json()["target"] == "/echo?n=2"
    assert seen == ["/echo", "/echo?n=2"]
    assert [(rec["status"], rec["outcome"]) for rec in r.records()] == [(200, "ok")] * 2


async def test_chunked_trailer_fields_never_become_request_headers(
    backends: dict[str, str], tmp_path: Path
) -> None:
    """RFC 9110 6.5.1: trailer fields are not merged into the header section. Honoured,
    this trailer would pin v2 (X-Model-Version), which the split never picks."""
    models = {
        "m": {
            "versions": {"v1": {"url": backends["v1"]}, "v2": {"url": backends["v2"]}},
            "split": {"v1": 100, "v2": 0},
        }
    }
    request = (
        b"POST /models/m/echo HTTP/1.1\r\nHost: x\r\nX-User-ID: u\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\nX-Model-Version: v2\r\nX-Trailer-Injected: yes\r\n\r\n"
    )
    async with router_running(models, tmp_path) as r, connected(r) as conn:
        answer = await ask(conn, request)  # all in one write: the trailer is in before routing
        after = await ask(conn, get("/models/m/echo?n=2"))
    assert answer.status == 200
    echoed = answer.json()
    assert echoed["version"] == "v1"
    assert answer.header("X-Model-Version") == "v1"
    assert echoed["body_bytes"] == 5
    names = [name.lower() for name, _ in echoed["headers"]]
    assert "x-trailer-injected" not in names
    assert [v for k, v in echoed["headers"] if k.lower() == "x-model-version"] == ["v1"]
    assert after.json()["target"] == "/echo?n=2"  # the trailer section was consumed whole
    first, second = r.records()
    assert (first["version"], first["assigned_by"], first["status"]) == ("v1", "split", 200)
    assert second["status"] == 200


@pytest.mark.parametrize(
    "burst",
    [
        pytest.param(
            get("/models/m/echo?n=1", "Connection: close") + get("/models/m/echo?n=2"),
            id="http11-connection-close",
        ),
        pytest.param(
            get("/models/m/echo?n=1", version="1.0") + get("/models/m/echo?n=2", version="1.0"),
            id="http10-without-keep-alive",
        ),
    ],
)
async def test_bytes_after_a_request_that_closes_the_connection_are_ignored(
    tmp_path: Path, burst: bytes, watched: tuple[str, list[str]]
) -> None:
    """RFC 9112 9.6: a server that sent `close` MUST NOT process further requests."""
    url, seen = watched
    async with (
        router_running(on(url), tmp_path) as r,
        connected(r) as conn,
    ):
        answer = await ask(conn, burst)
        after = await rest(conn[0])
    assert answer.status == 200
    assert answer.json()["target"] == "/echo?n=1"
    assert answer.header("Connection") == "close"
    assert after == b""  # no second answer, not even an error
    assert seen == ["/echo?n=1"]
    (record,) = r.records()
    assert (record["status"], record["outcome"]) == (200, "ok")
    assert record["request_id"] == answer.header("X-Request-ID")


async def behind_a_slow_request(r: RunningRouter, data: bytes) -> tuple[Answer, bytes]:
    """Pipeline `data` behind a slow request on one connection; check the slow one's
    answer (200, and no `Connection: close`: another answer follows); return the answer
    to `data` and whatever came after it."""
    async with connected(r) as (reader, writer):
        writer.write(get("/models/m/slow?s=0.3") + data)
        await writer.drain()
        slow = await read_answer(reader)
        second = await read_answer(reader)
        after = await rest(reader)
    assert slow.status == 200
    assert slow.json()["slept"] is True
    assert slow.header("Connection") is None
    return second, after


async def test_a_pipelined_upgrade_request_is_answered_plainly_then_the_connection_closes(
    backends: dict[str, str], tmp_path: Path
) -> None:
    upgrade = get("/models/m/echo?n=2", "Connection: Upgrade", "Upgrade: websocket")
    async with router_running(one_model(backends), tmp_path) as r:
        plain, after = await behind_a_slow_request(r, upgrade)
    assert plain.status == 200  # never 101: no protocol switch
    assert plain.json()["target"] == "/echo?n=2"
    assert "upgrade" not in [name.lower() for name, _ in plain.json()["headers"]]
    assert plain.header("Upgrade") is None
    assert plain.header("Connection") == "close"
    assert after == b""
    records = r.records()
    assert sorted((rec["path"], rec["status"]) for rec in records) == [
        ("/models/m/echo", 200),
        ("/models/m/slow", 200),
    ]


@pytest.mark.parametrize(
    "framing",
    [
        pytest.param(b"Content-Length: 5\r\n\r\nhello", id="content-length"),
        pytest.param(b"Transfer-Encoding: chunked\r\n\r\n" + CHUNKED_HELLO, id="chunked"),
    ],
)
async def test_an_upgrade_request_with_a_body_is_never_cut_short(
    tmp_path: Path, framing: bytes, watched: tuple[str, list[str]]
) -> None:
    """connection.py: with no protocol switch, an Upgrade request "is answered as a plain
    one and the connection closes after it" (RFC 9110 7.8 lets a server ignore Upgrade).
    httptools skips the body of any request it sees as an upgrade, so the router must
    either still forward the body whole or refuse the request (400, before the backend);
    never answer 499 to a client that is still there, nor forward the request with its
    body silently dropped."""
    url, seen = watched
    request = (
        b"POST /models/m/echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
        b"Upgrade: websocket\r\n" + framing
    )
    async with (
        router_running(on(url), tmp_path, drain_s=0.2) as r,
        connected(r) as conn,
    ):
        answer = await ask(conn, request)
        after = await rest(conn[0])
    assert after == b""
    (record,) = r.records()
    if answer.status == 400:  # refused: it never reaches the backend
        request_id = assert_router_error(answer, 400, answer.json()["error"]["code"])
        assert seen == []
        assert (record["status"], record["outcome"]) == (400, "rejected")
        assert record["request_id"] == request_id
        return
    assert answer.status == 200, (answer.status_line, answer.body)
    echoed = answer.json()
    assert echoed["body_bytes"] == 5
    assert echoed["body_sha256"] == hashlib.sha256(b"hello").hexdigest()
    assert answer.header("Connection") == "close"
    assert seen == ["/echo"]
    assert (record["status"], record["outcome"]) == (200, "ok")


async def test_a_pipelined_request_with_a_bad_chunk_is_answered_bad_body_after_the_first(
    backends: dict[str, str], tmp_path: Path
) -> None:
    bad = (
        b"POST /models/m/echo?n=2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\nhello\r\n0\r\n\r\n"
    )
    async with router_running(one_model(backends), tmp_path) as r:
        refused, after = await behind_a_slow_request(r, bad)
    request_id = assert_router_error(refused, 400, "bad_body")
    assert after == b""
    records = sorted(r.records(), key=lambda rec: rec["status"])
    assert [(rec["path"], rec["status"]) for rec in records] == [
        ("/models/m/slow", 200),
        ("/models/m/echo", 400),
    ]
    assert records[1]["request_id"] == request_id


@pytest.mark.parametrize("lines", [2000, 1000])  # with Host: 2001 and 1001 header lines
async def test_more_than_1000_header_lines_are_refused(
    backends: dict[str, str], tmp_path: Path, lines: int
) -> None:
    many = ["a: b"] * lines
    assert len("\r\n".join(many)) < 64 * 1024 // 4  # far from the limit on bytes
    async with router_running(one_model(backends), tmp_path) as r, connected(r) as conn:
        answer = await ask(conn, get("/models/m/echo", *many))
        after = await rest(conn[0])
    request_id = assert_refused(answer)
    assert "1000 header lines" in answer.json()["error"]["message"]
    assert after == b""
    (record,) = r.records()
    assert_rejected_record(record, request_id)


async def test_100_header_lines_are_served(backends: dict[str, str], tmp_path: Path) -> None:
    async with router_running(one_model(backends), tmp_path) as r, connected(r) as conn:
        answer = await ask(conn, get("/models/m/echo", *["a: b"] * 100))
    assert answer.status == 200
    assert [v for k, v in answer.json()["headers"] if k.lower() == "a"] == ["b"] * 100
    assert [rec["status"] for rec in r.records()] == [200]


async def test_exactly_1000_header_lines_are_served(tmp_path: Path) -> None:
    """The limit's edge (Host and 999 more): forwarded to a backend that takes any head."""
    received: list[bytes] = []

    def answer(head: bytes) -> bytes:
        received.append(head)
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    async with (
        raw_backend(answer) as url,
        router_running(on(url), tmp_path) as r,
        connected(r) as conn,
    ):
        served = await ask(conn, get("/models/m/x", *["a: b"] * 999))
    assert served.status == 200
    assert served.body == b"ok"
    (head,) = received
    assert head.split(b"\r\n").count(b"a: b") == 999
    assert [rec["status"] for rec in r.records()] == [200]


async def test_an_http2_request_line_is_505_unsupported_version(
    tmp_path: Path, watched: tuple[str, list[str]]
) -> None:
    url, seen = watched
    async with (
        router_running(on(url), tmp_path) as r,
        connected(r) as conn,
    ):
        answer = await ask(conn, b"GET /models/m/echo HTTP/2.0\r\nHost: x\r\n\r\n")
        after = await rest(conn[0])
    request_id = assert_router_error(answer, 505, "unsupported_version")
    assert after == b""
    assert seen == []
    (record,) = r.records()
    assert (record["status"], record["outcome"]) == (505, "rejected")
    assert record["request_id"] == request_id


@pytest.mark.parametrize(
    ("target", "forwarded"),
    [("/models/m/echo?x=1#frag", "/echo?x=1"), ("/models/m/echo#frag?x=1", "/echo")],
)
async def test_a_fragment_in_the_target_is_not_forwarded(
    backends: dict[str, str], tmp_path: Path, target: str, forwarded: str
) -> None:
    async with router_running(one_model(backends), tmp_path) as r, connected(r) as conn:
        answer = await ask(conn, get(target))
    assert answer.status == 200
    assert answer.json()["target"] == forwarded
    (record,) = r.records()
    assert (record["path"], record["status"]) == ("/models/m/echo", 200)


async def test_a_bad_chunk_in_a_streamed_body_reads_as_malformed_body(
    tmp_path: Path, watched: tuple[str, list[str]]
) -> None:
    """The body is already on its way to the backend when its framing breaks (buffering
    off): the client is told what is wrong with its body, not how the router's client
    failed."""
    url, seen = watched
    head = b"POST /models/m/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    async with (
        router_running(on(url), tmp_path, request_buffering=False) as r,
        connected(r) as conn,
    ):
        reader, writer = conn
        writer.write(head + b"5\r\nhello\r\n")
        await writer.drain()

        async def forwarded() -> bool | None:
            return True if seen else None

        await poll(forwarded, WAIT, "the backend to receive the streamed request")
        writer.write(b"zz\r\nhello\r\n0\r\n\r\n")
        await writer.drain()
        answer = await read_answer(reader)
        after = await rest(reader)
    request_id = assert_router_error(answer, 400, "bad_body")
    message = answer.json()["error"]["message"]
    assert message.startswith("the request body is malformed: "), message
    assert "ConnectionKey" not in message
    assert "RouterError" not in message
    assert after == b""
    assert seen == ["/upload"]
    (record,) = r.records()
    assert (record["status"], record["outcome"]) == (400, "rejected")
    assert record["request_id"] == request_id


async def test_a_bad_chunk_in_a_buffered_body_never_reaches_the_backend(
    tmp_path: Path, watched: tuple[str, list[str]]
) -> None:
    """server.request_buffering (the default): a small chunked body is read whole before
    it is forwarded, so broken framing is answered 400 and the backend sees nothing."""
    url, seen = watched
    head = b"POST /models/m/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    async with (
        router_running(on(url), tmp_path) as r,
        connected(r) as conn,
    ):
        reader, writer = conn
        writer.write(head + b"5\r\nhello\r\n")
        await writer.drain()
        writer.write(b"zz\r\nhello\r\n0\r\n\r\n")
        await writer.drain()
        answer = await read_answer(reader)
    assert_router_error(answer, 400, "bad_body")
    assert seen == []
    (record,) = r.records()
    assert (record["status"], record["outcome"]) == (400, "rejected")


def slow_reader() -> socket.socket:
    """A client socket whose small receive buffer and MSS, set before connect, keep the
    router's kernel send buffer small: an answer of 1 MiB then waits in the router."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
    sock.setblocking(False)
    return sock


def address_of(r: RunningRouter) -> tuple[str, int]:
    host, port = r.url.removeprefix("http://").split(":")
    return host, int(port)


async def test_a_whole_answer_the_client_stops_reading_is_logged_once_as_499(
    backends: dict[str, str], tmp_path: Path
) -> None:
    """A 1 MiB answer, read whole from the backend (router/proxy/body.py BUFFER_BYTES), goes to
    a client that takes its head (a few hundred bytes) and hangs up. The router's write
    must still be waiting on the client then, which is a matter of buffer sizes, not of
    timing: the client's small receive buffer and small MSS, both set before connect, hold
    the router's kernel send buffer near 135 KiB (on loopback it otherwise grows to
    net.ipv4.tcp_wmem's 4 MiB and takes the whole answer at once), so most of the answer
    waits in the router, over its transport's high-water mark."""
    loop = asyncio.get_running_loop()
    async with router_running(one_model(backends), tmp_path) as r:
        sock = slow_reader()
        try:
            async with asyncio.timeout(WAIT):
                await loop.sock_connect(sock, address_of(r))
                await loop.sock_sendall(sock, get("/models/m/download?mb=1"))
                got = b""
                while b"\r\n\r\n" not in got:
                    piece = await loop.sock_recv(sock, 100)
                    assert piece, "closed before the answer's head was out"
                    got += piece
        finally:
            sock.close()  # unread bytes are left: a reset
        assert got.startswith(b"HTTP/1.1 200 ")
        assert b"\r\nContent-Length: 1048576\r\n" in got  # the whole-answer path

        async with connected(r) as conn:  # still serving
            after = await ask(conn, get("/models/m/echo?n=2"))
        assert after.status == 200
    records = r.records()
    assert len(records) == 2
    cut, served = sorted(records, key=lambda rec: rec["path"])
    assert cut["path"] == "/models/m/download"
    # 200 ok here would mean the write did not wait on the client (see the docstring).
    assert (cut["status"], cut["outcome"]) == (499, "client_closed")
    assert (served["path"], served["status"]) == ("/models/m/echo", 200)


# --- framing the parser would take, refused; lines that never end ---


async def test_an_http10_request_with_transfer_encoding_is_400(
    tmp_path: Path, watched: tuple[str, list[str]]
) -> None:
    """RFC 9112 6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing."""
    url, seen = watched
    async with (
        router_running(on(url), tmp_path) as r,
        connected(r) as conn,
    ):
        answer = await ask(
            conn,
            b"POST /models/m/echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n",
        )
    assert_router_error(answer, 400, "bad_request")
    assert seen == []
    (record,) = r.records()
    assert (record["status"], record["outcome"]) == (400, "rejected")


async def test_a_header_line_that_never_ends_is_refused_not_held(
    tmp_path: Path, watched: tuple[str, list[str]]
) -> None:
    """httptools holds a header line until it ends: the router counts what went into an
    unfinished head and refuses it past 64 KiB, rather than holding an endless line."""
    url, seen = watched
    async with (
        router_running(on(url), tmp_path) as r,
        connected(r) as (reader, writer),
    ):
        writer.write(b"GET /models/m/echo HTTP/1.1\r\nHost: x\r\nX-Long: ")
        piece = b"a" * 16384
        try:
            for _ in range(64):  # up to 1 MiB, in pieces; the router answers well before
                writer.write(piece)
                await writer.drain()
        except ConnectionError:
            pass  # refused and closed while still sending: the answer is read below
        answer = await read_answer(reader)
    assert_router_error(answer, 400, "bad_request")
    assert "64 KiB" in answer.json()["error"]["message"]
    assert seen == []
    (record,) = r.records()
    assert (record["status"], record["outcome"]) == (400, "rejected")


async def test_a_trailer_that_never_ends_fails_the_body(
    tmp_path: Path, watched: tuple[str, list[str]]
) -> None:
    url, _ = watched
    async with (
        router_running(on(url), tmp_path) as r,
        connected(r) as (reader, writer),
    ):
        writer.write(
            b"POST /models/m/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\nX-Trailer: "
        )
        try:
            for _ in range(64):
                writer.write(b"a" * 16384)
                await writer.drain()
        except ConnectionError:
            pass
        answer = await read_answer(reader)
    assert answer.status == 400, (answer.status_line, answer.body)
    assert answer.json()["error"]["code"] == "bad_body"
    (record,) = r.records()
    assert (record["status"], record["outcome"]) == (400, "rejected")


async def test_a_client_that_reads_nothing_is_cut_off_after_the_send_timeout(
    backends: dict[str, str], tmp_path: Path
) -> None:
    """nginx's send_timeout: a client that takes nothing of its answer for `send_s` (60 s,
    shortened to 0.5 s here) is cut off, and the request is logged 499. The client's
    small buffers make the router's write wait on it (see the test above)."""
    loop = asyncio.get_running_loop()
    limits = ServerLimits(send_s=0.5)
    async with router_running(one_model(backends), tmp_path, limits=limits) as r:
        sock = slow_reader()
        try:
            async with asyncio.timeout(WAIT):
                await loop.sock_connect(sock, address_of(r))
                await loop.sock_sendall(sock, get("/models/m/download?mb=1"))

                async def cut_off() -> list[dict[str, Any]] | None:
                    return r.records() or None  # the record is written once it is over

                (record,) = await poll(cut_off, WAIT, "the send timeout")
        finally:
            sock.close()
    assert record["path"] == "/models/m/download"
    assert (record["status"], record["outcome"]) == (499, "client_closed")


async def test_a_pipelined_burst_cut_by_a_reset_leaves_one_record_per_request(
    backends: dict[str, str], tmp_path: Path
) -> None:
    """Three requests in one write, then the client resets the connection while the first
    is with the backend. Each leaves exactly one record: the one running and the ones
    waiting behind it say 499 (the router reads on behind bodiless pipelined requests, so
    it sees the reset), none says 200."""
    ids = ["hole-0", "hole-1", "hole-2"]
    targets = ["/models/m/slow?s=0.5", "/models/m/echo", "/models/m/echo"]
    burst = b"".join(
        get(target, f"X-Request-ID: {rid}") for target, rid in zip(targets, ids, strict=True)
    )
    async with router_running(one_model(backends), tmp_path) as r:
        _, writer = await asyncio.open_connection(*address_of(r))
        writer.write(burst)
        await writer.drain()
        await asyncio.sleep(0.1)  # the hang-up comes while the first request runs
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()  # a reset, not a clean close

        async def all_logged() -> list[dict[str, Any]] | None:
            records = r.records()
            return records if len(records) >= len(ids) else None

        await poll(all_logged, WAIT, "a record for each request")
        # And no second record for any of them: a request sent now, as slow as the first,
        # is logged after the first's backend answered (records are written in order).
        _, writer = await asyncio.open_connection(*address_of(r))
        writer.write(get("/models/m/slow?s=0.5", "X-Request-ID: after", "Connection: close"))
        await writer.drain()

        async def after_logged() -> list[dict[str, Any]] | None:
            records = r.records()
            return records if records[-1]["request_id"] == "after" else None

        records = (await poll(after_logged, WAIT, "the later request's record"))[:-1]
        writer.close()
    assert sorted(rec["request_id"] for rec in records) == ids
    for rec in records:
        assert (rec["status"], rec["outcome"]) == (499, "client_closed"), rec


async def test_one_byte_chunks_with_extensions_pass_whatever_the_writes(
    backends: dict[str, str], tmp_path: Path
) -> None:
    """Chunk extensions are legal (RFC 9112 7.1.1) and cost framing bytes, not body: only
    an unfinished trailer is bounded, so 20,000 one-byte chunks with `;name=value` pass,
    even sent in 100-byte writes, each read on its own."""
    body = bytes(random.Random(5).getrandbits(8) for _ in range(20_000))
    chunks = b"".join(b"1;name=value\r\n" + bytes([byte]) + b"\r\n" for byte in body)
    data = (
        b"POST /models/m/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + chunks
        + b"0\r\n\r\n"
    )
    async with router_running(one_model(backends), tmp_path) as r, connected(r) as conn:
        reader, writer = conn
        for start in range(0, len(data), 100):
            writer.write(data[start : start + 100])
            await writer.drain()
            await asyncio.sleep(0)  # one read each, as a slow link would give
        answer = await read_answer(reader)
    assert answer.status == 200, (answer.status_line, answer.body)
    assert answer.json()["body_bytes"] == len(body)
    assert answer.json()["body_sha256"] == hashlib.sha256(body).hexdigest()


async def test_a_long_pipeline_in_one_write_is_not_taken_for_an_endless_head(
    backends: dict[str, str], tmp_path: Path
) -> None:
    """3000 requests in one write (about 200 KB) are all answered: the router reads them in
    pieces that end mid-head, and only what went wholly into one unfinished head counts
    against its 64 KiB."""
    count = 3000
    burst = b"".join(get(f"/models/m/echo?n={n}") for n in range(count - 1))
    burst += get(f"/models/m/echo?n={count - 1}", "Connection: close")
    async with router_running(one_model(backends), tmp_path) as r, connected(r) as conn:
        reader, writer = conn
        writer.write(burst)
        await writer.drain()
        async with asyncio.timeout(30):
            answers = await reader.read()
    assert answers.count(b"HTTP/1.1 200 OK\r\n") == count
    assert b"bad_request" not in answers


async def test_requests_behind_a_client_that_reads_nothing_are_logged_when_the_drain_ends(
    backends: dict[str, str], tmp_path: Path
) -> None:
    """A large answer the client does not read, two requests pipelined behind it, and a
    shutdown whose drain_s runs out: the connection is dropped at the end, and the two
    requests it still held are logged 503 `unavailable` before the log closes."""
    loop = asyncio.get_running_loop()
    sock = slow_reader()
    try:
        async with router_running(one_model(backends), tmp_path, drain_s=0.5) as r:
            await loop.sock_connect(sock, address_of(r))
            await loop.sock_sendall(
                sock,
                get("/models/m/download?mb=8")
                + get("/models/m/echo", "X-Request-ID: second")
                + get("/models/m/echo", "X-Request-ID: third"),
            )

            async def writing() -> bool | None:
                return True if r.router.server and r.router.server.in_flight else None

            await poll(writing, WAIT, "the download to be under way")
        # router_running has stopped the router: drained, cut off, the log closed.
        records = {rec["request_id"]: rec for rec in r.records()}
    finally:
        sock.close()
    assert len(records) == 3
    for rid in ("second", "third"):
        assert (records[rid]["status"], records[rid]["outcome"]) == (503, "unavailable")


async def test_a_request_behind_an_answer_that_the_close_ends_is_logged_as_the_routers_doing(
    backends: dict[str, str], tmp_path: Path
) -> None:
    """HTTP/1.0 and a streamed answer without a length: the close ends that answer, so a
    request pipelined behind it cannot be answered. Its record says 503, not that the
    client left."""
    request = "GET /models/m/{} HTTP/1.0\r\nConnection: keep-alive\r\nX-Request-ID: {}\r\n\r\n"
    burst = request.format("predict-chunked", "first") + request.format("echo", "second")
    async with router_running(one_model(backends), tmp_path) as r, connected(r) as conn:
        reader, writer = conn
        writer.write(burst.encode())
        await writer.drain()
        async with asyncio.timeout(WAIT):
            answers = await reader.read()
    assert answers.count(b"HTTP/1.1 ") == 1
    assert b"Connection: close" in answers
    records = {rec["request_id"]: rec for rec in r.records()}
    assert (records["first"]["status"], records["first"]["outcome"]) == (200, "ok")
    assert (records["second"]["status"], records["second"]["outcome"]) == (503, "unavailable")

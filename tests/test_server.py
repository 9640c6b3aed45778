"""The public port's HTTP/1.1 server (router/server.py), black-box over raw sockets.

Each test talks bytes to the real router on 127.0.0.1 and reads the answers with a small,
strict HTTP/1.1 reader of its own (RFC 9112 6.3: how a message's body length is known), so
that a framing mistake by the server shows up as a wrong answer, never as a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.running import RunningRouter, router_running
from tests.test_proxy_edges import exchange, one_model

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
    assert answer.status == 400, answer.status_line
    assert answer.header("Content-Type") == "application/json"
    assert answer.header("Connection") == "close"
    error = answer.json()["error"]
    assert error["code"] == "bad_request"
    assert isinstance(error["message"], str)
    assert error["message"]
    assert answer.header("X-Request-ID") == error["request_id"]
    assert isinstance(error["request_id"], str)
    assert error["request_id"]
    return str(error["request_id"])


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


async def test_a_request_line_over_the_limit_is_refused_with_the_contract_json(
    backends: dict[str, str], tmp_path: Path
) -> None:
    target = "/models/m/echo?q=" + "a" * LIMIT
    async with router_running(one_model(backends), tmp_path) as r, connected(r) as conn:
        answer = await ask(conn, get(target))
        after = await rest(conn[0])
    request_id = assert_refused(answer)
    assert after == b""
    (record,) = r.records()
    assert_rejected_record(record, request_id)


async def test_a_header_line_over_the_limit_is_refused_with_the_contract_json(
    backends: dict[str, str], tmp_path: Path
) -> None:
    async with router_running(one_model(backends), tmp_path) as r, connected(r) as conn:
        answer = await ask(conn, get("/models/m/echo", "X-Long: " + "b" * LIMIT))
        after = await rest(conn[0])
    request_id = assert_refused(answer)
    assert after == b""
    (record,) = r.records()
    assert_rejected_record(record, request_id)


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
    ],
)
async def test_a_request_llhttp_refuses_gets_the_contract_json_and_one_record(
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
    whole answer and then the close, not a reset: the lingering close router/server.py
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

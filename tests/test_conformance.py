"""HTTP/1.1 conformance of the public port, over raw sockets to a real router and backend:
what the RFCs (9110, 9112) say a server must refuse or answer itself, and the paths and
header names that must never slip through to a backend. docs/behaviour.md has the choices.

Every refusal is checked three ways: the contract's JSON error, exactly one record, and
nothing reaching the backend.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from pytest_aiohttp import AiohttpServer

from router.http.framing import ALLOW
from router.http.limits import ServerLimits
from tests.support.echo import SEEN, create_echo_app
from tests.support.errors import contract_error
from tests.support.running import RunningRouter, router_running, serve
from tests.support.sockets import ANSWER_TIMEOUT_S, address, exchange, send_raw

Watched = tuple[str, list[str]]
# Small enough to keep the suite quick; the sweep looks every SWEEP_S.
HEAD_S = 0.5
SWEEP_S = 0.1


@pytest.fixture
async def watched(aiohttp_server: AiohttpServer) -> Watched:
    """An echo backend: its URL, and the raw target of every request it received."""
    app = create_echo_app("v1")
    return await serve(aiohttp_server, app), app[SEEN]


def on(url: str) -> dict[str, Any]:
    return {"m": {"versions": {"v1": {"url": url}}, "split": {"v1": 100}}}


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


def answers(raw: bytes) -> list[Answer]:
    """The answers in `raw`, in order; each carries a Content-Length (the router's own
    answers and the echo backend's do)."""
    found = []
    while raw:
        head, sep, raw = raw.partition(b"\r\n\r\n")
        assert sep, f"an unfinished head: {head!r}"
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers: dict[str, str] = {}
        for line in lines:
            name, _, value = line.partition(":")
            assert name.lower() not in headers, f"{name} sent twice"
            headers[name.lower()] = value.strip()
        length = int(headers["content-length"])
        found.append(Answer(int(status_line.split()[1]), headers, raw[:length]))
        raw = raw[length:]
    return found


def one_answer(raw: bytes) -> Answer:
    (answer,) = answers(raw)
    return answer


def router_error(answer: Answer, status: int, code: str) -> str:
    """The contract's JSON error with `code`, its id in X-Request-ID, and a close; the id."""
    assert answer.status == status, answer
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["connection"] == "close"
    error = contract_error(answer.json(), code)
    assert error["request_id"] == answer.headers["x-request-id"]
    return error["request_id"]


def refused_record(r: RunningRouter, status: int, request_id: str) -> None:
    """The refusal's one record (the router has stopped): rejected, with its status and id."""
    (record,) = r.records()
    assert (record["status"], record["outcome"]) == (status, "rejected")
    assert record["request_id"] == request_id


def get(target: str, *lines: str, method: str = "GET", version: str = "1.1") -> bytes:
    head = [f"{method} {target} HTTP/{version}", *lines, "Connection: close", "", ""]
    return "\r\n".join(head).encode("utf-8", "surrogateescape")


async def refused_before_routing(watched: Watched, tmp_path: Path, request: bytes) -> None:
    """`request` gets 400 `bad_request`, one record (method and path unknown), no forward."""
    url, seen = watched
    async with router_running(on(url), tmp_path) as r:
        answer = one_answer(await exchange(r.url, request))
    request_id = router_error(answer, 400, "bad_request")
    refused_record(r, 400, request_id)
    assert r.records()[0]["method"] is None
    assert seen == []


# --- Host (RFC 9112 3.2, RFC 9110 7.2) ---


@pytest.mark.parametrize(
    "host",
    [
        pytest.param("", id="empty"),
        pytest.param("/", id="slash"),
        pytest.param("a.example/admin", id="path"),
        pytest.param("a.example,b.example", id="list"),
        pytest.param("a.example, b.example", id="list-with-space"),
        pytest.param("user@a.example", id="userinfo"),
        pytest.param("user:pw@a.example:80", id="userinfo-and-port"),
        pytest.param("a .example", id="space"),
        pytest.param("a\t.example", id="tab"),
        pytest.param("a.example:", id="empty-port"),
        pytest.param("a.example:8o", id="port-not-digits"),
        pytest.param("a.example:123456", id="port-too-long"),
        pytest.param("a..example", id="empty-label"),
        pytest.param(".a.example", id="leading-dot"),
        pytest.param("a%2eexample", id="percent-encoded"),
        pytest.param("[::1", id="unclosed-bracket"),
        pytest.param("[::g]", id="bad-ipv6"),
        pytest.param("::1", id="ipv6-without-brackets"),
        pytest.param("bücher.example", id="not-ascii"),
    ],
)
async def test_an_invalid_host_is_400_and_never_forwarded(
    watched: Watched, tmp_path: Path, host: str
) -> None:
    await refused_before_routing(watched, tmp_path, get("/models/m/echo", f"Host: {host}"))


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(get("/models/m/echo", "Host: a/b", version="1.0"), id="http10-invalid"),
        pytest.param(get("/models/m/echo", "Host:", version="1.0"), id="http10-empty"),
        pytest.param(get("/models/m/echo", "Host: a", "Host: a", version="1.0"), id="http10-two"),
    ],
)
async def test_http10_may_omit_host_but_not_send_a_bad_one(
    watched: Watched, tmp_path: Path, request_bytes: bytes
) -> None:
    """RFC 9112 3.2: more than one Host, or an invalid one, is 400 in any request."""
    await refused_before_routing(watched, tmp_path, request_bytes)


@pytest.mark.parametrize(
    ("host", "version"),
    [
        ("a.example", "1.1"),
        ("A.Example.:8080", "1.1"),
        ("127.0.0.1:80", "1.1"),
        ("[::1]:8080", "1.1"),
        ("[2001:db8::7]", "1.1"),
        ("my_service", "1.1"),
        ("a.example", "1.0"),
        (None, "1.0"),
    ],
)
async def test_a_valid_host_is_forwarded_in_x_forwarded_host(
    watched: Watched, tmp_path: Path, host: str | None, version: str
) -> None:
    lines = [] if host is None else [f"Host: {host}"]
    async with router_running(on(watched[0]), tmp_path) as r:
        answer = one_answer(await exchange(r.url, get("/models/m/echo", *lines, version=version)))
    assert answer.status == 200
    forwarded = [v for k, v in answer.json()["headers"] if k.lower() == "x-forwarded-host"]
    assert forwarded == ([] if host is None else [host])


# --- paths: encoded separators, dots, NUL ---


@pytest.mark.parametrize(
    "path",
    [
        "/models/m/..%2f..%2fadmin",
        "/models/m/..%2F..%2Fadmin",
        "/models/m/%2E%2E%2Fadmin",
        "/models/m/%2e%2e/admin",
        "/models/m/.%2E/admin",
        "/models/m/%2e/echo",
        "/models/m/a%2fb",
        "/models/m/..%5c..%5cadmin",
        "/models/m/a%5Cb",
        "/models/m/a\\..\\admin",
        "/models/m/echo%00.json",
        "/models/m/%00",
        "/models/m/..;/admin",
        "/models/m/versions/v1/%2e%2e;x/admin",
        "/models/m%2f..%2fother/echo",
    ],
)
async def test_a_path_with_encoded_separators_dots_or_nul_is_400_bad_path(
    watched: Watched, tmp_path: Path, path: str
) -> None:
    url, seen = watched
    async with router_running(on(url), tmp_path) as r:
        answer = one_answer(await exchange(r.url, get(path, "Host: x")))
    request_id = router_error(answer, 400, "bad_path")
    refused_record(r, 400, request_id)
    assert r.records()[0]["path"] == path
    assert seen == []


@pytest.mark.parametrize(
    ("path", "forwarded"),
    [
        ("/models/m/echo?next=..%2F..%2Fadmin%00", "/echo?next=..%2F..%2Fadmin%00"),
        ("/models/m/a..b/%2e%2e.txt", "/a..b/%2e%2e.txt"),
        ("/models/m/sp%20ace/%41", "/sp%20ace/%41"),
    ],
)
async def test_what_only_looks_like_a_bad_path_is_forwarded_as_sent(
    watched: Watched, tmp_path: Path, path: str, forwarded: str
) -> None:
    """The query string is the backend's (forwarded byte for byte); dots inside a segment
    and other encoded bytes are not separators."""
    url, seen = watched
    async with router_running(on(url), tmp_path) as r:
        answer = one_answer(await exchange(r.url, get(path, "Host: x")))
    assert answer.status == 200
    assert seen == [forwarded]


# --- header names with "_" ---


@pytest.mark.parametrize(
    "line",
    [
        "Transfer_Encoding: chunked",
        "transfer_encoding: chunked",
        "TRANSFER_encoding: gzip",
        "Content_Length: 5",
        "content_length: 0",
    ],
    ids=lambda line: line.partition(":")[0],
)
async def test_a_name_that_reads_as_a_framing_header_with_dashes_is_400(
    watched: Watched, tmp_path: Path, line: str
) -> None:
    """A CGI or WSGI backend reads `Content_Length` as Content-Length: the router and the
    backend would disagree on where the body ends (request smuggling)."""
    request = get("/models/m/echo", "Host: x", line).replace(b"\r\n\r\n", b"\r\n\r\nhello")
    await refused_before_routing(watched, tmp_path, request)


async def test_other_names_with_underscores_pass_unless_they_pose_as_the_routers_own(
    watched: Watched, tmp_path: Path
) -> None:
    lines = (
        "Host: x",
        "X_Api_Key: k1",
        "my_header: v",
        "X_Forwarded_For: 203.0.113.9",
        "X_Model_Version: v9",
        "x_shadow: true",
        "Proxy_Authorization: Basic Zm9v",
    )
    async with router_running(on(watched[0]), tmp_path) as r:
        answer = one_answer(await exchange(r.url, get("/models/m/echo", *lines)))
    assert answer.status == 200
    headers = answer.json()["headers"]
    underscored = [[k, v] for k, v in headers if "_" in k]
    assert underscored == [["X_Api_Key", "k1"], ["my_header", "v"]]
    assert dict(headers)["X-Model-Version"] == "v1"
    assert "203.0.113.9" not in dict(headers)["X-Forwarded-For"]


# --- methods: CONNECT, TRACE, asterisk-form ---


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(get("a.example:443", "Host: a.example:443", method="CONNECT"), id="CONNECT"),
        pytest.param(get("/models/m/echo", "Host: x", method="TRACE"), id="TRACE"),
        pytest.param(get("*", "Host: x", method="TRACE"), id="TRACE-asterisk"),
    ],
)
async def test_connect_and_trace_are_405_with_allow_and_never_forwarded(
    watched: Watched, tmp_path: Path, request_bytes: bytes
) -> None:
    url, seen = watched
    async with router_running(on(url), tmp_path) as r:
        answer = one_answer(await exchange(r.url, request_bytes))
    request_id = router_error(answer, 405, "method_not_allowed")
    assert answer.headers["allow"] == ALLOW
    refused_record(r, 405, request_id)
    assert seen == []


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "DELETE"])
async def test_asterisk_form_with_any_method_but_options_is_400(
    watched: Watched, tmp_path: Path, method: str
) -> None:
    """RFC 9112 3.2.4: the asterisk-form is only for a server-wide OPTIONS."""
    await refused_before_routing(watched, tmp_path, get("*", "Host: x", method=method))


async def test_options_asterisk_is_answered_by_the_router_and_keeps_the_connection(
    watched: Watched, tmp_path: Path
) -> None:
    """RFC 9110 9.3.7: `OPTIONS *` asks about the server: 200, Allow, an empty body; then
    the same connection serves a request."""
    url, seen = watched
    asterisk = b"OPTIONS * HTTP/1.1\r\nHost: x\r\nX-Request-ID: mine\r\n\r\n"
    async with router_running(on(url), tmp_path) as r:
        raw = await exchange(r.url, asterisk + get("/models/m/echo", "Host: x"))
    options, echoed = answers(raw)
    assert options.status == 200
    assert options.headers["allow"] == ALLOW
    assert options.headers["content-length"] == "0"
    assert "connection" not in options.headers
    assert echoed.status == 200
    assert seen == ["/echo"]
    first, second = r.records()
    assert (first["status"], first["method"], first["path"]) == (200, "OPTIONS", "*")
    assert first["request_id"] == options.headers["x-request-id"] == "mine"
    assert (second["status"], second["path"]) == (200, "/models/m/echo")


async def test_options_on_a_path_is_forwarded(watched: Watched, tmp_path: Path) -> None:
    url, seen = watched
    async with router_running(on(url), tmp_path) as r:
        answer = one_answer(
            await exchange(r.url, get("/models/m/echo", "Host: x", method="OPTIONS"))
        )
    assert (answer.status, answer.json()["method"]) == (200, "OPTIONS")
    assert seen == ["/echo"]


# --- slow clients: a head (client_header_s), a body (server.body_timeout_s) ---


def slow_heads(idle_s: float = 75.0) -> ServerLimits:
    return ServerLimits(client_header_s=HEAD_S, sweep_s=SWEEP_S, idle_s=idle_s)


@pytest.mark.parametrize(
    "part",
    [
        pytest.param(b"GET /models/m/ec", id="in-the-request-line"),
        pytest.param(b"GET /models/m/echo HTTP/1.1\r\nHost: x\r\nX-Half: ", id="in-a-header"),
        pytest.param(b"GET /models/m/echo HTTP/1.1\r\nHost: x\r\n", id="before-the-blank-line"),
    ],
)
async def test_a_head_that_stops_arriving_is_answered_408_and_closed(
    watched: Watched, tmp_path: Path, part: bytes
) -> None:
    url, seen = watched
    async with router_running(on(url), tmp_path, limits=slow_heads()) as r:
        answer = one_answer(await send_raw(r.url, part))  # fails unless closed in time
    request_id = router_error(answer, 408, "request_timeout")
    refused_record(r, 408, request_id)
    assert seen == []


async def test_a_head_behind_an_answer_is_timed_from_that_answer(
    watched: Watched, tmp_path: Path
) -> None:
    """A request, then part of the next head in the same write: the first is answered as
    usual, the half head gets 408."""
    url, seen = watched
    first = b"GET /models/m/echo HTTP/1.1\r\nHost: x\r\n\r\n"
    async with router_running(on(url), tmp_path, limits=slow_heads()) as r:
        raw = await send_raw(r.url, first + b"GET /models/m/echo HTTP/1.1\r\nHo")
    served, timed_out = answers(raw)
    assert served.status == 200
    request_id = router_error(timed_out, 408, "request_timeout")
    assert [rec["status"] for rec in r.records()] == [200, 408]
    assert r.records()[1]["request_id"] == request_id
    assert seen == ["/echo"]


async def test_an_idle_connection_is_closed_silently(watched: Watched, tmp_path: Path) -> None:
    """Nothing sent, nothing answered (as nginx's keepalive_timeout): no 408, no record."""
    limits = slow_heads(idle_s=HEAD_S)
    async with router_running(on(watched[0]), tmp_path, limits=limits) as r:
        reader, writer = await asyncio.open_connection(*address(r.url))
        try:
            async with asyncio.timeout(ANSWER_TIMEOUT_S):
                assert await reader.read() == b""
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
    assert r.records() == []


@pytest.mark.parametrize(
    ("sent", "read_whole"),
    [
        pytest.param(b"Content-Length: 10\r\n\r\nabc", True, id="small"),
        pytest.param(f"Content-Length: {2 << 20}\r\n\r\nabc".encode(), False, id="large"),
        pytest.param(b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n", False, id="chunked"),
    ],
)
async def test_a_body_that_stalls_is_408_body_timeout(
    watched: Watched, tmp_path: Path, sent: bytes, read_whole: bool
) -> None:
    """The head came whole and in time, the body stops: server.body_timeout_s applies (the
    head's limit does not) and the connection closes. A body of up to 1 MiB with a length
    is read whole first, so its request never reaches the backend; a larger or chunked one
    may have been on its way (streamed) when it stalled."""
    url, seen = watched
    head = b"POST /models/m/echo HTTP/1.1\r\nHost: x\r\n"
    limits = slow_heads()
    async with router_running(on(url), tmp_path, limits=limits, body_timeout_s=2 * HEAD_S) as r:
        answer = one_answer(await send_raw(r.url, head + sent))
    request_id = router_error(answer, 408, "body_timeout")
    refused_record(r, 408, request_id)
    assert r.records()[0]["path"] == "/models/m/echo"
    if read_whole:
        assert seen == []

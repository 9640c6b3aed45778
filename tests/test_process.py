"""`model-router serve` as a real child process: signals, drain, malformed input, exit codes.

The backends run in this test's event loop and the router in its own process, so every
wait on the child goes through a thread (`RouterProcess.wait`) and never blocks the loop.
"""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from aiohttp.test_utils import TestServer

from tests.support.running import LOOPBACK, read_log, requests_in, router_process, table_data
from tests.support.sockets import ANSWER_TIMEOUT_S, address, connect, send_raw
from tests.support.tables import one_model
from tests.support.waiting import forwarded, poll

CRLF = b"\r\n"
STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3}) ")


# --- signals and drain ---


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_lets_the_request_in_flight_finish(
    backends: dict[str, str],
    backend_servers: dict[str, TestServer],
    tmp_path: Path,
    signum: signal.Signals,
) -> None:
    async with router_process(one_model(backends), tmp_path) as proc:
        async with aiohttp.ClientSession() as client:

            async def slow() -> tuple[int, Any]:
                async with client.get(f"{proc.url}/models/m/slow?s=1") as resp:
                    return resp.status, await resp.json()

            in_flight = asyncio.create_task(slow())
            await forwarded(backend_servers["v1"].app, "/slow?s=1")
            proc.signal(signum)

            async def refused() -> bool | None:
                try:
                    await connect(proc.url)
                except ConnectionRefusedError:
                    return True
                except ConnectionResetError:
                    pass  # in the listen queue as the listener closed: not refused yet
                return None

            # Shutdown has begun: the listener is closed while the request still runs.
            await poll(refused, 0.5, "the listener closed after the signal")
            assert not in_flight.done()
            status, body = await in_flight
        assert status == 200
        assert body == {"version": "v1", "slept": True}
        assert await proc.wait() == 0
    records = read_log(tmp_path / "routing.jsonl")
    assert [r["event"] for r in records] == ["config_loaded", "request"]
    request = records[1]
    assert request["path"] == "/models/m/slow"
    assert (request["model"], request["version"], request["status"], request["outcome"]) == (
        "m",
        "v1",
        200,
        "ok",
    )


async def cut_off_by_drain(
    tmp_path: Path,
    backend_servers: dict[str, TestServer],
    backends: dict[str, str],
    drain_s: float,
    slow_s: float,
) -> tuple[float, int | BaseException, dict[str, Any]]:
    """SIGTERM while /slow?s=slow_s runs, with `drain_s` well below it.

    Returns how long the router took to exit, what the client saw (a status, or the
    error that ended its request) and the request's one record.
    """
    async with (
        router_process(one_model(backends), tmp_path, drain_s=drain_s) as proc,
        aiohttp.ClientSession() as client,
    ):

        async def slow() -> int:
            async with client.get(f"{proc.url}/models/m/slow?s={slow_s:g}") as resp:
                await resp.read()
                return resp.status

        in_flight = asyncio.create_task(slow())
        await forwarded(backend_servers["v1"].app, f"/slow?s={slow_s:g}")
        signalled = time.monotonic()
        proc.signal(signal.SIGTERM)
        assert await proc.wait(timeout=10) == 0
        exited_after = time.monotonic() - signalled
        seen: int | BaseException
        try:
            seen = await asyncio.wait_for(in_flight, ANSWER_TIMEOUT_S)
        except aiohttp.ClientError as exc:
            # aiohttp's client retries an idempotent request once when the server
            # drops it, so this is often the refused reconnection.
            seen = exc
    print(f"\ndrain_s {drain_s:g}: exit {exited_after:.2f} s after SIGTERM; client saw {seen!r}")
    (record,) = requests_in(tmp_path / "routing.jsonl")
    return exited_after, seen, record


async def test_drain_time_bounds_shutdown(
    backends: dict[str, str], backend_servers: dict[str, TestServer], tmp_path: Path
) -> None:
    exited_after, seen, record = await cut_off_by_drain(
        tmp_path, backend_servers, backends, 0.5, slow_s=5
    )
    assert exited_after < 3.0
    assert seen != 200  # cut off: a broken connection or an error status, never a 200
    assert (record["path"], record["model"]) == ("/models/m/slow", "m")
    assert record["outcome"] != "ok"


async def test_drain_lasts_no_longer_than_drain_s(
    backends: dict[str, str], backend_servers: dict[str, TestServer], tmp_path: Path
) -> None:
    """Contract 6: requests in flight finish "for up to drain_s", then the process exits.

    Exiting with nothing in flight takes about 0.1 s; drain_s + 2 s is a generous bound
    on a loaded machine, and far below the 10 s the request would take.
    """
    drain_s = 1.5
    exited_after, _, record = await cut_off_by_drain(
        tmp_path, backend_servers, backends, drain_s, slow_s=10
    )
    assert exited_after < drain_s + 2
    assert record["latency_ms"] < (0.3 + drain_s + 2) * 1000


async def test_sigterm_under_load_loses_no_record(backends: dict[str, str], tmp_path: Path) -> None:
    """Issue 3: SIGTERM while 16 clients send continuously (a mix of quick and 0.3 s
    requests). Every request the router took is answered and has exactly one record; the
    clients then see refused connections; the process exits 0."""
    answered: list[int] = []
    clients_answered: set[int] = set()
    refused = 0

    async def client(proc_url: str, i: int, stop: asyncio.Event) -> None:
        nonlocal refused
        path = "/slow?s=0.3" if i % 4 == 0 else "/echo"
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                try:
                    async with session.get(f"{proc_url}/models/m{path}") as resp:
                        await resp.read()
                        answered.append(resp.status)
                        clients_answered.add(i)
                except aiohttp.ClientConnectorError:
                    refused += 1
                    await asyncio.sleep(0.05)  # a retry's back-off, not a wait for a state
                except aiohttp.ServerDisconnectedError:
                    pass  # an idle keep-alive connection closed by the drain: never taken

    async with router_process(one_model(backends), tmp_path, drain_s=5) as proc:
        stop = asyncio.Event()
        clients = [asyncio.create_task(client(proc.url, i, stop)) for i in range(16)]

        async def all_sending() -> bool | None:
            return True if len(clients_answered) == len(clients) else None

        async def all_refused() -> bool | None:
            return True if refused > 0 else None

        await poll(all_sending, 5.0, "every client answered at least once")
        proc.signal(signal.SIGTERM)
        assert await proc.wait() == 0
        await poll(all_refused, 5.0, "a client refused after the exit")
        stop.set()
        await asyncio.gather(*clients)
    records = requests_in(tmp_path / "routing.jsonl")
    assert answered
    assert all(status == 200 for status in answered)
    assert refused > 0
    assert len(records) == len(answered)
    assert all(r["status"] == 200 and r["outcome"] == "ok" for r in records)


async def test_pipelined_requests_behind_a_cut_off_one_get_503_without_forwarding(
    backends: dict[str, str], backend_servers: dict[str, TestServer], tmp_path: Path
) -> None:
    """SIGTERM while a slow request runs with four more pipelined behind it, and drain_s
    well below the slow one: it is cut off with 503 `shutting_down`, and the ones behind it
    are answered 503 at once, not forwarded to a backend that is being left. One record
    each; the last answer closes the connection."""
    ids = [f"cut-{n}" for n in range(5)]
    targets = ["/models/m/slow?s=10"] + ["/models/m/echo"] * 4
    burst = b"".join(
        f"GET {target} HTTP/1.1\r\nHost: x\r\nX-Request-ID: {rid}\r\n\r\n".encode()
        for target, rid in zip(targets, ids, strict=True)
    )
    async with router_process(one_model(backends), tmp_path, drain_s=0.5) as proc:
        reader, writer = await asyncio.open_connection(*address(proc.url))
        try:
            writer.write(burst)
            await writer.drain()
            await forwarded(backend_servers["v1"].app, "/slow?s=10")
            proc.signal(signal.SIGTERM)
            async with asyncio.timeout(ANSWER_TIMEOUT_S):
                answers = await reader.read()
        finally:
            writer.close()
        assert await proc.wait(timeout=10) == 0
    heads = answers.split(b"HTTP/1.1 ")[1:]
    assert [head[:3] for head in heads] == [b"503"] * len(ids), answers
    assert b"Connection: close" in heads[-1]
    assert all(b"shutting_down" in head for head in heads)
    records = {r["request_id"]: r for r in requests_in(tmp_path / "routing.jsonl")}
    assert sorted(records) == ids
    for rid in ids:
        assert (records[rid]["status"], records[rid]["outcome"]) == (503, "unavailable")
    assert records["cut-1"]["version"] is None
    assert records["cut-1"]["upstream_ms"] is None


# --- malformed input over raw sockets ---


@dataclass(frozen=True)
class Junk:
    name: str
    data: bytes
    # The contract error it gets: `bad_request` from the server's parser, before routing;
    # `bad_path` and `bad_body` from the proxy, which saw the request's head.
    code: str = "bad_request"


def _request(target: str, *headers: str, body: bytes = b"") -> bytes:
    lines = [f"GET {target} HTTP/1.1", f"Host: {LOOPBACK}", "Connection: close", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


JUNK = [
    Junk("junk bytes", b"\x00\x01\x02garbage\r\n\r\n"),
    Junk(
        "Content-Length and Transfer-Encoding",
        _request(
            "/models/m/echo",
            "Content-Length: 5",
            "Transfer-Encoding: chunked",
            body=b"5\r\nhello\r\n0\r\n\r\n",
        ),
    ),
    Junk("100 kB header value", _request("/models/m/echo", "X-Big: " + "a" * 100_000)),
    Junk("dot-dot segment", _request("/models/m/../echo"), code="bad_path"),
    Junk("percent-encoded dot-dot", _request("/models/m/%2e%2e/echo"), code="bad_path"),
    Junk(
        "invalid chunked body",
        _request("/models/m/echo", "Transfer-Encoding: chunked", body=b"zz\r\nhello\r\n0\r\n\r\n"),
        code="bad_body",
    ),
    Junk("header without a colon", _request("/models/m/echo", "X-No-Colon-Here")),
]


def status_of(answer: bytes) -> int | None:
    """The status of a raw answer, None when the router closed without one."""
    found = STATUS_LINE.match(answer)
    assert answer == b"" or found, f"not an HTTP answer: {answer[:200]!r}"
    return int(found.group(1)) if found else None


async def test_malformed_requests_are_refused_and_the_router_keeps_serving(
    backends: dict[str, str], tmp_path: Path
) -> None:
    answers: dict[str, bytes] = {}
    async with router_process(one_model(backends), tmp_path) as proc:
        # A fresh connection per request: nothing may depend on an earlier connection.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as client:
            for junk in JUNK:
                answers[junk.name] = answer = await send_raw(proc.url, junk.data)
                assert status_of(answer) == 400, f"{junk.name}: {answer!r}"
                body = orjson.loads(answer.partition(b"\r\n\r\n")[2])
                assert body["error"]["code"] == junk.code, junk.name
                assert proc.proc.poll() is None, f"router died after {junk.name}"
                async with client.get(f"{proc.url}/models/m/echo") as resp:
                    assert resp.status == 200, f"no normal answer after {junk.name}"
            proc.signal(signal.SIGTERM)
            assert await proc.wait() == 0
    for name, answer in answers.items():
        first_line = answer.split(CRLF, 1)[0]
        print(f"\n{name}: {first_line!r}", end="")
    print("\nrouter stderr:\n" + "".join(proc.stderr))

    records = requests_in(tmp_path / "routing.jsonl")
    # One record per request sent: each malformed one and each normal one after it.
    assert len(records) == 2 * len(JUNK), orjson.dumps(records, option=orjson.OPT_INDENT_2)
    normal = [r for r in records if r["path"] == "/models/m/echo" and r["status"] == 200]
    assert len(normal) == len(JUNK)
    refused = [r for r in records if r not in normal]
    # Sent whole, every one of them is refused: by the parser before routing (model, method
    # and path null) or, for the bad paths and the bad body, by the proxy.
    for record in refused:
        assert (record["status"], record["outcome"]) == (400, "rejected"), record
        if record["path"] is None:
            assert record["model"] is None, record
    seen = {r["path"]: r for r in refused if r["path"] is not None}
    assert set(seen) == {"/models/m/../echo", "/models/m/%2e%2e/echo", "/models/m/echo"}
    assert all(r["model"] in (None, "m") and r["version"] is None for r in seen.values())
    parser_refused = [junk for junk in JUNK if junk.code == "bad_request"]
    assert len(refused) - len(seen) == len(parser_refused)


async def test_invalid_chunk_after_the_headers_is_refused(
    backends: dict[str, str], backend_servers: dict[str, TestServer], tmp_path: Path
) -> None:
    """The body turns bad after the handler has started streaming it to the backend
    (buffering off): the parser fails the body's stream, and the proxy answers 400
    `bad_body` at once (without waiting for `server.body_timeout_s`, set long here)."""
    head = _request("/models/m/echo", "Transfer-Encoding: chunked").replace(b"GET", b"POST", 1)
    async with router_process(
        one_model(backends), tmp_path, body_timeout_s=60, request_buffering=False
    ) as proc:
        answer = await send_raw(
            proc.url,
            head + b"5\r\nhello\r\n",
            b"zz\r\nxx\r\n0\r\n\r\n",
            between=lambda: forwarded(backend_servers["v1"].app, "/echo"),
        )
        status = status_of(answer)
        assert status == 400, answer
        assert orjson.loads(answer.partition(b"\r\n\r\n")[2])["error"]["code"] == "bad_body"
        async with (
            aiohttp.ClientSession() as client,
            client.get(f"{proc.url}/models/m/echo") as resp,
        ):
            assert resp.status == 200
        proc.signal(signal.SIGTERM)
        assert await proc.wait() == 0
    bad, good = requests_in(tmp_path / "routing.jsonl")  # exactly one record each
    assert good["status"] == 200
    assert bad["path"] == "/models/m/echo"
    assert bad["method"] == "POST"
    assert (bad["status"], bad["outcome"]) == (400, "rejected")


# The fields every `request` record carries with `log.user_ids: hash` (contract section 5;
# `response` only with `log_response`).
RECORD_FIELDS = {
    "event", "ts", "request_id", "model", "version", "assigned_version", "assigned_by",
    "bucket", "user", "method", "path", "status", "outcome", "latency_ms", "upstream_ms",
    "config", "protocol", "first_byte_ms", "trace_id",
}  # fmt: skip


async def test_records_of_refused_requests_carry_every_field(
    backends: dict[str, str], tmp_path: Path
) -> None:
    async with router_process(one_model(backends), tmp_path) as proc:
        for junk in JUNK[:4]:  # refused by the parser (3) and by the proxy (1)
            await send_raw(proc.url, junk.data)
        proc.signal(signal.SIGTERM)
        assert await proc.wait() == 0
    records = requests_in(tmp_path / "routing.jsonl")
    assert len(records) == 4
    for record in records:
        assert set(record) == RECORD_FIELDS, f"missing {RECORD_FIELDS - set(record)}: {record}"


# --- exit codes and log destinations ---


def test_serve_with_an_invalid_table_exits_2_before_listening(tmp_path: Path) -> None:
    config = tmp_path / "routes.yaml"
    log_path = tmp_path / "routing.jsonl"
    config.write_text(
        textwrap.dedent(f"""\
            server:
              listen: {LOOPBACK}:0
              admin_listen: {LOOPBACK}:0
            log:
              path: {log_path}
            models:
              m:
                versions:
                  v1: {{url: "http://{LOOPBACK}:9"}}
                  v2: {{url: "http://{LOOPBACK}:9"}}
                spilt: {{v1: 100}}
                split:
                  v1: 90
                  v2: 5
            """)
    )
    result, checked = (
        subprocess.run(
            [sys.executable, "-m", "router", *command],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        for command in (["serve", "--config", str(config)], ["check", str(config)])
    )
    assert result.returncode == 2
    assert result.stderr == checked.stderr  # the same messages as `check`
    lines = result.stderr.splitlines()
    assert lines, "no messages on stderr"
    where = re.compile(re.escape(str(config)) + r":(\d+): (.+)")
    problems = {}
    for line in lines:
        found = where.fullmatch(line)
        assert found, f"not PATH:LINE: message: {line!r}"
        problems[int(found.group(1))] = found.group(2)
    assert problems[11].startswith("models.m.spilt: ")
    assert problems[12] == "models.m.split: percentages add up to 95, not 100"
    assert "serving on" not in result.stdout + result.stderr
    assert not log_path.exists()  # never got as far as opening the log


async def test_log_dash_writes_records_to_stdout(backends: dict[str, str], tmp_path: Path) -> None:
    log_path = tmp_path / "routing.jsonl"
    async with router_process(
        one_model(backends), tmp_path, "--log", "-", capture_stdout=True
    ) as proc:
        async with (
            aiohttp.ClientSession() as client,
            client.get(f"{proc.url}/models/m/echo", headers={"X-Request-ID": "on-stdout"}) as resp,
        ):
            assert resp.status == 200
        proc.signal(signal.SIGTERM)
        assert await proc.wait() == 0
    # Leaving the block joined the thread that reads stdout: every line is in.
    records = [orjson.loads(line) for line in proc.stdout]
    assert [r["event"] for r in records] == ["config_loaded", "request"]
    assert records[1]["request_id"] == "on-stdout"
    assert records[1]["status"] == 200
    assert not log_path.exists()


async def test_a_port_in_use_is_a_one_line_error(backends: dict[str, str], tmp_path: Path) -> None:
    """No traceback, exit 1, and no log line naming a table that never served."""
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "routes.yaml"
        log = tmp_path / "routing.jsonl"
        config.write_text(yaml.safe_dump(table_data(one_model(backends), log)))
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "router", "serve", "--config", str(config),
             "--listen", f"{LOOPBACK}:{port}"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith(f"model-router: cannot listen on {LOOPBACK}:{port}")
    assert "Traceback" not in result.stderr
    assert read_log(log) == []

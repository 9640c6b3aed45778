"""Edge cases found by black-box testing against the contract, over raw sockets."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import mmh3
import orjson

from tests.support.running import dead_url, router_running
from tests.support.sockets import address, exchange
from tests.support.tables import one_model
from tests.support.waiting import log_record


def body_of(answer: bytes) -> Any:
    return orjson.loads(answer.partition(b"\r\n\r\n")[2])


async def test_a_user_id_that_is_not_utf8_still_gets_its_bucket(
    backends: dict[str, str], tmp_path: Path
) -> None:
    """Header bytes are not always UTF-8; the bucket is the formula over the bytes sent."""
    user = b"Zo\xeb"
    request = b"GET /models/m/echo HTTP/1.1\r\nHost: x\r\nX-User-ID: " + user
    request += b"\r\nConnection: close\r\n\r\n"
    async with router_running(one_model(backends), tmp_path) as r:
        answer = await exchange(r.url, request)
    assert answer.startswith(b"HTTP/1.1 200")
    (record,) = r.records()
    assert record["bucket"] == mmh3.hash(user + b"m", seed=1, signed=False) * 10000 >> 32
    assert record["assigned_by"] == "split"


async def test_absolute_form_targets_are_routed(backends: dict[str, str], tmp_path: Path) -> None:
    async with router_running(one_model(backends), tmp_path) as r:
        target = f"{r.url}/models/m/echo?x=1".encode()
        answer = await exchange(r.url, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n"
                                b"Connection: close\r\n\r\n")  # fmt: skip
    assert answer.startswith(b"HTTP/1.1 200")
    assert body_of(answer)["target"] == "/echo?x=1"
    (record,) = r.records()
    assert record["path"] == "/models/m/echo"


async def test_expect_100_continue_only_for_a_body_the_router_takes(
    backends: dict[str, str], tmp_path: Path
) -> None:
    head = (
        "POST /models/m/echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nConnection: close\r\n"
    )
    async with router_running(one_model(backends), tmp_path, max_body_mb=1) as r:
        too_big = await exchange(r.url, f"{head}Content-Length: {2 << 20}\r\n\r\n".encode())
        reader, writer = await asyncio.open_connection(*address(r.url))
        writer.write(f"{head}Content-Length: 5\r\n\r\n".encode())
        async with asyncio.timeout(5):
            interim = await reader.readuntil(b"\r\n\r\n")
            writer.write(b"hello")
            final = await reader.read()
        writer.close()
        await writer.wait_closed()
    assert too_big.startswith(b"HTTP/1.1 413")
    assert b"100 Continue" not in too_big
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert final.startswith(b"HTTP/1.1 200")
    assert body_of(final)["body_bytes"] == 5
    assert "expect" not in {k.lower() for k, _ in body_of(final)["headers"]}


async def test_no_header_is_added_that_the_client_did_not_send(
    backends: dict[str, str], tmp_path: Path
) -> None:
    async with router_running(one_model(backends), tmp_path) as r:
        answer = await exchange(r.url, b"GET /models/m/echo HTTP/1.1\r\nHost: x\r\n"
                                b"Connection: close\r\n\r\n")  # fmt: skip
    sent = {k.lower() for k, _ in body_of(answer)["headers"]}
    assert sent.isdisjoint({"accept", "accept-encoding", "user-agent", "content-type"})


async def test_a_client_that_hangs_up_stops_the_wait_on_the_backend(
    backends: dict[str, str], tmp_path: Path
) -> None:
    async with router_running(one_model(backends), tmp_path) as r:
        started = time.monotonic()
        async with aiohttp.ClientSession() as client:
            try:
                async with client.get(f"{r.url}/models/m/slow?s=3",
                                      timeout=aiohttp.ClientTimeout(total=0.3)):  # fmt: skip
                    pass
            except TimeoutError:
                pass
        await log_record(r.log_path, lambda record: record["event"] == "request")
    (record,) = r.records()
    assert (record["status"], record["outcome"]) == (499, "client_closed")
    assert record["latency_ms"] < 2000  # not the 3 s the backend would have taken
    assert time.monotonic() - started < 3


async def test_a_version_asked_for_by_name_never_falls_back(
    backends: dict[str, str], tmp_path: Path
) -> None:
    models = {"m": {"versions": {"v1": {"url": backends["v1"]}, "v2": {"url": dead_url()}},
                    "split": {"v1": 0, "v2": 100}, "fallback": "v1"}}  # fmt: skip
    async with router_running(models, tmp_path) as r, aiohttp.ClientSession() as client:
        async with client.get(f"{r.url}/models/m/versions/v2/echo") as resp:
            assert resp.status == 502
        async with client.get(f"{r.url}/models/m/echo", headers={"X-Model-Version": "v2"}) as resp:
            assert resp.status == 502
        async with client.get(f"{r.url}/models/m/echo", headers={"X-User-ID": "u"}) as resp:
            assert resp.status == 200  # split traffic does fall back
            assert resp.headers["X-Model-Version"] == "v1"
    outcomes = [(rec["assigned_by"], rec["version"], rec["status"]) for rec in r.records()]
    assert outcomes == [("pinned", None, 502), ("header", None, 502), ("split", "v1", 200)]

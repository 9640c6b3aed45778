"""Limits and overload (contract section 10): a version's `max_in_flight` and `queue_s`,
503 `overloaded` with `Retry-After`, and the router's own shortages never blamed on a
version."""

from __future__ import annotations

import asyncio
import resource
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from tests.support.errors import router_error
from tests.support.metrics import scrape
from tests.support.running import requests_in, router_process, router_running, serve
from tests.support.tables import one_model
from tests.support.waiting import poll


def limited(backends: dict[str, str], **limits: Any) -> dict[str, Any]:
    table = one_model(backends)
    table["m"]["versions"]["v1"].update(limits)
    return table


async def _get(client: aiohttp.ClientSession, url: str) -> tuple[int, str | None, str | None]:
    async with client.get(url) as resp:
        code = None
        if resp.status == 503:
            code = (await resp.json())["error"]["code"]
        else:
            await resp.read()
        return resp.status, resp.headers.get("Retry-After"), code


async def _busy(client: aiohttp.ClientSession, admin_url: str) -> None:
    """Until v1 has a request in flight."""

    async def probe() -> float | None:
        metrics = await scrape(client, admin_url)
        return metrics.value("model_router_upstream_in_flight", model="m", version="v1") or None

    await poll(probe, 10, "a request in flight at v1")


async def test_a_full_version_queues_then_answers_503_overloaded(
    backends: dict[str, str], tmp_path: Path
) -> None:
    # The case: 20 concurrent 1 s requests to a version that takes 4 at once and
    # lets one more wait 0.2 s.
    table = limited(backends, max_in_flight=4, queue_s=0.2)
    async with (
        router_running(table, tmp_path) as r,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client,
    ):
        answers = await asyncio.gather(
            *(_get(client, f"{r.url}/models/m/slow?s=1") for _ in range(20))
        )
        metrics = await scrape(client, r.router.admin_url)
    ok = [a for a in answers if a[0] == 200]
    refused = [a for a in answers if a[0] != 200]
    assert 4 <= len(ok) <= 8
    assert all(a == (503, "1", "overloaded") for a in refused), refused
    records = r.records()
    assert len(records) == 20
    outcomes = Counter((rec["status"], rec["outcome"]) for rec in records)
    assert outcomes == {(200, "ok"): len(ok), (503, "rejected"): len(refused)}
    rejected = metrics.value(
        "model_router_overloaded", "model_router_overloaded_total",
        model="m", version="v1", reason="queue_timeout",
    )  # fmt: skip
    assert rejected == len(refused)
    assert metrics.value("model_router_upstream_in_flight", model="m", version="v1") == 0
    assert metrics.value("model_router_upstream_queued", model="m", version="v1") == 0


async def test_a_waiting_request_gets_the_first_place_that_frees(
    backends: dict[str, str], tmp_path: Path
) -> None:
    table = limited(backends, max_in_flight=1, queue_s=5)
    async with (
        router_running(table, tmp_path) as r,
        aiohttp.ClientSession() as client,
    ):
        answers = await asyncio.gather(
            *(_get(client, f"{r.url}/models/m/slow?s=0.2") for _ in range(3))
        )
    assert [a[0] for a in answers] == [200, 200, 200]
    # One at a time: each started after the one before it ended.
    latencies = sorted(rec["latency_ms"] for rec in r.records())
    assert latencies[2] >= 3 * 200 * 0.9


async def test_no_queue_refuses_at_once(backends: dict[str, str], tmp_path: Path) -> None:
    table = limited(backends, max_in_flight=1, queue_s=0)
    async with (
        router_running(table, tmp_path) as r,
        aiohttp.ClientSession() as client,
    ):
        slow = asyncio.ensure_future(_get(client, f"{r.url}/models/m/slow?s=1"))
        await _busy(client, r.router.admin_url)
        async with client.get(f"{r.url}/models/m/echo") as resp:
            message = await router_error(resp, 503, "overloaded")
            assert resp.headers["Retry-After"] == "1"
        assert (await slow)[0] == 200
    assert "max_in_flight" in message


class Held:
    """A backend that answers `?n=first` only once `release` is set, and notes the order
    in which requests reach it."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.order: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.order.append(request.query["n"])
        if request.query["n"] == "first":
            await self.release.wait()
        return web.json_response({"n": request.query["n"]})

    async def start(self, aiohttp_server: AiohttpServer) -> dict[str, str]:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self.handle)
        return {"v1": await serve(aiohttp_server, app)}


async def _queued(client: aiohttp.ClientSession, admin_url: str, n: int) -> None:
    """Until exactly `n` requests wait for a place at v1."""

    async def probe() -> bool | None:
        metrics = await scrape(client, admin_url)
        return metrics.value("model_router_upstream_queued", model="m", version="v1") == n or None

    await poll(probe, 10, f"{n} requests queued at v1")


async def test_waiting_requests_get_places_first_come_first_served(
    aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    """Arrivals staggered: each is in the queue before the next is sent."""
    held = Held()
    table = limited(await held.start(aiohttp_server), max_in_flight=1, queue_s=30)
    async with (
        router_running(table, tmp_path) as r,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client,
    ):
        admin = r.router.admin_url
        first = asyncio.ensure_future(_get(client, f"{r.url}/models/m/x?n=first"))
        await _busy(client, admin)
        later = []
        for i in range(5):
            later.append(asyncio.ensure_future(_get(client, f"{r.url}/models/m/x?n={i}")))
            await _queued(client, admin, i + 1)
        held.release.set()
        answers = await asyncio.gather(first, *later)
    assert [a[0] for a in answers] == [200] * 6
    assert held.order == ["first", "0", "1", "2", "3", "4"]


async def test_a_client_that_leaves_the_queue_gives_up_its_turn(
    aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    held = Held()
    table = limited(await held.start(aiohttp_server), max_in_flight=1, queue_s=30)
    async with (
        router_running(table, tmp_path) as r,
        aiohttp.ClientSession() as client,
    ):
        admin = r.router.admin_url
        first = asyncio.ensure_future(_get(client, f"{r.url}/models/m/x?n=first"))
        await _busy(client, admin)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await _get(client, f"{r.url}/models/m/x?n=left")
        # It leaves the queue as its client leaves, not when a place next frees: the first
        # request is still held here.
        await _queued(client, admin, 0)
        assert not first.done()
        held.release.set()
        assert (await first)[0] == 200
        # Its place in the queue is gone: the next request goes at once.
        assert (await _get(client, f"{r.url}/models/m/x?n=next"))[0] == 200
        metrics = await scrape(client, admin)
    assert metrics.value("model_router_upstream_queued", model="m", version="v1") == 0
    assert metrics.value("model_router_upstream_in_flight", model="m", version="v1") == 0
    assert held.order == ["first", "next"]


async def test_at_the_open_files_limit_every_client_gets_200_or_503_and_the_version_stays_up(
    backends: dict[str, str], tmp_path: Path
) -> None:
    # The case: a router whose hard open-files limit is 1024, 2,000 clients at once
    # against a healthy backend that answers in 1 s. The router runs out of descriptors:
    # that is its own state, never the version's.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 6000:  # this process holds both ends of 2,000 connections, and the backend's
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    launcher = ("prlimit", "--nofile=1024:1024", sys.executable, "-m", "router")
    async with (
        router_process(one_model(backends), tmp_path, launcher=launcher) as proc,
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=True),
            timeout=aiohttp.ClientTimeout(total=60),
        ) as client,
    ):
        assert "open files 1024" in proc.banner
        answers = await asyncio.gather(
            *(_get(client, f"{proc.url}/models/m/slow?s=1") for _ in range(2000))
        )
        after = await _get(client, f"{proc.url}/models/m/echo")
        metrics = await scrape(client, proc.admin_url)
        proc.signal()
        assert await proc.wait() == 0
    statuses = Counter((status, code) for status, _, code in answers)
    assert set(statuses) <= {(200, None), (503, "overloaded")}, statuses
    assert statuses[200, None] > 0
    assert after[0] == 200
    assert metrics.value("model_router_upstream_up", model="m", version="v1") == 1
    records = requests_in(tmp_path / "routing.jsonl")
    assert len(records) == 2001
    assert Counter(r["status"] for r in records) == Counter(
        [status for status, _, _ in answers] + [200]
    )


async def test_beyond_max_connections_a_client_waits_in_the_backlog_until_one_closes(
    backends: dict[str, str], tmp_path: Path
) -> None:
    request = b"GET /models/m/echo HTTP/1.1\r\nHost: a\r\n\r\n"
    async with router_running(one_model(backends), tmp_path, max_connections=2) as r:
        assert r.router.server is not None
        host, port = r.router.server.addresses[0]
        held = [await asyncio.open_connection(host, port) for _ in range(2)]
        for reader, writer in held:  # both are accepted and served
            writer.write(request)
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        reader, writer = await asyncio.open_connection(host, port)  # the kernel's backlog
        writer.write(request)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await reader.read(1)  # not accepted: no answer, and no reset either
        held[0][1].close()
        async with asyncio.timeout(10):
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        for _, w in [*held[1:], (reader, writer)]:
            w.close()

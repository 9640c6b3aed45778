"""The upstream client (router/http/client/) against raw backends that misbehave on cue."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from router.http.client import Origin, ResponseTimeout
from router.http.client.pool import Pool
from tests.support.raw import raw_backend, read_request
from tests.support.running import router_running
from tests.support.waiting import poll


def origin(url: str) -> Origin:
    return Origin.of(urlsplit(url))


def table(url: str) -> dict[str, Any]:
    return {"m": {"versions": {"v1": {"url": url}}, "split": {"v1": 100}, "timeout_s": 2}}


async def test_connections_are_kept_alive_and_reused(tmp_path: Path) -> None:
    async def keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    async with (
        raw_backend(keep_alive) as (url, connections),
        router_running(table(url), tmp_path) as r,
        aiohttp.ClientSession() as client,
    ):
        for _ in range(10):
            async with client.post(f"{r.url}/models/m/p", data=b"x") as resp:
                assert (resp.status, await resp.read()) == (200, b"ok")
    assert len(connections) == 1


async def test_a_body_delimited_by_the_close_is_whole(tmp_path: Path) -> None:
    async def close_delimited(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
        await writer.drain()

    async with (
        raw_backend(close_delimited) as (url, _),
        router_running(table(url), tmp_path) as r,
        aiohttp.ClientSession() as client,
        client.get(f"{r.url}/models/m/p") as resp,
    ):
        assert (resp.status, await resp.read()) == (200, b"all of it")
    assert r.records()[0]["outcome"] == "ok"


async def test_a_kept_alive_connection_closed_by_the_backend_is_not_an_error(
    tmp_path: Path,
) -> None:
    """The backend closes idle connections after 50 ms: the next request goes on a new one."""

    async def short_keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await asyncio.sleep(0.05)  # then the `finally` closes it, idle

    async with (
        raw_backend(short_keep_alive) as (url, connections),
        router_running(table(url), tmp_path) as r,
        aiohttp.ClientSession() as client,
    ):
        for _ in range(3):
            async with client.post(f"{r.url}/models/m/p", data=b"x") as resp:
                assert resp.status == 200
            await asyncio.sleep(0.2)
    assert len(connections) == 3
    assert [rec["outcome"] for rec in r.records()] == ["ok"] * 3


async def test_an_answer_cut_short_is_a_502(tmp_path: Path) -> None:
    async def cut_short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
        await writer.drain()

    async with (
        raw_backend(cut_short) as (url, _),
        router_running(table(url), tmp_path) as r,
        aiohttp.ClientSession() as client,
        client.get(f"{r.url}/models/m/p") as resp,
    ):
        assert resp.status == 502
        assert (await resp.json())["error"]["code"] == "upstream_unavailable"
    (record,) = r.records()
    assert (record["status"], record["outcome"], record["version"]) == (502, "unavailable", None)


async def test_a_malformed_answer_is_a_502(tmp_path: Path) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"this is not http\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.5)

    async with (
        raw_backend(garbage) as (url, _),
        router_running(table(url), tmp_path) as r,
        aiohttp.ClientSession() as client,
        client.get(f"{r.url}/models/m/p") as resp,
    ):
        assert resp.status == 502
    (record,) = r.records()
    assert record["outcome"] == "unavailable"


async def test_interim_answers_are_skipped_and_extra_ones_never_reach_a_client(
    tmp_path: Path,
) -> None:
    """103 Early Hints before the answer is not part of it; a second answer to one request
    (a backend out of step) is dropped with its connection, never given to the next client."""

    async def odd(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await read_request(reader)
        if b"/early" in head:
            writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
                         b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")  # fmt: skip
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                         b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nSTALE")  # fmt: skip
        await writer.drain()
        await asyncio.sleep(0.3)

    async with (
        raw_backend(odd) as (url, _),
        router_running(table(url), tmp_path) as r,
        aiohttp.ClientSession() as client,
    ):
        async with client.get(f"{r.url}/models/m/early") as resp:
            assert (resp.status, resp.reason, await resp.read()) == (200, "OK", b"ok")
            assert "Link" not in resp.headers
        for _ in range(2):
            async with client.get(f"{r.url}/models/m/twice") as resp:
                assert (resp.status, await resp.read()) == (200, b"ok")
                assert resp.headers.getall("Content-Length") == ["2"]


async def test_bare_lf_answers_and_odd_reasons_pass(tmp_path: Path) -> None:
    async def lf(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write("HTTP/1.1 200 été ok\nContent-Length: 2  \n\nok".encode())
        await writer.drain()
        await asyncio.sleep(0.3)

    async with (
        raw_backend(lf) as (url, _),
        router_running(table(url), tmp_path) as r,
        aiohttp.ClientSession() as client,
        client.get(f"{r.url}/models/m/p") as resp,
    ):
        assert (resp.status, await resp.read()) == (200, b"ok")
        assert resp.reason == "été ok"


# --- deadlines: one timer for every exchange in flight ---


async def test_each_exchange_times_out_by_its_own_deadline() -> None:
    """A later exchange with a shorter deadline fails first: the pool's one timer is set
    again for it. A connection that timed out is never reused."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()  # never answers; waits for the close

    async with raw_backend(silent) as (url, connections):
        port = url
        pool = Pool()
        loop = asyncio.get_running_loop()
        started = loop.time()

        async def timed(within: float) -> float:
            with pytest.raises(ResponseTimeout):
                await pool.send(origin(port), "POST", "/", [], b"x", within)
            return loop.time() - started

        try:
            slow = asyncio.create_task(timed(3.0))
            fast = await timed(0.2)
            assert fast < 2.0  # not held back until the first exchange's deadline
            assert not slow.done()
            assert 2.0 < await slow < 10.0
        finally:
            await pool.close()
    assert len(connections) == 2


async def test_a_body_that_stalls_times_out_at_the_deadline() -> None:
    async def stalls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
        await writer.drain()
        await reader.read()

    async with raw_backend(stalls) as (url, _):
        pool = Pool()
        try:
            response = await pool.send(origin(url), "GET", "/", [], None, 0.3)
            assert response.status == 200
            with pytest.raises(ResponseTimeout):
                await response.read()
        finally:
            await pool.close()


async def test_a_connection_idle_past_the_limit_is_closed_not_reused() -> None:
    """Idle connections are swept (the limit is shortened here from 30 s to 0.2 s)."""
    closed: list[int] = []

    async def keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                await read_request(reader)
            except asyncio.IncompleteReadError:
                closed.append(1)  # the router closed it
                return
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    async with raw_backend(keep_alive) as (url, connections):
        pool = Pool(idle_s=0.2)
        try:
            for _ in range(2):  # back to back: the same connection
                response = await pool.send(origin(url), "GET", "/", [], None, 2.0)
                assert await response.read() == b"ok"
                response.release()
            assert len(connections) == 1

            async def swept() -> bool | None:
                return True if closed else None

            await poll(swept, 3.0, "the idle sweep")
            response = await pool.send(origin(url), "GET", "/", [], None, 2.0)
            assert await response.read() == b"ok"
            response.release()
            assert len(connections) == 2
        finally:
            await pool.close()

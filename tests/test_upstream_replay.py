"""Never sent twice to a version (contract section 13): a request written to a kept-alive
connection that then closes unanswered may have been acted on. It goes again on a new
connection only if its method is idempotent (RFC 9110 9.2.2) or `replay` (a model's
`retry_post`) says so, as nginx's `proxy_next_upstream` without `non_idempotent`.

The backend is a raw socket that answers the first request of each connection, keeps it
alive, reads the second request whole and closes without a word.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from router.http.client import BadResponse, Client, Origin, client_session
from router.http.client.aio import AioTransport
from tests.support.errors import router_error
from tests.support.raw import raw_backend
from tests.support.running import router_running

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def read_whole(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """A request's method and body (Content-Length framed)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head.split(b" ", 1)[0], await reader.readexactly(length)


@asynccontextmanager
async def dies_on_the_second() -> AsyncIterator[tuple[str, list[tuple[bytes, bytes]]]]:
    """The backend's URL and every (method, body) it read, in order."""
    seen: list[tuple[bytes, bytes]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_whole(reader))
        writer.write(OK)
        await writer.drain()
        try:
            seen.append(await read_whole(reader))  # read whole, then closed unanswered
        except asyncio.IncompleteReadError:  # a connection the client closed, idle
            return

    async with raw_backend(serve) as (url, _):
        yield url, seen


def table(url: str, **settings: Any) -> dict[str, Any]:
    return {"m": {"versions": {"v1": {"url": url}}, "split": {"v1": 100}, **settings}}


async def test_a_post_is_not_sent_again_after_a_kept_alive_connection_fails(
    tmp_path: Path,
) -> None:
    async with (
        dies_on_the_second() as (url, seen),
        router_running(table(url), tmp_path) as r,
        aiohttp.ClientSession() as client,
    ):
        async with client.post(f"{r.url}/models/m/p", data=b"first") as resp:
            assert resp.status == 200
        async with client.post(f"{r.url}/models/m/p", data=b"second") as resp:
            message = await router_error(resp, 502, "upstream_unavailable")
    assert seen == [(b"POST", b"first"), (b"POST", b"second")]  # the second exactly once
    assert "retry_post" in message
    assert [(rec["status"], rec["outcome"]) for rec in r.records()] == [
        (200, "ok"),
        (502, "unavailable"),
    ]


@pytest.mark.parametrize("method", ["PUT", "DELETE", "GET"])
async def test_an_idempotent_request_is_sent_again_on_a_new_connection(
    tmp_path: Path, method: str
) -> None:
    async with (
        dies_on_the_second() as (url, seen),
        router_running(table(url), tmp_path) as r,
        aiohttp.ClientSession() as client,
    ):
        for body in (b"first", b"second"):
            async with client.request(method, f"{r.url}/models/m/p", data=body) as resp:
                assert (resp.status, await resp.read()) == (200, b"ok")
    verb = method.encode()
    assert seen == [(verb, b"first"), (verb, b"second"), (verb, b"second")]


@pytest.mark.parametrize("replay", [False, True])
async def test_the_pool_replays_a_post_only_when_told(replay: bool) -> None:
    async with dies_on_the_second() as (url, seen), client_session() as session:
        client = Client(session)
        target = Origin.of(urlsplit(url))
        try:
            first = await client.send(target, "POST", "/p", [], b"first", 2.0)
            assert await first.read() == b"ok"
            first.release()
            if replay:
                again = await client.send(target, "POST", "/p", [], b"second", 2.0, replay=True)
                assert await again.read() == b"ok"
                again.release()
            else:
                with pytest.raises(BadResponse, match="retry_post"):
                    await client.send(target, "POST", "/p", [], b"second", 2.0)
        finally:
            await client.close()
    assert seen[1:] == [(b"POST", b"second")] * (2 if replay else 1)


@pytest.mark.parametrize("replay", [False, True])
async def test_the_aiohttp_transport_replays_a_post_only_when_told(replay: bool) -> None:
    """The transport of https and streamed uploads: aiohttp itself sends only idempotent
    requests again; `replay` lets a POST held whole go again too."""
    async with dies_on_the_second() as (url, seen), client_session() as session:
        aio = AioTransport(session)
        target = Origin.of(urlsplit(url))
        first = await aio.send(target, "POST", "/p", [], b"first", 2.0)
        assert await first.read() == b"ok"
        first.release()
        if replay:
            again = await aio.send(target, "POST", "/p", [], b"second", 2.0, replay=True)
            assert await again.read() == b"ok"
            again.release()
        else:
            with pytest.raises(BadResponse):
                await aio.send(target, "POST", "/p", [], b"second", 2.0)
    assert seen[1:] == [(b"POST", b"second")] * (2 if replay else 1)

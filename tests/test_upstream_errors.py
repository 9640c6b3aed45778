"""The upstream client's one error tree: both transports (the lean pool, and aiohttp for
streamed uploads, HEAD and https) fail the same way on the same misbehaving backends, and
an error of a streamed body's own source comes back as it was raised."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit

import pytest

from router.http.client import (
    BadResponse,
    Client,
    ConnectFailed,
    Origin,
    ResponseTimeout,
    UpstreamError,
    client_session,
)
from tests.support.raw import Handler, raw_backend, read_request
from tests.support.running import dead_url


async def _garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.write(b"this is not http\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(0.5)


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    await reader.read()  # never answers


async def _hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)  # then closes without a word


async def _ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        if b"chunked" in head.lower():
            await reader.readuntil(b"0\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()


async def _pieces() -> AsyncIterator[bytes]:
    yield b"a streamed body"


def origin(url: str) -> Origin:
    return Origin.of(urlsplit(url))


# (method, body) that make Client.send pick each transport for a plain-http origin.
TRANSPORTS: dict[str, tuple[str, Callable[[], bytes | AsyncIterator[bytes]]]] = {
    "pool": ("POST", lambda: b"x"),
    "aiohttp": ("POST", _pieces),
}


@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
@pytest.mark.parametrize(
    ("backend", "error"),
    [(_garbage, BadResponse), (_silent, ResponseTimeout), (_hang_up, BadResponse)],
    ids=["garbage", "silent", "hang-up"],
)
async def test_both_transports_raise_the_same_error(
    transport: str, backend: Handler, error: type[UpstreamError]
) -> None:
    method, body = TRANSPORTS[transport]
    async with raw_backend(backend) as (url, _), client_session() as session:
        client = Client(session)
        try:
            with pytest.raises(error):
                await client.send(origin(url), method, "/p", [], body(), 0.5)
        finally:
            await client.close()


@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
async def test_both_transports_say_connect_failed_where_nothing_listens(transport: str) -> None:
    method, body = TRANSPORTS[transport]
    async with client_session() as session:
        client = Client(session)
        try:
            with pytest.raises(ConnectFailed):
                await client.send(origin(dead_url()), method, "/p", [], body(), 2.0)
        finally:
            await client.close()


@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
async def test_both_transports_answer(transport: str) -> None:
    method, body = TRANSPORTS[transport]
    async with raw_backend(_ok) as (url, _), client_session() as session:
        client = Client(session)
        try:
            response = await client.send(origin(url), method, "/p", [], body(), 2.0)
            try:
                assert (response.status, await response.read()) == (200, b"ok")
            finally:
                response.release()
        finally:
            await client.close()


async def test_a_streamed_bodys_own_error_comes_back_as_raised() -> None:
    """The client who sends the body went away: that is the caller's to answer (499), not
    a failure of the version, so it is never translated into an UpstreamError."""

    class Gone(Exception):
        pass

    async def stops() -> AsyncIterator[bytes]:
        yield b"first piece"
        raise Gone

    async with raw_backend(_silent) as (url, _), client_session() as session:
        client = Client(session)
        try:
            with pytest.raises(Gone):
                await client.send(origin(url), "POST", "/p", [], stops(), 2.0)
        finally:
            await client.close()

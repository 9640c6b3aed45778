"""Raw HTTP/1.1 over TCP: for what an HTTP client would not send, or would tidy up first."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import pytest
from yarl import URL

# Longest wait for any answer on a raw socket: a router that hangs fails, never stalls the suite.
ANSWER_TIMEOUT_S = 5.0


def address(url: str) -> tuple[str, int]:
    """The host and port of a base URL such as `http://127.0.0.1:8080`."""
    target = URL(url)
    assert target.host is not None
    assert target.port is not None
    return target.host, target.port


async def connect(url: str) -> None:
    """Open and close one TCP connection to the server at `url`."""
    _, writer = await asyncio.wait_for(asyncio.open_connection(*address(url)), ANSWER_TIMEOUT_S)
    writer.close()
    await writer.wait_closed()


async def exchange(url: str, data: bytes, *, wait: float = 5.0) -> bytes:
    """Send raw bytes on a new connection; everything that comes back until it closes."""
    reader, writer = await asyncio.open_connection(*address(url))
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(wait):
            return await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()


async def send_raw(
    url: str, *parts: bytes, between: Callable[[], Awaitable[object]] | None = None
) -> bytes:
    """Send `parts` on a new connection, awaiting `between()` before each part after the
    first (the state the next part is meant for); all that comes back until it closes.

    A reset (the router closing on unread input) ends the answer like a close does. A
    router that neither answers nor closes within ANSWER_TIMEOUT_S fails the test.
    """
    reader, writer = await asyncio.open_connection(*address(url))
    received = bytearray()
    try:
        with contextlib.suppress(ConnectionError):
            for i, part in enumerate(parts):
                if i and between is not None:
                    await between()
                writer.write(part)
                await writer.drain()
        try:
            async with asyncio.timeout(ANSWER_TIMEOUT_S):
                with contextlib.suppress(ConnectionError):
                    while chunk := await reader.read(65536):
                        received += chunk
        except TimeoutError:
            pytest.fail(
                f"no answer and no close within {ANSWER_TIMEOUT_S:g} s; got {bytes(received)!r}"
            )
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return bytes(received)

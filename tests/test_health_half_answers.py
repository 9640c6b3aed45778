"""Passive health counts an answer cut off after its head (contract section 13): a backend
that sends its status line and headers, then resets or stalls, is a failing version, and is
marked down after `outlier.failures` such answers in a row, as if it had not answered."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from tests.support.raw import Handler, raw_backend, read_request
from tests.support.running import router_running


async def _head_then_reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A chunked answer's head and a first piece, then the connection dropped."""
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    await writer.drain()
    writer.transport.abort()


async def _head_then_short_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A Content-Length of 100 and 10 bytes of it, then the connection dropped."""
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
    await writer.drain()
    writer.transport.abort()


async def _head_then_stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A chunked answer's head, then nothing: the version's timeout_s runs out."""
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    await writer.drain()
    await reader.read()


async def broken(session: aiohttp.ClientSession, url: str) -> bool:
    """Whether the answer came broken: cut off (streamed), or a 502 saying the version broke
    off its answer (read whole, so the router could still answer itself)."""
    try:
        async with session.get(url) as resp:
            body = await resp.read()
    except aiohttp.ClientPayloadError:
        return True
    return resp.status == 502 and b"broke off its answer" in body


@pytest.mark.parametrize("handler", [_head_then_reset, _head_then_short_body, _head_then_stall])
async def test_answers_cut_off_after_their_head_mark_the_version_down(
    tmp_path: Path, handler: Handler
) -> None:
    async with raw_backend(handler) as (url, _):
        models = {
            "m": {
                "versions": {"v1": {"url": url, "timeout_s": 0.5}},
                "split": {"v1": 100},
                "outlier": {"failures": 2, "cooloff_s": 60},
            }
        }
        async with router_running(models, tmp_path) as running, aiohttp.ClientSession() as s:
            for _ in range(2):
                assert await broken(s, f"{running.url}/models/m/x")
            # Two failures in a row: the version is down, and the router says so itself.
            async with s.get(f"{running.url}/models/m/x") as resp:
                assert resp.status == 502
                assert resp.headers["X-Router-Error"] == "upstream_unavailable"
                assert "down after failures" in (await resp.json())["error"]["message"]

"""The request-body policy: read small bodies whole, stream the rest, within limits.

Bodies up to BUFFER_BYTES are read whole before forwarding: one write each way, and a
request that can be sent again to the fallback. A chunked body is read whole too if it ends
within BUFFER_BYTES (`server.request_buffering`, on by default, as nginx's
`proxy_request_buffering`), so that a body whose framing turns out broken never reaches a
backend. Larger bodies are streamed, never held whole: the router keeps bodies in memory
(nginx spills them to temporary files), and max_in_flight requests of max_body_mb each
would be gigabytes (docs/behaviour.md has the trade-off).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

import orjson

from router.config.model import ServerSettings
from router.errors import RouterError
from router.http.body import BadBody, Body
from router.http.request import Request

BUFFER_BYTES: Final = 1024 * 1024
# What goes to a version: a body held whole, a stream, or none.
Payload: TypeAlias = bytes | AsyncIterator[bytes] | None


class ClientGone(Exception):
    """The client went away while its body was being read."""


@dataclass(slots=True)
class RequestBody:
    """The request body: whole (`data` is bytes) or a stream read on demand."""

    data: bytes | None
    stream: Body | None = None
    limit: int = 0
    timeout: float = 0.0  # body_timeout_s: the longest wait for each piece from the client
    consumed: bool = False  # a byte was read from the client: it can't be sent again
    client_gone: bool = False  # a whole body the client hung up in the middle of
    head: bytes = b""  # read while buffering, before the body turned out too large to hold

    @property
    def resendable(self) -> bool:
        return self.stream is None or not self.consumed

    def payload(self) -> Payload:
        return self.data if self.stream is None else self.chunks()

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The body as the client sends it, each piece within body_timeout_s, the whole
        within max_body_mb."""
        assert self.stream is not None
        total = len(self.head)
        if self.head:
            yield self.head
        while True:
            try:
                async with asyncio.timeout(self.timeout):
                    chunk = await self.stream.readany()
            except ConnectionError:
                raise ClientGone from None
            except BadBody as exc:
                raise RouterError("bad_body", malformed(exc)) from None
            except TimeoutError:
                raise RouterError("body_timeout", slow_body(self.timeout)) from None
            if not chunk:
                return
            total += len(chunk)
            self.consumed = True
            if total > self.limit:
                raise RouterError("body_too_large", too_large(self.limit))
            yield chunk


async def read_body(
    request: Request, settings: ServerSettings, *, whole: bool = False
) -> RequestBody:
    """The body as it will be forwarded; RouterError if it is refused. `whole` holds it
    whole up to max_body_mb, for a protocol that routes by what the body says (OpenAI)."""
    limit = settings.max_body_bytes
    length = request.content_length
    if length is not None and length > limit:
        raise RouterError("body_too_large", too_large(limit))
    if not request.body_exists:
        return RequestBody(None)
    timeout = settings.body_timeout_s
    request.send_continue()
    stream = RequestBody(None, stream=request.content, limit=limit, timeout=timeout)
    if whole and (length is None or length > BUFFER_BYTES):
        return await _buffered(stream, limit)
    if length is None and settings.request_buffering:
        return await _buffered(stream, BUFFER_BYTES)
    if length is None or length > BUFFER_BYTES:
        return stream
    try:
        # Small bodies have usually arrived with the headers: take them at once.
        ready = request.content.read_nowait(length)
        if len(ready) == length:
            return RequestBody(ready)
        async with asyncio.timeout(timeout):
            return RequestBody(ready + await request.content.readexactly(length - len(ready)))
    except (ConnectionError, asyncio.IncompleteReadError):
        return RequestBody(None, client_gone=True)
    except BadBody as exc:
        raise RouterError("bad_body", malformed(exc)) from exc
    except TimeoutError:
        raise RouterError("body_timeout", slow_body(timeout)) from None


async def read_whole(request: Request, limit: int, piece_s: float) -> RequestBody:
    """A body the router reads itself (feedback): whole, each piece within `piece_s` (408
    `body_timeout`), at most `limit` bytes (413 `body_too_large`)."""
    if not request.body_exists:
        return RequestBody(b"")
    request.send_continue()
    return await _buffered(
        RequestBody(None, stream=request.content, limit=limit, timeout=piece_s), limit
    )


async def _buffered(stream: RequestBody, most: int) -> RequestBody:
    """A body read whole if it ends within `most` bytes, else streamed on from what was
    read."""
    pieces: list[bytes] = []
    total = 0
    try:
        async with aclosing(stream.chunks()) as chunks:  # a second one streams the rest
            async for chunk in chunks:
                pieces.append(chunk)
                total += len(chunk)
                if total > most:
                    stream.head = b"".join(pieces)
                    return stream
    except ClientGone:
        return RequestBody(None, client_gone=True)
    return RequestBody(b"".join(pieces))


def malformed(exc: BaseException) -> str:
    return f"the request body is malformed: {exc}"


def too_large(limit: int) -> str:
    return f"the request body is larger than {limit / 1024 / 1024:g} MiB (server.max_body_mb)"


def slow_body(timeout: float) -> str:
    return f"the request body stalled for {timeout:g} s (server.body_timeout_s)"


def body_fields(body: RequestBody | None) -> dict[str, Any] | None:
    """The top-level fields of a JSON object body held whole, up to BUFFER_BYTES (where a
    `{body: NAME}` user id is read from); None for any other body (contract section 11)."""
    if body is None or body.data is None or len(body.data) > BUFFER_BYTES:
        return None
    try:
        fields = orjson.loads(body.data)
    except orjson.JSONDecodeError:
        return None
    return fields if isinstance(fields, dict) else None

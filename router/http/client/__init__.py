"""Upstream transports behind one `send(...) -> UpstreamResponse` and one error tree.

`Client.send` takes the lean pool (`pool.py`) for a body held whole to a plain-http
version, the common case, and aiohttp (`aio.py`) for streamed uploads, HEAD and https.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Awaitable, Iterable

import aiohttp

from router.http.client.aio import AioTransport, client_session
from router.http.client.errors import (
    BadResponse,
    ConnectFailed,
    ConnectTimeout,
    LocalShortage,
    ResponseTimeout,
    UpstreamError,
)
from router.http.client.interface import UpstreamResponse
from router.http.client.pool import Pool
from router.http.origin import Origin

__all__ = [
    "BadResponse",
    "Client",
    "ConnectFailed",
    "ConnectTimeout",
    "LocalShortage",
    "Origin",
    "ResponseTimeout",
    "UpstreamError",
    "UpstreamResponse",
    "client_session",
]


class Client:
    """Both transports of a process: `session` is its one aiohttp `ClientSession`."""

    def __init__(self, session: aiohttp.ClientSession, pool: Pool | None = None) -> None:
        self.session = session
        self.pool = pool or Pool()
        self._aio = AioTransport(session)

    def send(
        self,
        origin: Origin,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]],
        body: bytes | AsyncIterable[bytes] | None,
        timeout_s: float,
        *,
        replay: bool = False,
    ) -> Awaitable[UpstreamResponse]:
        """Send a request to `origin` + `target`; returns once the answer's head is in.

        Raises one of the `UpstreamError`s; an error raised by a streamed `body` comes
        through as it was raised. The answer must start within `timeout_s` of the request
        (of its last piece, for a streamed body). Returns the chosen transport's coroutine
        itself (no coroutine of its own on the hot path).

        A request whose bytes may have reached the backend is sent again (once, on a new
        connection, after a kept-alive one closed unanswered) only if its method is
        idempotent (RFC 9110 9.2.2) or `replay` is True (a model's `retry_post`): a POST
        may have been acted on (contract section 13).
        """
        lean = origin.scheme == "http" and method != "HEAD"
        if lean and (body is None or isinstance(body, bytes)):
            return self.pool.send(origin, method, target, headers, body, timeout_s, replay=replay)
        return self._aio.send(origin, method, target, headers, body, timeout_s, replay=replay)

    async def close(self) -> None:
        await self.pool.close()

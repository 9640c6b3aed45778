"""The upstream transport for what the lean pool does not carry: streamed uploads, HEAD
and https, on the process's one aiohttp `ClientSession`. aiohttp's errors are translated
into the one error tree here (`_translated`), as httpx's `map_httpcore_exceptions` does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Iterable

import aiohttp
from yarl import URL

from router.http.client.errors import BadResponse, ConnectTimeout, ResponseTimeout, connect_error
from router.http.client.interface import IDEMPOTENT, connect_timeout
from router.http.origin import Origin


def client_session() -> aiohttp.ClientSession:
    """The one pooled, keep-alive client session of a process.

    A proxy must pass bodies and headers through untouched, so: no decompression, no
    cookie jar (one user's cookies must never reach another's request), no default
    User-Agent, Accept, Accept-Encoding or Content-Type, no proxy settings from the
    environment.
    """
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=60, keepalive_timeout=30),
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        trust_env=False,
        read_bufsize=2**18,
        timeout=aiohttp.ClientTimeout(total=None),
    )


class _Upload:
    """A streamed request body, timed as nginx times one: while the router waits on its
    client for the next piece, the version's timeout_s stands still; while the version
    takes a piece, and once it has them all, it runs (proxy_send_timeout, then
    proxy_read_timeout). A slow client never makes a version time out. An error of the
    body's source is kept, to reach the caller as it was raised."""

    def __init__(self, source: AsyncIterable[bytes], timeout_s: float) -> None:
        self.source = source
        self.timeout_s = timeout_s
        self.deadline: asyncio.Timeout | None = None
        self.answered = False
        self.failed: BaseException | None = None

    async def pieces(self) -> AsyncIterator[bytes]:
        source = aiter(self.source)
        while True:
            self._clock(None)
            try:
                chunk = await anext(source)
            except StopAsyncIteration:
                self._clock(self.timeout_s)
                return
            except BaseException as exc:
                self.failed = exc
                raise
            self._clock(self.timeout_s)
            yield chunk

    def _clock(self, seconds: float | None) -> None:
        if self.deadline is not None and not self.answered:
            when = None if seconds is None else asyncio.get_running_loop().time() + seconds
            self.deadline.reschedule(when)


class AioResponse:
    """An `UpstreamResponse` read from aiohttp's `ClientResponse`."""

    def __init__(self, response: aiohttp.ClientResponse, timeout_s: float) -> None:
        self.status = response.status
        self.reason = response.reason or ""
        self.headers = response.headers
        self.content_length = response.content_length
        self._response = response
        self._timeout_s = timeout_s

    async def read(self) -> bytes:
        try:
            async with asyncio.timeout(self._timeout_s):
                return await self._response.read()
        except _FAILURES as exc:
            raise _translated(exc) from exc

    async def chunks(self) -> AsyncIterator[bytes]:
        content = self._response.content
        while True:
            try:
                async with asyncio.timeout(self._timeout_s):  # for each piece
                    chunk = await content.readany()
            except _FAILURES as exc:
                raise _translated(exc) from exc
            if not chunk:
                return
            yield chunk

    def release(self) -> None:
        self._response.release()


class AioTransport:
    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def send(
        self,
        origin: Origin,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]],
        body: bytes | AsyncIterable[bytes] | None,
        timeout_s: float,
        *,
        replay: bool = False,
    ) -> AioResponse:
        """aiohttp sends an idempotent request again itself when a kept-alive connection
        fails; `replay` extends that to any method, for a body held whole."""
        upload = _Upload(body, timeout_s) if isinstance(body, AsyncIterable) else None
        again = replay and upload is None and method not in IDEMPOTENT
        # The connect has a timeout of its own; the waits for the answer one asyncio
        # deadline, rather than aiohttp's `sock_read`, which re-arms a timer on every read
        # and cost 15% of the throughput in the profile.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout(timeout_s))
        try:
            async with asyncio.timeout(timeout_s) as deadline:
                if upload is not None:
                    upload.deadline = deadline
                url = URL(origin.url(target), encoded=True)
                data = upload.pieces() if upload is not None else body
                response = await self._request(method, url, list(headers), data, timeout, again)
                if upload is not None:
                    upload.answered = True
        except _FAILURES as exc:
            if upload is not None and upload.failed is not None:
                raise upload.failed from None  # the body's own failure, as it was raised
            raise _translated(exc) from exc
        return AioResponse(response, timeout_s)

    async def _request(
        self,
        method: str,
        url: URL,
        headers: list[tuple[str, str]],
        data: bytes | AsyncIterable[bytes] | None,
        waits: aiohttp.ClientTimeout,
        again: bool,
    ) -> aiohttp.ClientResponse:
        """The request, sent once more (if `again`) when the connection failed after the
        connect: a failed connect reached nothing, and the fallback takes it from there."""
        while True:
            try:
                return await self.session.request(
                    method, url, headers=headers, data=data, timeout=waits, allow_redirects=False
                )
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                if not again or isinstance(exc, aiohttp.ClientConnectorError):
                    raise
                again = False


# What aiohttp and asyncio raise when an exchange fails; `_translated` maps each.
_FAILURES = (aiohttp.ClientError, OSError, TimeoutError)


def _translated(exc: BaseException) -> Exception:
    """aiohttp's and asyncio's failures as the one error tree."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return ConnectTimeout(f"no connection in time: {exc}")
    if isinstance(exc, TimeoutError):
        return ResponseTimeout("no answer within timeout_s")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return connect_error(exc.os_error)
    return BadResponse(str(exc) or type(exc).__name__)

"""The version's answer on its way to the client: read whole when small (and then its
`log_response` fields picked), streamed otherwise; a failure after the status line has
gone out can only break the connection."""

from __future__ import annotations

from typing import Any, Final

import orjson

from router.config import pointer
from router.config.model import Model, Version
from router.config.pointer import Pick
from router.errors import RouterError
from router.http.client import ResponseTimeout, UpstreamError, UpstreamResponse
from router.http.request import Request
from router.http.response import Response, StreamResponse
from router.observe.record import CLIENT_CLOSED, Exchange, ms_since, outcome_of
from router.proxy.body import BUFFER_BYTES
from router.proxy.headers import downstream_headers, lifecycle_headers

# `log_response` looks into JSON answers up to this size only.
LOG_RESPONSE_BYTES: Final = 64 * 1024


async def relay(
    request: Request,
    model: Model,
    version: Version,
    upstream: UpstreamResponse,
    sent: float,
    ex: Exchange,
) -> StreamResponse:
    status = upstream.status
    ex.status = status
    ex.outcome = outcome_of(status)
    headers = downstream_headers(
        upstream.headers,
        upstream.headers.items(),
        version=version.name,
        request_id=ex.request_id,
        extra=lifecycle_headers(model.name, version),
    )
    length = upstream.content_length
    if request.method != "HEAD" and (length is None or length > BUFFER_BYTES):
        return await _stream(request, model, upstream, headers, sent, ex)
    try:
        data = await upstream.read()
    except UpstreamError as exc:
        ex.upstream_ms = ms_since(sent)
        if isinstance(exc, ResponseTimeout):
            ex.outcome = "timeout"
            raise upstream_timeout(version) from exc
        ex.outcome = "unavailable"
        message = f"version '{version.name}' broke off its answer: {exc}"
        raise RouterError("upstream_unavailable", message) from exc
    ex.upstream_ms = ms_since(sent)
    if model.picks:
        ex.response = pick(data, model.picks)
    return Response(status, reason=upstream.reason, headers=headers, body=data)


async def _stream(
    request: Request,
    model: Model,
    upstream: UpstreamResponse,
    headers: list[tuple[str, str]],
    sent: float,
    ex: Exchange,
) -> StreamResponse:
    headers.append(("traceresponse", ex.trace.response()))
    response = StreamResponse(upstream.status, reason=upstream.reason, headers=headers)
    captured: list[bytes] | None = [] if model.picks else None
    size = 0
    try:
        await response.prepare(request)
        async for chunk in upstream.chunks():  # each piece has timeout_s; a slow client not
            await response.write(chunk)
            size += len(chunk)
            if captured is not None and size <= LOG_RESPONSE_BYTES:
                captured.append(chunk)
            elif captured is not None:
                captured = None
        ex.upstream_ms = ms_since(sent)
        await response.write_eof()
    except ConnectionResetError:
        ex.upstream_ms = ms_since(sent)
        ex.status, ex.outcome = CLIENT_CLOSED, "client_closed"
        return response
    except UpstreamError as exc:
        # The status line is out already: all that is left is to break the connection, so
        # the client sees a truncated answer, never a complete one.
        ex.upstream_ms = ms_since(sent)
        ex.outcome = "timeout" if isinstance(exc, ResponseTimeout) else "unavailable"
        request.close_connection()
        return response
    if captured is not None:
        ex.response = pick(b"".join(captured), model.picks)
    return response


def upstream_timeout(version: Version) -> RouterError:
    return RouterError(
        "upstream_timeout",
        f"version '{version.name}' did not answer within {version.timeout_s:g} s",
    )


def pick(data: bytes, picks: tuple[Pick, ...]) -> dict[str, Any] | None:
    """What a record copies from a JSON answer of at most LOG_RESPONSE_BYTES: the
    `log_response` fields and pointers, and the prediction (contract section 11)."""
    if len(data) > LOG_RESPONSE_BYTES:
        return None
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(parsed, dict | list):
        return None
    return pointer.pick(parsed, picks)

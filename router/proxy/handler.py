"""The request handler: choose a version, forward, stream, log (contract sections 3 to 5).

Every request that reaches `Proxy.handle` leaves exactly one `request` record, written in
a `finally` so that rejected, timed-out, cancelled and client-gone requests count too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final
from urllib.parse import unquote

import aiohttp
import orjson
from structlog.typing import FilteringBoundLogger
from yarl import URL

from router.config.holder import TableHolder
from router.config.model import Model, Table, Version
from router.errors import ErrorCode, RouterError
from router.http.body import BadBody, Body
from router.http.client import pool as upstream_pool
from router.http.clock import now_rfc3339
from router.http.request import Request, new_request_id
from router.http.response import Response, StreamResponse
from router.http.text import printable
from router.observe.health import HealthBook
from router.observe.log import Pseudonymizer
from router.observe.metrics import Metrics
from router.observe.record import Exchange, Outcome
from router.proxy.headers import downstream_headers, request_id, upstream_headers
from router.routing.choose import choose

# Bodies up to this size are read whole before forwarding: one write each way, and a
# request that can be sent again to the fallback. Larger ones are streamed.
BUFFER_BYTES: Final = 1024 * 1024
# `log_response` looks into JSON answers up to this size only.
LOG_RESPONSE_BYTES: Final = 64 * 1024
FEEDBACK_BYTES: Final = 1024 * 1024
CONNECT_S: Final = 5.0
CLIENT_CLOSED: Final = 499  # nginx's status for a client that went away first
_DOTS: Final = (".", "..")


@dataclass(slots=True)
class _Body:
    """The request body: whole (`data` is bytes) or a stream read on demand."""

    data: bytes | None
    stream: Body | None = None
    limit: int = 0
    timeout: float = 0.0  # body_timeout_s: the longest wait for each piece from the client
    consumed: bool = False  # a byte was read from the client: it can't be sent again
    client_gone: bool = False
    failed: RouterError | None = None  # why the stream stopped, if it was the body's fault
    # The backend's deadline while a streamed body goes to it (see _chunks).
    deadline: asyncio.Timeout | None = None
    within: float = 0.0
    answered: bool = False

    @property
    def resendable(self) -> bool:
        return self.stream is None or not self.consumed

    def payload(self) -> bytes | AsyncIterator[bytes] | None:
        return self.data if self.stream is None else self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        """The body as the client sends it. While the router waits on the client, only
        body_timeout_s applies; while the backend takes a piece, and once it has all of
        them, its timeout_s does (nginx's proxy_send_timeout, then proxy_read_timeout). A
        slow client never makes a backend time out."""
        assert self.stream is not None
        total = 0
        while True:
            self._backend_clock(None)
            try:
                async with asyncio.timeout(self.timeout):
                    chunk = await self.stream.readany()
            except ConnectionError:
                self.client_gone = True
                raise
            except BadBody as exc:
                raise self._fail("bad_body", _malformed(exc)) from None
            except TimeoutError:
                raise self._fail("body_timeout", _slow_body(self.timeout)) from None
            self._backend_clock(self.within)
            if not chunk:
                return
            total += len(chunk)
            self.consumed = True
            if total > self.limit:
                raise self._fail("body_too_large", _too_large(self.limit))
            yield chunk

    def _fail(self, code: ErrorCode, message: str) -> RouterError:
        self.failed = RouterError(code, message)
        return self.failed

    def _backend_clock(self, seconds: float | None) -> None:
        if self.deadline is not None and not self.answered:
            when = None if seconds is None else asyncio.get_running_loop().time() + seconds
            self.deadline.reschedule(when)


class _Unreachable(Exception):
    """The version could not be reached; the request may go to the fallback."""

    def __init__(self, error: RouterError, outcome: Outcome) -> None:
        super().__init__(error.message)
        self.error = error
        self.outcome = outcome


def _connect_s(seconds: float) -> float:
    return min(seconds / 2, CONNECT_S)


@lru_cache(maxsize=64)
def _connect_timeout(seconds: float) -> aiohttp.ClientTimeout:
    """A connect slower than half the timeout (5 s at most) counts as unreachable.

    The waits for the answer (`timeout_s`) are one asyncio deadline per request, moved
    forward for each chunk, rather than aiohttp's `sock_read`, which re-arms a timer on
    every read and cost 15% of the throughput in the profile.
    """
    return aiohttp.ClientTimeout(total=None, sock_connect=_connect_s(seconds))


class Proxy:
    """The public port's one handler. `session` is set by the app's cleanup context."""

    session: aiohttp.ClientSession
    pool: upstream_pool.Pool

    def __init__(
        self,
        tables: TableHolder,
        log: FilteringBoundLogger,
        pseudonymize: Pseudonymizer,
        metrics: Metrics,
        health: HealthBook,
    ) -> None:
        self.tables = tables
        self.metrics = metrics
        self._cutting_off = False
        self.health = health
        self._no_user = pseudonymize.fields(None)  # `user: null`, or nothing with `omit`
        self.log = log
        self.pseudonymize = pseudonymize

    def cut_off(self) -> None:
        """drain_s is over: the server cancels what is still running (each logs its record
        as cut off), and requests that come up after this get 503 at once."""
        self._cutting_off = True

    def _exchange(self, table: Table, request: Request | None) -> Exchange:
        """The record of a request, begun; without one (refused before it was parsed
        whole), its method and path are unknown."""
        if request is None:
            return Exchange(now_rfc3339(), time.perf_counter(), new_request_id(), None, None,
                            table.digest, user=self._no_user)  # fmt: skip
        return Exchange(
            now_rfc3339(),
            time.perf_counter(),
            request_id(request.headers.get("X-Request-ID")),
            request.method,
            printable(origin_form(request.raw_path).partition("?")[0]),
            table.digest,
            user=self._no_user,
        )

    async def handle(self, request: Request) -> StreamResponse:
        table = self.tables.current  # read once: this request keeps this table
        ex = self._exchange(table, request)
        response: StreamResponse | None = None
        try:
            if self._cutting_off:  # a pipelined request that comes up after the cut-off
                ex.outcome = "unavailable"
                raise RouterError("shutting_down", _SHUTTING_DOWN)
            response = await self._dispatch(request, table, ex)
        except RouterError as error:
            response = self._error(error, ex)
        except asyncio.CancelledError:
            if not self._cutting_off:
                # The client went away (the server cancels the handler then): stop waiting on
                # the backend, as nginx does, and say so in the record.
                ex.status, ex.outcome = CLIENT_CLOSED, "client_closed"
                raise
            if request.responded:  # drain_s ran out mid-answer: nothing to add
                ex.outcome = "unavailable"
                raise
            # drain_s ran out before the answer: tell the client, rather than just hanging up.
            task = request.task
            assert task is not None
            task.uncancel()
            ex.outcome = "unavailable"
            response = self._error(RouterError("shutting_down", _SHUTTING_DOWN), ex)
        finally:
            try:
                if response is not None and not response.prepared:
                    await self._send(request, response, ex)
            finally:
                if not ex.feedback:
                    self._record(ex)
        return response

    def refused(self, status: int) -> str:
        """Log a request the server refused before routing (junk, an oversized head);
        returns the id its error answer carries."""
        ex = self._exchange(self.tables.current, None)
        ex.status = status
        self._record(ex)
        return ex.request_id

    def dropped(self, request: Request, by_router: bool) -> None:
        """Log a request received whole but never started: its connection closed first,
        by the client (499) or by the router (503: the shutdown, an answer that the close
        ends, a failure)."""
        ex = self._exchange(self.tables.current, request)
        if by_router or self._cutting_off:
            ex.status, ex.outcome = 503, "unavailable"
        else:
            ex.status, ex.outcome = CLIENT_CLOSED, "client_closed"
        self._record(ex)

    def _record(self, ex: Exchange) -> None:
        record = ex.record()
        self.log.info("request", **record)
        # A timeout or a failure counts against the version that was tried.
        version = ex.version or ex.assigned_version
        self.metrics.observe(ex.model, version, ex.outcome, record["latency_ms"] / 1000)

    # --- routing ---

    async def _dispatch(self, request: Request, table: Table, ex: Exchange) -> StreamResponse:
        raw_path, has_query, query = origin_form(request.raw_path).partition("?")
        segments = raw_path.split("/")
        if len(segments) >= 3 and segments[1] == "models" and segments[2] in table.models:
            ex.model = segments[2]
        if any(s in _DOTS or ("%" in s and unquote(s) in _DOTS) for s in segments):
            raise RouterError("bad_path", f"path '{raw_path}' has '.' or '..' segments")
        if len(segments) < 3 or segments[0] != "":
            raise _not_found(raw_path)
        if segments[1] == "feedback" and len(segments) == 3:
            return await self._feedback(request, table, unquote(segments[2]), ex)
        if segments[1] != "models":
            raise _not_found(raw_path)
        model = self._model(table, unquote(segments[2]))
        ex.model = model.name
        rest = segments[3:]
        pinned = None
        if len(rest) >= 2 and rest[0] == "versions":
            pinned, rest = unquote(rest[1]), rest[2:]
        choice = choose(model, request, pinned)
        ex.assigned_version, ex.assigned_by, ex.bucket = (
            choice.version,
            choice.assigned_by,
            choice.bucket,
        )
        ex.user = self.pseudonymize.fields(choice.user_id)
        target = "/" + "/".join(rest) + has_query + query
        body = await self._read_body(request, table)
        return await self._forward(request, table, model, choice.version, target, body, ex)

    @staticmethod
    def _model(table: Table, name: str) -> Model:
        model = table.models.get(name)
        if model is None:
            known = ", ".join(table.models)
            raise RouterError("unknown_model", f"no model '{name}'; models: {known}")
        return model

    async def _read_body(self, request: Request, table: Table) -> _Body:
        limit = table.server.max_body_bytes
        length = request.content_length
        if length is not None and length > limit:
            raise RouterError("body_too_large", _too_large(limit))
        if not request.body_exists:
            return _Body(None)
        timeout = table.server.body_timeout_s
        request.send_continue()
        if length is not None and length <= BUFFER_BYTES:
            try:
                # Small bodies have usually arrived with the headers: take them at once.
                ready = request.content.read_nowait(length)
                if len(ready) == length:
                    return _Body(ready)
                async with asyncio.timeout(timeout):
                    return _Body(ready + await request.content.readexactly(length - len(ready)))
            except (ConnectionError, asyncio.IncompleteReadError):
                return _Body(None, client_gone=True)
            except BadBody as exc:
                raise RouterError("bad_body", _malformed(exc)) from exc
            except TimeoutError:
                raise RouterError("body_timeout", _slow_body(timeout)) from None
        return _Body(None, stream=request.content, limit=limit, timeout=timeout)

    async def _forward(
        self,
        request: Request,
        table: Table,
        model: Model,
        name: str,
        target: str,
        body: _Body,
        ex: Exchange,
    ) -> StreamResponse:
        if body.client_gone:
            ex.status, ex.outcome = CLIENT_CLOSED, "client_closed"
            return Response(CLIENT_CLOSED)
        version = model.versions[name]
        try:
            return await self._attempt(request, model, version, target, body, ex)
        except _Unreachable as failure:
            fallback = model.fallback
            # A client that named its version (a pinned path, X-Model-Version) relies on
            # that version's response format: another version's answer would break it.
            explicit = ex.assigned_by in ("pinned", "header")
            if fallback is None or fallback == name or not body.resendable or explicit:
                ex.outcome = failure.outcome
                raise failure.error from None
        try:
            return await self._attempt(request, model, model.versions[fallback], target, body, ex)
        except _Unreachable as failure:
            ex.outcome = failure.outcome
            raise failure.error from None

    async def _attempt(
        self,
        request: Request,
        model: Model,
        version: Version,
        target: str,
        body: _Body,
        ex: Exchange,
    ) -> StreamResponse:
        ex.version = version.name
        key = (model.name, version.name, version.url)
        if not self.health.available(key):
            message = f"version '{version.name}' of model '{model.name}' is down after failures"
            raise _Unreachable(RouterError("upstream_unavailable", message), "unavailable")
        headers = upstream_headers(
            request.headers,
            request.headers.items(),
            remote=request.remote,
            scheme=request.scheme,
            version=version.name,
            request_id=ex.request_id,
        )
        sent = time.perf_counter()
        try:
            # One deadline for the whole exchange: the answer must start within timeout_s
            # and, read whole, end within it; a streamed one has a deadline per chunk.
            if body.stream is None and version.plain_http and request.method != "HEAD":
                # The lean path, for a body held whole to a plain-http version; its pool
                # keeps the deadline.
                lean = await self.pool.request(
                    version.host, version.port, request.method, version.base + target,
                    headers, body.data, _connect_s(version.timeout_s), version.timeout_s,
                )  # fmt: skip
                self.health.success(key)
                async with lean:
                    return await self._relay(request, model, version, lean, sent, ex, lean.untimed)
            async with asyncio.timeout(version.timeout_s) as deadline:
                body.deadline, body.within, body.answered = deadline, version.timeout_s, False
                upstream = await self.session.request(
                    request.method,
                    URL(version.url + target, encoded=True),
                    headers=headers,
                    data=body.payload(),
                    timeout=_connect_timeout(version.timeout_s),
                    allow_redirects=False,
                )
                body.answered = True  # the answer has begun: its own timing from here
                deadline.reschedule(asyncio.get_running_loop().time() + version.timeout_s)
                self.health.success(key)
                async with upstream:
                    return await self._relay(
                        request, model, version, upstream, sent, ex,
                        lambda: deadline.reschedule(None),
                    )  # fmt: skip
        except RouterError:
            raise  # the body grew past max_body_mb on the way
        except upstream_pool.UpstreamError as exc:
            self._failed(key, model)
            if exc.timed_out:
                raise _Unreachable(_upstream_timeout(version, exc), "timeout") from exc
            raise _unreachable(model, version, exc) from exc
        except aiohttp.ConnectionTimeoutError as exc:
            self._failed(key, model)
            raise _Unreachable(_upstream_timeout(version, exc), "timeout") from exc
        except TimeoutError as exc:
            self._failed(key, model)
            ex.upstream_ms = _ms_since(sent)
            ex.outcome = "timeout"
            raise _upstream_timeout(version, exc) from exc
        except aiohttp.ClientConnectionError as exc:
            if body.failed is not None:  # the body's fault, not the version's
                raise body.failed from None
            if body.client_gone:
                ex.status, ex.outcome = CLIENT_CLOSED, "client_closed"
                return Response(CLIENT_CLOSED)
            self._failed(key, model)
            raise _unreachable(model, version, exc) from exc
        except aiohttp.ClientError as exc:  # reached, but its answer was not HTTP we can pass on
            ex.upstream_ms, ex.outcome = _ms_since(sent), "unavailable"
            raise RouterError(
                "upstream_unavailable", f"version '{version.name}' gave a malformed answer: {exc}"
            ) from exc

    def _failed(self, key: tuple[str, str, str], model: Model) -> None:
        self.health.failure(key, model.outlier.failures, model.outlier.cooloff_s)

    async def _relay(
        self,
        request: Request,
        model: Model,
        version: Version,
        upstream: aiohttp.ClientResponse | upstream_pool.Response,
        sent: float,
        ex: Exchange,
        untimed: Callable[[], object],
    ) -> StreamResponse:
        status = upstream.status
        ex.status = status
        ex.outcome = "ok" if status < 400 else "client_error" if status < 500 else "server_error"
        headers = downstream_headers(
            upstream.headers,
            upstream.headers.items(),
            version=version.name,
            request_id=ex.request_id,
            extra=version.response_headers,
        )
        length = upstream.content_length
        if request.method == "HEAD" or (length is not None and length <= BUFFER_BYTES):
            try:
                data = await upstream.read()
            except TimeoutError as exc:
                ex.upstream_ms, ex.outcome = _ms_since(sent), "timeout"
                raise _upstream_timeout(version, exc) from exc
            except (aiohttp.ClientError, upstream_pool.UpstreamError) as exc:
                ex.upstream_ms, ex.outcome = _ms_since(sent), "unavailable"
                raise RouterError(
                    "upstream_unavailable",
                    f"version '{version.name}' broke off its answer: {exc}",
                ) from exc
            ex.upstream_ms = _ms_since(sent)
            if model.log_response:
                ex.response = _pick(data, model.log_response)
            return Response(status, reason=upstream.reason, headers=headers, body=data)
        untimed()  # streaming keeps a deadline of its own, per chunk
        return await self._stream(request, model, version, upstream, headers, sent, ex)

    async def _stream(
        self,
        request: Request,
        model: Model,
        version: Version,
        upstream: aiohttp.ClientResponse | upstream_pool.Response,
        headers: list[tuple[str, str]],
        sent: float,
        ex: Exchange,
    ) -> StreamResponse:
        response = StreamResponse(upstream.status, reason=upstream.reason, headers=headers)
        captured: list[bytes] | None = [] if model.log_response else None
        size = 0
        loop = asyncio.get_running_loop()
        try:
            await response.prepare(request)
            async with asyncio.timeout(None) as deadline:
                while True:
                    deadline.reschedule(loop.time() + version.timeout_s)  # for each chunk
                    chunk = await upstream.content.readany()
                    if not chunk:
                        break
                    deadline.reschedule(None)  # a slow client is not the backend's fault
                    await response.write(chunk)
                    size += len(chunk)
                    if captured is not None and size <= LOG_RESPONSE_BYTES:
                        captured.append(chunk)
                    elif captured is not None:
                        captured = None
            ex.upstream_ms = _ms_since(sent)
            await response.write_eof()
        except ConnectionResetError:
            ex.upstream_ms = _ms_since(sent)
            ex.status, ex.outcome = CLIENT_CLOSED, "client_closed"
            return response
        except (TimeoutError, aiohttp.ClientError, upstream_pool.UpstreamError) as exc:
            # The status line is out already: all that is left is to break the
            # connection, so the client sees a truncated answer, never a complete one.
            ex.upstream_ms = _ms_since(sent)
            ex.outcome = "timeout" if isinstance(exc, TimeoutError) else "unavailable"
            request.close_connection()
            return response
        if captured is not None:
            ex.response = _pick(b"".join(captured), model.log_response)
        return response

    # --- the router's own answers ---

    async def _feedback(
        self, request: Request, table: Table, name: str, ex: Exchange
    ) -> StreamResponse:
        """Ground truth for an earlier request: logged as a `feedback` event only."""
        if request.method != "POST":
            raise RouterError("not_found", f"feedback is sent with POST /feedback/{name}")
        model = self._model(table, name)
        ex.model = model.name
        length = request.content_length
        if length is not None and length > FEEDBACK_BYTES:
            raise RouterError("body_too_large", _too_large(FEEDBACK_BYTES))
        try:
            request.send_continue()
            data = await request.content.read(FEEDBACK_BYTES + 1)
            payload = orjson.loads(data)
        except ConnectionError:
            ex.status, ex.outcome = CLIENT_CLOSED, "client_closed"
            return Response(CLIENT_CLOSED)
        except BadBody as exc:
            raise RouterError("bad_body", _malformed(exc)) from exc
        except orjson.JSONDecodeError as exc:
            raise RouterError("bad_feedback", f"the body is not JSON: {exc}") from exc
        if (
            not isinstance(payload, dict)
            or not isinstance(payload.get("request_id"), str)
            or not payload["request_id"]
            or "label" not in payload
        ):
            raise RouterError(
                "bad_feedback",
                'expected {"request_id": "<id of the request>", "label": <the true answer>}',
            )
        self.log.info(
            "feedback", model=model.name, request_id=payload["request_id"], label=payload["label"]
        )
        ex.feedback = True
        return Response(202, body=b'{"accepted":true}', content_type="application/json")

    @staticmethod
    def _error(error: RouterError, ex: Exchange) -> Response:
        """The contract's JSON error; the outcome was set where the failure was seen."""
        ex.status = error.status
        ex.version = None  # no version answered (so no X-Model-Version): the router did
        headers = {"X-Request-ID": ex.request_id}
        response = Response(
            error.status,
            body=error.body(ex.request_id),
            content_type="application/json",
            headers=headers,
        )
        if error.code in ("body_timeout", "bad_body"):
            response.force_close()  # what is left of that body cannot be trusted
        return response

    async def _send(self, request: Request, response: StreamResponse, ex: Exchange) -> None:
        """Write a whole answer now, so that a client gone by then is seen and logged."""
        try:
            await response.prepare(request)
            await response.write_eof()
        except ConnectionResetError:
            ex.status, ex.outcome = CLIENT_CLOSED, "client_closed"
        except asyncio.CancelledError:  # drain_s ran out while the client read slowly
            ex.outcome = "unavailable" if self._cutting_off else "client_closed"
            raise


def _pick(data: bytes, names: tuple[str, ...]) -> dict[str, Any] | None:
    if len(data) > LOG_RESPONSE_BYTES:
        return None
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(parsed, dict):
        return None
    return {name: parsed[name] for name in names if name in parsed}


def origin_form(target: str) -> str:
    """The path and query of a request target; absolute-form (`GET http://host/p`), which
    HTTP/1.1 servers must accept (RFC 9112 3.2.2), loses its scheme and authority."""
    if target.startswith("/"):
        return target
    scheme, sep, rest = target.partition("://")
    if sep and scheme.lower() in ("http", "https"):
        path_start = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=-1)
        return "/" + rest[path_start:].lstrip("/") if path_start >= 0 else "/"
    return target


_SHUTTING_DOWN = "the router is shutting down and its drain time (server.drain_s) ran out"


def _upstream_timeout(version: Version, exc: BaseException) -> RouterError:
    return RouterError(
        "upstream_timeout",
        f"version '{version.name}' did not answer within {version.timeout_s:g} s",
    )


def _unreachable(model: Model, version: Version, exc: BaseException) -> _Unreachable:
    message = f"version '{version.name}' of model '{model.name}' could not be reached: {exc}"
    return _Unreachable(RouterError("upstream_unavailable", message), "unavailable")


def _malformed(exc: BaseException) -> str:
    return f"the request body is malformed: {exc}"


def _not_found(path: str) -> RouterError:
    return RouterError("not_found", f"no route for '{path}'; models are under /models/<name>/")


def _too_large(limit: int) -> str:
    return f"the request body is larger than {limit / 1024 / 1024:g} MiB (server.max_body_mb)"


def _slow_body(timeout: float) -> str:
    return f"the request body stalled for {timeout:g} s (server.body_timeout_s)"


def _ms_since(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)

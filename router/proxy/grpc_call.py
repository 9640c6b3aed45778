"""A gRPC call through the router (contract section 12): the same choice, admission,
health, fallback and record as an HTTP request, with messages relayed one by one in both
directions and the backend's status, details and metadata passed back unchanged.

What a call names and how its messages are rewritten is `protocols/grpc.py`'s; the wire
(grpcio's server and channels) is `rpc/`'s. The router's own errors end the call with the
contract's status and `x-router-error` in the trailing metadata.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any, Final

import grpc
import grpc.aio
from multidict import CIMultiDict, CIMultiDictProxy

from router.config.model import Model, Version
from router.config.pointer import Pick
from router.errors import RouterError
from router.http.clock import now_rfc3339
from router.http.text import printable
from router.observe.health import Key, grpc_key
from router.observe.record import CLIENT_CLOSED, Exchange, Outcome, ms_since
from router.observe.tracecontext import continued, new_span_id
from router.protocols import grpc as calls
from router.protocols.grpc import GrpcCall
from router.proxy.body import BUFFER_BYTES
from router.proxy.handler import Proxy, Unreachable
from router.proxy.headers import request_id
from router.proxy.shadow import ShadowRecord
from router.routing.choose import choose
from router.routing.paths import find_model
from router.rpc.channels import Channels
from router.rpc.server import Context

# Metadata the transport sets itself, or the router does: never copied from a call to the
# next hop (HTTP/2 pseudo-headers, gRPC's reserved `grpc-*` keys, the content type).
_RESERVED: Final = frozenset(
    {"te", "content-type", "user-agent", "x-model-version", "x-request-id", "traceparent",
     "tracestate", "traceresponse"}
)  # fmt: skip


class _Headers:
    """A call's metadata as `choose` reads headers: no cookies, no query."""

    cookies: dict[str, str] = {}  # noqa: RUF012 (read-only: nothing writes it)
    query: dict[str, str] = {}  # noqa: RUF012

    def __init__(self, headers: CIMultiDictProxy[str]) -> None:
        self.headers = headers


def _forwardable(metadata: Iterable[Any]) -> list[tuple[str, str | bytes]]:
    return [
        (key, value)
        for key, value in metadata
        if key not in _RESERVED and not key.startswith((":", "grpc-"))
    ]


@dataclass(frozen=True, slots=True)
class _Leg:
    """One call on its way to the versions: what every attempt at one needs."""

    call: GrpcCall
    model: Model
    first: bytes | None  # an OIP call's first message, held: a unary call can go again
    requests: AsyncIterator[bytes]  # the rest, as the caller sends them
    context: Context
    ex: Exchange

    def key(self, version: Version) -> Key:
        """The version's gRPC address in the health and admission books."""
        return grpc_key(self.model.name, version.name, version.grpc_url or "")

    async def upward(self, version: Version) -> AsyncIterator[bytes]:
        """The caller's messages as `version` gets them."""
        if self.first is not None:
            yield self.call.rewrite(self.first, self.model, version)
        async for message in self.requests:
            yield self.call.rewrite(message, self.model, version)


class GrpcProxy:
    """The gRPC listener's one handler; shares the HTTP proxy's books and log."""

    def __init__(self, proxy: Proxy, channels: Channels, version: str) -> None:
        self.proxy = proxy
        self.channels = channels
        self.version = version  # the router's, for ServerMetadata

    async def handle(
        self, method: str, requests: AsyncIterator[bytes], context: Context
    ) -> AsyncIterator[bytes]:
        table = self.proxy.tables.current
        metadata = list(context.invocation_metadata() or ())
        texts = CIMultiDict((k, v) for k, v in metadata if isinstance(v, str))
        ex = Exchange(
            now_rfc3339(),
            time.perf_counter(),
            request_id(texts.get("x-request-id")),
            "POST",
            printable(method),
            table.digest,
            continued(texts.get("traceparent"), texts.get("tracestate"), self.proxy.trace_bound),
            user=self.proxy.pseudonymize.fields(None),
            protocol="grpc",
        )
        try:
            call = calls.call_of(method, table.grpc_services)
            messages = self._dispatch(call, requests, context, CIMultiDictProxy(texts), ex)
            async for message in messages:
                if ex.first_byte is None:
                    ex.first_byte = time.perf_counter()
                yield message
        except RouterError as error:
            self._refuse(error, context, ex)
        except asyncio.CancelledError:  # the caller cancelled, went away, or ran out of time
            remaining = context.time_remaining()
            if remaining is not None and remaining <= 0:  # its deadline: the backend's too
                ex.status, ex.outcome, ex.grpc_status = 200, "timeout", "DEADLINE_EXCEEDED"
            else:
                ex.status, ex.outcome = CLIENT_CLOSED, "client_closed"
                ex.grpc_status = "CANCELLED"
            raise
        finally:
            self.proxy.record(ex)

    async def _dispatch(
        self,
        call: GrpcCall,
        requests: AsyncIterator[bytes],
        context: Context,
        headers: CIMultiDictProxy[str],
        ex: Exchange,
    ) -> AsyncIterator[bytes]:
        if call.kind == "local":  # ServerLive, ServerReady, ServerMetadata
            async for _ in requests:
                pass
            ex.status, ex.outcome, ex.grpc_status = 200, "ok", "OK"
            yield calls.local_answer(call, self.proxy.serving, self.version)
            return
        first: bytes | None = None
        if call.kind == "oip":  # the first message names the model
            first = await anext(aiter(requests), None)
            if first is None:
                raise RouterError("bad_request", f"{call.method}: no request message")
            name, pinned = call.names(first)
        else:
            name, pinned = call.model or "", None
        model = find_model(self.proxy.tables.current, name)
        ex.model = model.name
        choice = choose(model, _Headers(headers), pinned)
        ex.assigned_version, ex.assigned_by, ex.bucket = (
            choice.version,
            choice.assigned_by,
            choice.bucket,
        )
        ex.user = self.proxy.pseudonymize.fields(choice.user_id)
        if call.unary and first is not None and model.shadow is not None:
            self._shadow(call, model, first, headers, ex)
        leg = _Leg(call, model, first, requests, context, ex)
        async for message in self._forward(leg, model.versions[choice.version]):
            yield message

    async def _forward(self, leg: _Leg, version: Version) -> AsyncIterator[bytes]:
        """To the chosen version; a unary call it cannot reach goes to the fallback."""
        model, ex = leg.model, leg.ex
        try:
            async for message in self._attempt(leg, version):
                yield message
            return
        except Unreachable as failure:
            fallback = model.fallback
            explicit = ex.assigned_by in ("pinned", "header")
            if fallback is None or fallback == version.name or not leg.call.unary or explicit:
                ex.outcome = failure.outcome
                raise failure.error from None
        try:
            async for message in self._attempt(leg, model.versions[fallback]):
                yield message
        except Unreachable as failure:
            ex.outcome = failure.outcome
            raise failure.error from None

    async def _attempt(self, leg: _Leg, version: Version) -> AsyncIterator[bytes]:
        """The call at one version, holding a place at its gate."""
        leg.ex.version = version.name
        key = leg.key(version)
        where = f"version '{version.name}' of model '{leg.model.name}'"
        if not version.grpc_url:
            error = RouterError("upstream_unavailable", f"{where} has no grpc_url")
            raise Unreachable(error, "unavailable")
        if not self.proxy.health.available(key):
            error = RouterError("upstream_unavailable", f"{where} is down after failures")
            raise Unreachable(error, "unavailable")
        admission = self.proxy.admission
        waiting = admission.enter(key, version)  # raises Overloaded: no fallback
        if waiting is not None:
            await admission.wait(key, version, waiting)
        try:
            span = new_span_id()  # the attempt's, a child of the call's
            tracer = self.proxy.tracer
            if tracer is None or not leg.ex.trace.sampled:
                async for message in self._relay(leg, version, span):
                    yield message
                return
            with tracer.attempt(leg.ex, span, leg.model.name, version, leg.call.method):
                async for message in self._relay(leg, version, span):
                    yield message
        finally:
            admission.leave(key)

    async def _relay(self, leg: _Leg, version: Version, span: str) -> AsyncIterator[bytes]:
        """The messages both ways; then the backend's status, details and trailers."""
        assert version.grpc_url is not None
        context, ex = leg.context, leg.ex
        timeout = version.timeout_s
        remaining = context.time_remaining()
        if remaining is not None:  # the caller's deadline, capped by timeout_s
            timeout = min(timeout, max(remaining, 0.0))
        outgoing = _forwardable(context.invocation_metadata() or ())
        outgoing += [("x-model-version", version.name), ("x-request-id", ex.request_id)]
        outgoing += ex.trace.upstream(span)
        upstream: grpc.aio.Call
        if leg.call.unary and leg.first is not None:  # one message each way, as one batch
            unary = self.channels.unary(version.grpc_url, leg.call.method)
            message = leg.call.rewrite(leg.first, leg.model, version)
            upstream = unary(message, metadata=outgoing, timeout=timeout)
        else:
            stream = self.channels.stream(version.grpc_url, leg.call.method)
            upstream = stream(leg.upward(version), metadata=outgoing, timeout=timeout)
        sent = time.perf_counter()
        answered = False
        try:
            async for message in _answers(upstream):
                if not answered:
                    answered = True
                    await context.send_initial_metadata(
                        _forwardable(await upstream.initial_metadata() or ())
                    )
                yield message
            code, details = grpc.StatusCode.OK, await upstream.details() or ""
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code(), exc.details() or ""
        finally:
            if not upstream.done():  # the caller went away: so does the call upstream
                upstream.cancel()
        ex.upstream_ms = ms_since(sent)
        self._settle(leg, version, code.name, details, answered)
        trailing = _forwardable(await upstream.trailing_metadata() or ())
        context.set_trailing_metadata([*trailing, *_answer_metadata(ex)])
        context.set_code(code)
        if details:
            context.set_details(details)

    def _settle(self, leg: _Leg, version: Version, name: str, details: str, answered: bool) -> None:
        """What the backend's status means for the record and the version's health; an
        UNAVAILABLE before any answer is `Unreachable` (the fallback may take it)."""
        outlier = leg.model.outlier
        if name in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL", "UNKNOWN"):
            self.proxy.health.failure(leg.key(version), outlier.failures, outlier.cooloff_s)
        else:
            self.proxy.health.success(leg.key(version))
        if name == "UNAVAILABLE" and not answered:
            where = f"version '{version.name}' of model '{leg.model.name}'"
            error = RouterError("upstream_unavailable", f"{where} could not be reached: {details}")
            raise Unreachable(error, "unavailable")
        leg.ex.status, leg.ex.grpc_status = 200, name
        leg.ex.outcome = _outcome(name)

    def _shadow(
        self,
        call: GrpcCall,
        model: Model,
        first: bytes,
        headers: CIMultiDictProxy[str],
        ex: Exchange,
    ) -> None:
        """A copy of a unary call to the model's shadow (contract sections 8 and 12)."""
        shadows = self.proxy.shadows
        record = shadows.admit(model, ex, len(first) <= BUFFER_BYTES, "grpc_url")
        if record is None:
            return
        version = model.versions[record.version]
        metadata = [(k, v) for k, v in headers.items() if k.lower() not in _RESERVED]
        metadata += [
            ("x-model-version", version.name),
            ("x-request-id", ex.request_id),
            ("x-shadow", "true"),
        ]
        record.span_id = new_span_id()
        metadata += ex.trace.upstream(record.span_id)
        message = call.rewrite(first, model, version)
        copy = _GrpcCopy(self.channels, version, call.method, metadata, message)
        shadows.launch(copy, model, record, ex)

    @staticmethod
    def _refuse(error: RouterError, context: Context, ex: Exchange) -> None:
        """End the call with the router's own status and `x-router-error`."""
        status = calls.status_of(error)
        # 200: a gRPC status goes back on an HTTP/2 answer of 200, the router's own too.
        ex.status, ex.grpc_status, ex.version = 200, status, None
        context.set_trailing_metadata([("x-router-error", error.code), *_answer_metadata(ex)])
        context.set_code(grpc.StatusCode[status])
        context.set_details(error.message)


def _outcome(status: str) -> Outcome:
    """A backend's status as a record's outcome (contract section 12)."""
    if status == "OK":
        return "ok"
    if status in calls.CLIENT_ERRORS:
        return "client_error"
    return "timeout" if status == "DEADLINE_EXCEEDED" else "server_error"


class _GrpcCopy:
    """A shadow copy of a unary gRPC call: the request message re-addressed, its answer
    read and dropped (its status makes the shadow record; protobuf answers are not picked
    from, so `response` and `agree` stay null)."""

    via = "grpc_url"

    def __init__(
        self,
        channels: Channels,
        version: Version,
        method: str,
        metadata: list[tuple[str, str]],
        message: bytes,
    ) -> None:
        self.channels = channels
        self.version = version
        self.method = method
        self.metadata = metadata
        self.message = message

    async def exchange(self, record: ShadowRecord, picks: tuple[Pick, ...]) -> None:
        assert self.version.grpc_url is not None
        unary = self.channels.unary(self.version.grpc_url, self.method)
        sent = time.perf_counter()
        try:
            await unary(self.message, metadata=self.metadata, timeout=self.version.timeout_s)
            name = "OK"
        except grpc.aio.AioRpcError as exc:
            name = exc.code().name
        record.upstream_ms = ms_since(sent)
        record.status = 200
        record.outcome = _outcome(name)
        record.unreached = name == "UNAVAILABLE"
        if name == "UNAVAILABLE":
            record.outcome = "unavailable"


async def _answers(upstream: grpc.aio.Call) -> AsyncIterator[bytes]:
    """The messages of a unary or a streamed upstream call."""
    if isinstance(upstream, grpc.aio.UnaryUnaryCall):
        yield await upstream
    elif isinstance(upstream, grpc.aio.StreamStreamCall):
        async for message in upstream:
            yield message


def _answer_metadata(ex: Exchange) -> list[tuple[str, str]]:
    """What every answer's trailers carry: the request id, and the router's span."""
    return [("x-request-id", ex.request_id), ("traceresponse", ex.trace.response())]

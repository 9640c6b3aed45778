"""The request handler: route, choose a version, forward, answer, log (contract sections 3
to 5). The body policy is `body.py`, the answer's way back `relay.py`, ground truth
`feedback.py`; this module holds the order of the steps and the fallback.

Every request that reaches `Proxy.handle` leaves exactly one `request` record, written in
a `finally` so that rejected, timed-out, cancelled and client-gone requests count too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from structlog.typing import FilteringBoundLogger

from router.config.holder import TableHolder
from router.config.model import Model, Table, Version
from router.errors import RouterError
from router.http.client import (
    Client,
    ConnectFailed,
    ConnectTimeout,
    LocalShortage,
    ResponseTimeout,
    UpstreamError,
)
from router.http.clock import now_rfc3339
from router.http.request import Request, new_request_id
from router.http.response import Response, StreamResponse
from router.http.text import printable
from router.observe.health import HealthBook
from router.observe.log import Pseudonymizer, render
from router.observe.metrics import Metrics
from router.observe.record import CLIENT_CLOSED, Exchange, Outcome, ms_since
from router.observe.spans import Tracer
from router.observe.tracecontext import continued, new_span_id
from router.protocols import ADAPTERS, Call, RouteError, adapter_of, call_of
from router.protocols.base import ROUTER_ERROR_HEADER
from router.proxy.admission import Admission
from router.proxy.body import ClientGone, Payload, RequestBody, body_fields, read_body
from router.proxy.feedback import feedback
from router.proxy.headers import headers_for, request_id
from router.proxy.relay import relay, upstream_timeout
from router.proxy.shadow import Shadows
from router.routing.choose import choose
from router.routing.paths import find_model, origin_form

_SHUTTING_DOWN = "the router is shutting down and its drain time (server.drain_s) ran out"


class Unreachable(Exception):
    """The version gave no answer; the request may go to the fallback."""

    def __init__(self, error: RouterError, outcome: Outcome) -> None:
        super().__init__(error.message)
        self.error = error
        self.outcome = outcome


class Proxy:
    """The public port's one handler. `client` is set by the app's lifecycle."""

    client: Client

    def __init__(
        self,
        tables: TableHolder,
        log: FilteringBoundLogger,
        pseudonymize: Pseudonymizer,
        metrics: Metrics,
        health: HealthBook,
        write: Callable[[bytes], None],
        tracer: Tracer | None = None,
    ) -> None:
        """`write` takes a rendered line to the routing log (the sink's `msg`); `tracer`
        exports spans (server.tracing), or None: traces are only propagated."""
        self.tables = tables
        self.write = write
        self.metrics = metrics
        self._cutting_off = False
        self.health = health
        self._no_user = pseudonymize.fields(None)  # `user: null`, or nothing with `omit`
        self.log = log
        self.pseudonymize = pseudonymize
        self.shadows = Shadows(log, metrics, tracer)
        self.admission = Admission(metrics)
        self.serving = True  # False once draining: /v2/health/ready answers 503
        self.tracer = tracer
        self.trace_bound = tracer.bound if tracer is not None else 0  # as `continued` takes it

    def cut_off(self) -> None:
        """drain_s is over: the server cancels what is still running (each logs its record
        as cut off), and requests that come up after this get 503 at once."""
        self._cutting_off = True

    def _exchange(self, table: Table, request: Request | None) -> Exchange:
        """The record of a request, begun; without one (refused before it was parsed
        whole), its method and path are unknown."""
        if request is None:
            return Exchange(
                now_rfc3339(),
                time.perf_counter(),
                new_request_id(),
                None,
                None,
                table.digest,
                continued(None, None, self.trace_bound),
                user=self._no_user,
            )
        headers = request.headers
        return Exchange(
            now_rfc3339(),
            time.perf_counter(),
            request_id(request.headers.get("X-Request-ID")),
            request.method,
            printable(origin_form(request.raw_path).partition("?")[0]),
            table.digest,
            continued(headers.get("traceparent"), headers.get("tracestate"), self.trace_bound),
            user=self._no_user,
            protocol=adapter_of(request.raw_path).name,
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
                    response.headers.append(("traceresponse", ex.trace.response()))
                    await self._send(request, response, ex)
            finally:
                if response is not None:
                    ex.first_byte = response.first_byte
                if not ex.feedback:
                    self.record(ex)
        return response

    def refused(self, status: int, request: Request | None = None) -> str:
        """Log a request the server answered itself: refused before routing (junk, an
        oversized head), or `OPTIONS *`; returns the id its answer carries."""
        ex = self._exchange(self.tables.current, request)
        ex.status = status
        self.record(ex)
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
        self.record(ex)

    def record(self, ex: Exchange) -> None:
        record = ex.record()
        self.write(render(record))  # what log.info("request", **fields) writes, less copies
        if self.tracer is not None and ex.trace.sampled:
            self.tracer.server(ex)
        if ex.finished is not None:  # a shadow copy waits to compare
            ex.finished.set_result(None)
        # A timeout or a failure counts against the version that was tried.
        version = ex.version or ex.assigned_version
        self.metrics.observe(ex.model, version, ex.outcome, record["latency_ms"] / 1000)

    # --- routing ---

    async def _dispatch(self, request: Request, table: Table, ex: Exchange) -> StreamResponse:
        try:
            call = call_of(request.raw_path)
        except RouteError as exc:
            if exc.model in table.models:
                ex.model = exc.model
            raise
        if call.local == "feedback":
            assert call.model is not None
            return await feedback(request, table, call.model, self.log, ex)
        if call.local is not None:  # /v2/health/..., /v1/models: the router's own answers
            ex.status, data = call.adapter.answer(call, table, self.serving)
            ex.outcome = "ok" if ex.status < 400 else "rejected"
            return Response(ex.status, body=data, content_type="application/json")
        body: RequestBody | None = None
        name, pinned = call.model, call.pinned
        if call.adapter.model_in_body:  # OpenAI: the body says which model
            body = await read_body(request, table.server, whole=True)
            if body.client_gone:
                return self._gone(ex)
            name, pinned = call.adapter.model_of(body.data)
        assert name is not None
        model = find_model(table, name)
        ex.model = model.name
        if body is None and model.body_user_id:
            body = await read_body(request, table.server)
        choice = choose(model, request, pinned, body_fields(body) if model.body_user_id else None)
        ex.assigned_version, ex.assigned_by, ex.bucket = (
            choice.version,
            choice.assigned_by,
            choice.bucket,
        )
        ex.user = self.pseudonymize.fields(choice.user_id)
        if body is None:
            body = await read_body(request, table.server)
        if body.client_gone:
            return self._gone(ex)
        if model.shadow is not None:  # the copy leaves with the primary, and runs apart
            self.shadows.start(self.client, request, model, call, body, ex)
        return await self._forward(request, model, choice.version, call, body, ex)

    @staticmethod
    def _gone(ex: Exchange) -> Response:
        ex.status, ex.outcome = CLIENT_CLOSED, "client_closed"
        return Response(CLIENT_CLOSED)

    async def _forward(
        self,
        request: Request,
        model: Model,
        name: str,
        call: Call,
        body: RequestBody,
        ex: Exchange,
    ) -> StreamResponse:
        try:
            return await self._attempt(request, model, model.versions[name], call, body, ex)
        except Unreachable as failure:
            fallback = model.fallback
            # A client that named its version (a pinned path, X-Model-Version) relies on
            # that version's response format: another version's answer would break it.
            explicit = ex.assigned_by in ("pinned", "header")
            if fallback is None or fallback == name or not body.resendable or explicit:
                ex.outcome = failure.outcome
                raise failure.error from None
        try:
            return await self._attempt(request, model, model.versions[fallback], call, body, ex)
        except Unreachable as failure:
            ex.outcome = failure.outcome
            raise failure.error from None

    async def _attempt(
        self,
        request: Request,
        model: Model,
        version: Version,
        call: Call,
        body: RequestBody,
        ex: Exchange,
    ) -> StreamResponse:
        ex.version = version.name
        key = (model.name, version.name, version.url)
        if not self.health.available(key):
            message = f"version '{version.name}' of model '{model.name}' is down after failures"
            raise Unreachable(RouterError("upstream_unavailable", message), "unavailable")
        waiting = self.admission.enter(key, version)  # raises Overloaded: 503, no fallback
        if waiting is not None:
            await self.admission.wait(key, version, waiting)
        try:
            target, payload = outgoing(call, model, version, body)
            span = new_span_id()  # the attempt's, a child of the request's
            headers = headers_for(request, version.name, ex.request_id, ex.trace, span)
            if self.tracer is None or not ex.trace.sampled:
                return await self._exchange_with(
                    request, model, version, target, payload, headers, ex
                )
            with self.tracer.attempt(ex, span, model.name, version):
                return await self._exchange_with(
                    request, model, version, target, payload, headers, ex
                )
        finally:
            self.admission.leave(key)

    async def _exchange_with(
        self,
        request: Request,
        model: Model,
        version: Version,
        target: str,
        payload: Payload,
        headers: list[tuple[str, str]],
        ex: Exchange,
    ) -> StreamResponse:
        """Send to the version and relay its answer, holding a place at its gate."""
        key = (model.name, version.name, version.url)
        sent = time.perf_counter()
        try:
            upstream = await self.client.send(
                version.origin,
                request.method,
                target,
                headers,
                payload,
                version.timeout_s,
                replay=model.retry_post,
            )
        except ClientGone:
            ex.status, ex.outcome = CLIENT_CLOSED, "client_closed"
            return Response(CLIENT_CLOSED)
        except LocalShortage as exc:  # the router's own state: not the version's failure
            raise self.admission.short_of(key, exc) from exc
        except UpstreamError as exc:
            raise self._failure(exc, model, version, sent, ex) from exc
        try:
            response = await relay(request, model, version, upstream, sent, ex)
        except RouterError:  # the answer broke off before its head went out
            self.health.failure(key, model.outlier.failures, model.outlier.cooloff_s)
            raise
        finally:
            upstream.release()
        # An answer cut off after its head (reset, stall past timeout_s) is a failure too.
        if ex.outcome in ("timeout", "unavailable"):
            self.health.failure(key, model.outlier.failures, model.outlier.cooloff_s)
        else:
            self.health.success(key)
        return response

    def _failure(
        self, exc: UpstreamError, model: Model, version: Version, sent: float, ex: Exchange
    ) -> Exception:
        """What a failed exchange means (docs/behaviour.md has the table): it counts against
        the version; the request may go to the fallback (`Unreachable`) or gets its error."""
        key = (model.name, version.name, version.url)
        self.health.failure(key, model.outlier.failures, model.outlier.cooloff_s)
        match exc:
            case ConnectTimeout():
                return Unreachable(upstream_timeout(version), "timeout")
            case ResponseTimeout():  # it has the request and may have acted on it
                ex.upstream_ms, ex.outcome = ms_since(sent), "timeout"
                return upstream_timeout(version)
            case ConnectFailed():
                what = "could not be reached"
            case _:  # BadResponse
                what = "gave no answer that can be passed on"
        message = f"version '{version.name}' of model '{model.name}' {what}: {exc}"
        return Unreachable(RouterError("upstream_unavailable", message), "unavailable")

    # --- the router's own answers ---

    @staticmethod
    def _error(error: RouterError, ex: Exchange) -> Response:
        """The contract's error, in the shape the request's protocol's clients parse; the
        outcome was set where the failure was seen."""
        ex.status = error.status
        ex.version = None  # no version answered (so no X-Model-Version): the router did
        headers = {"X-Request-ID": ex.request_id, ROUTER_ERROR_HEADER: error.code}
        if error.code == "overloaded":
            headers["Retry-After"] = "1"
        adapter = error.adapter if isinstance(error, RouteError) else ADAPTERS[ex.protocol]
        response = Response(
            error.status,
            body=adapter.error(error, ex.request_id),
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


def outgoing(call: Call, model: Model, version: Version, body: RequestBody) -> tuple[str, Payload]:
    """The target and body a version gets: its protocol may name the model in either."""
    target = call.target_for(model, version)
    if call.adapter.model_in_body and body.data is not None:
        return target, call.body_for(model, version, body.data)
    return target, body.payload()

"""Shadow traffic (contract section 8): a copy of a request goes to the model's shadow
version when the primary request leaves, runs on its own, and is logged next to the
primary's answer with whether the two agree.

Isolation is the design: a copy is a task of its own that the client's answer never
awaits; its failures touch neither the health book nor the fallback; at most
`max_in_flight` copies per model wait on the shadow (beyond that a copy is dropped and
counted, never queued); the shadow's answer is read only up to the size `log_response`
looks at. A copy that has its answer waits for the primary's record (`Exchange.finished`)
to judge agreement, so the shadow record always carries both sides.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from structlog.typing import FilteringBoundLogger

from router.config.model import Model, Version
from router.config.pointer import Pick
from router.http.client import (
    Client,
    ConnectFailed,
    ConnectTimeout,
    ResponseTimeout,
    UpstreamError,
    UpstreamResponse,
)
from router.http.clock import now_rfc3339
from router.http.request import Request
from router.observe.metrics import Metrics
from router.observe.record import Exchange, ms_since, outcome_of
from router.observe.spans import Tracer, attempt_attributes, is_error, rpc_attempt_attributes
from router.observe.tracecontext import Trace, new_span_id
from router.observe.values import same_value
from router.protocols import Call
from router.proxy.body import BUFFER_BYTES, RequestBody
from router.proxy.headers import headers_for
from router.proxy.relay import LOG_RESPONSE_BYTES, pick

SHADOW_HEADER = ("X-Shadow", "true")


@dataclass(slots=True)
class ShadowRecord:
    """One copy's `shadow` record, filled in as it goes."""

    ts: str
    started: float
    request_id: str
    model: str
    version: str
    primary_version: str | None
    config: str
    user: dict[str, Any] = field(default_factory=dict)
    status: int | None = None
    outcome: str = "dropped"
    drop_reason: str | None = None
    upstream_ms: float | None = None
    primary_upstream_ms: float | None = None
    response: dict[str, Any] | None = None
    agree: bool | None = None
    unreached: bool = False  # no connection to the shadow (not a field of the record)
    trace: Trace | None = None  # the copy's trace: the primary request's
    span_id: str | None = None  # the copy's own span, once it is sent

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ts": self.ts,
            "request_id": self.request_id,
            "model": self.model,
            "version": self.version,
            "primary_version": self.primary_version,
            **self.user,
            "status": self.status,
            "outcome": self.outcome,
            "latency_ms": ms_since(self.started),
            "upstream_ms": self.upstream_ms,
            "primary_upstream_ms": self.primary_upstream_ms,
            "agree": self.agree,
            "config": self.config,
            "trace_id": self.trace and self.trace.trace_id,
        }
        if self.drop_reason is not None:
            out["drop_reason"] = self.drop_reason
        if self.response is not None:
            out["response"] = self.response
        return out


class Shadows:
    """The copies of one process: started by the proxy, drained at shutdown."""

    def __init__(
        self, log: FilteringBoundLogger, metrics: Metrics, tracer: Tracer | None = None
    ) -> None:
        self.log = log
        self.metrics = metrics
        self.tracer = tracer  # span export, when the table asks for it
        self._in_flight: dict[str, int] = {}
        # Per shadow (model, url): connection failures in a row, and until when (monotonic)
        # copies are not even tried: a shadow that is down would cost a refused connection
        # per copy. The primary's health is never touched.
        self._down: dict[tuple[str, str], tuple[int, float]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def start(
        self,
        client: Client,
        request: Request,
        model: Model,
        call: Call,
        body: RequestBody,
        ex: Exchange,
    ) -> None:
        """Copy this request to the model's shadow if it has one and the draw says so;
        the copy runs on its own. Requests headed to the shadow version itself are not
        copied."""
        if body.client_gone:
            return
        # Larger than 1 MiB, or chunked and never held whole: not copied.
        held = body.stream is None and len(body.data or b"") <= BUFFER_BYTES
        record = self.admit(model, ex, held, "url")
        if record is None:
            return
        version = model.versions[record.version]
        record.span_id = new_span_id()
        headers = headers_for(request, version.name, ex.request_id, ex.trace, record.span_id)
        headers.append(SHADOW_HEADER)
        target = call.target_for(model, version)
        data = call.body_for(model, version, body.data) if body.data is not None else None
        send = _Send(client, version, request.method, target, headers, data)
        self.launch(send, model, record, ex)

    def admit(self, model: Model, ex: Exchange, held: bool, via: str) -> ShadowRecord | None:
        """The record of a copy of this request to the shadow, or None: no shadow, not
        drawn, headed to the shadow itself, or dropped (and logged) by its limits. `via`
        names the version's address the copy uses (`url`, `grpc_url`)."""
        shadow = model.shadow
        if shadow is None or ex.assigned_version == shadow.version:
            return None
        if shadow.percent < 100 and random.random() * 100 >= shadow.percent:
            return None
        record = ShadowRecord(
            now_rfc3339(),
            time.perf_counter(),
            ex.request_id,
            model.name,
            shadow.version,
            ex.assigned_version,
            ex.config,
            ex.user,
            trace=ex.trace,
        )
        version = model.versions[shadow.version]
        address = getattr(version, via)
        if not held:
            self._drop(record, "body_too_large")
        elif not address:
            self._drop(record, "no_address")
        elif self._down.get((model.name, address), (0, 0.0))[1] > time.monotonic():
            self._drop(record, "shadow_down")
        elif self._in_flight.get(model.name, 0) >= shadow.max_in_flight:
            self._drop(record, "overloaded")
        else:
            return record
        return None

    def launch(self, send: Sender, model: Model, record: ShadowRecord, ex: Exchange) -> None:
        """Run a copy that `admit` let through, as a task of its own."""
        if ex.finished is None:
            ex.finished = asyncio.get_running_loop().create_future()
        self._in_flight[model.name] = self._in_flight.get(model.name, 0) + 1
        task = asyncio.create_task(self._run(send, model, record, ex))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, seconds: float) -> None:
        """Let copies in flight finish for up to `seconds`; cancel the rest, each of which
        logs its record as dropped (`shutting_down`)."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=max(seconds, 0.0))
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    async def _run(self, send: Sender, model: Model, record: ShadowRecord, ex: Exchange) -> None:
        answer: dict[str, Any] | None = None
        try:
            try:
                answer = await send.exchange(record, model.picks)
            finally:
                self._in_flight[model.name] -= 1
                self._span(send, model, record)
            self._reached(model, send.version, not record.unreached, send.via)
            assert ex.finished is not None
            await asyncio.shield(ex.finished)  # the primary's record is written
        except asyncio.CancelledError:
            record.outcome, record.drop_reason = "dropped", "shutting_down"
            record.status = record.upstream_ms = None
            self._write(record)
            raise
        record.primary_version = ex.version or ex.assigned_version  # who answered, or was meant to
        record.primary_upstream_ms = ex.upstream_ms
        if model.picks:
            record.response = answer
            if ex.outcome == "ok" and record.outcome == "ok":
                record.agree = agreement(ex.response, answer)
        self._write(record)

    def _reached(self, model: Model, version: Version, reached: bool, via: str) -> None:
        """Count connection failures in a row; after `outlier.failures` of them, copies are
        dropped (`shadow_down`) for `outlier.cooloff_s`, then tried again."""
        key = (model.name, getattr(version, via))
        if reached:
            self._down.pop(key, None)
            return
        failures = self._down.get(key, (0, 0.0))[0] + 1
        if failures >= model.outlier.failures:
            self._down[key] = (0, time.monotonic() + model.outlier.cooloff_s)
        else:
            self._down[key] = (failures, 0.0)

    def _span(self, send: Sender, model: Model, record: ShadowRecord) -> None:
        """The copy's client span, under the primary request's (contract section 15)."""
        trace, span_id = record.trace, record.span_id
        if self.tracer is None or trace is None or span_id is None or not trace.sampled:
            return
        version, outcome = send.version, record.outcome
        if send.via == "grpc_url":
            rpc = getattr(send, "method", "")
            attributes = rpc_attempt_attributes(model.name, version, "shadow", outcome, rpc, None)
        else:
            status = record.status
            attributes = attempt_attributes(model.name, version, "shadow", outcome, status)
        name = f"{model.name} {version.name}"
        self.tracer.client(trace, span_id, name, record.started, attributes, is_error(outcome))

    def _drop(self, record: ShadowRecord, reason: str) -> None:
        record.outcome, record.drop_reason = "dropped", reason
        self._write(record)

    def _write(self, record: ShadowRecord) -> None:
        self.log.info("shadow", **record.fields())
        self.metrics.shadow(record.model, record.version, record.outcome, record.agree)


class Sender(Protocol):
    """What sends a copy and reads its answer: over HTTP (`_Send`) or gRPC."""

    @property
    def version(self) -> Version: ...
    @property
    def via(self) -> str: ...  # the version's address it uses: "url" or "grpc_url"

    async def exchange(
        self, record: ShadowRecord, picks: tuple[Pick, ...]
    ) -> dict[str, Any] | None:
        """Send the copy, fill in the record's status, outcome and upstream_ms; return the
        picked fields of an ok JSON answer, or None."""
        ...


@dataclass(frozen=True, slots=True)
class _Send:
    """What a copy sends to the shadow: the primary's request, re-addressed."""

    client: Client
    version: Version
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes | None
    via: str = "url"

    async def exchange(
        self, record: ShadowRecord, picks: tuple[Pick, ...]
    ) -> dict[str, Any] | None:
        """Send the copy and read its answer (up to what `log_response` looks at); fills
        in the record's status, outcome and upstream_ms; returns the picked fields of an
        ok JSON answer, or None."""
        v = self.version
        sent = time.perf_counter()
        try:
            upstream = await self.client.send(
                v.origin, self.method, self.target, self.headers, self.body, v.timeout_s
            )
        except UpstreamError as exc:
            record.upstream_ms = ms_since(sent)
            timed_out = isinstance(exc, ConnectTimeout | ResponseTimeout)
            record.outcome = "timeout" if timed_out else "unavailable"
            record.unreached = isinstance(exc, ConnectFailed | ConnectTimeout)
            return None
        status = record.status = upstream.status
        record.outcome = outcome_of(status)
        try:
            data = await _read_capped(upstream)
        except UpstreamError as exc:
            record.outcome = "timeout" if isinstance(exc, ResponseTimeout) else "unavailable"
            data = None
        finally:
            upstream.release()  # an answer not read whole closes its connection
            record.upstream_ms = ms_since(sent)
        if data is None or record.outcome != "ok":
            return None
        return pick(data, picks)


async def _read_capped(upstream: UpstreamResponse) -> bytes | None:
    """The answer, if it is no larger than `log_response` ever looks at; else None."""
    length = upstream.content_length
    if length is not None:
        return None if length > LOG_RESPONSE_BYTES else await upstream.read()
    pieces: list[bytes] = []
    size = 0
    async for chunk in upstream.chunks():
        size += len(chunk)
        if size > LOG_RESPONSE_BYTES:
            return None
        pieces.append(chunk)
    return b"".join(pieces)


def agreement(primary: dict[str, Any] | None, shadow: dict[str, Any] | None) -> bool | None:
    """Whether two answers' `log_response` fields are equal by value; None when either is
    not a JSON object or neither has any of the fields."""
    if primary is None or shadow is None or (not primary and not shadow):
        return None
    return same_value(primary, shadow)

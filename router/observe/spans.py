"""Spans of sampled requests, exported off the event loop (contract section 15).

A sampled request is a server span; each attempt at a backend (the first, a fallback, a
shadow copy) is a client span under it. The handler hands a finished span to `Tracer` as a
plain tuple, which costs an append to a bounded queue; one thread per process takes spans
off in batches, makes OpenTelemetry SDK spans of them and sends them with the SDK's
OTLP/HTTP exporter (`otlp.py`, imported only when tracing is on). A collector that is down
or slow costs the router queued spans, never request time: past `QUEUE_SPANS` they are
dropped, and every span lost is counted by reason.

Nothing here runs for a request that is not sampled, and no span carries a user id.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final, Literal, NamedTuple

from router.config.model import Tracing, Version
from router.observe.record import ERROR_OUTCOMES, Exchange
from router.observe.tracecontext import Trace, ratio_bound

QUEUE_SPANS: Final = 2048  # OpenTelemetry's BatchSpanProcessor defaults, but a 1 s delay
BATCH_SPANS: Final = 512
DELAY_S: Final = 1.0
EXPORT_TIMEOUT_S: Final = 5.0  # one batch's export, its retries included
CLOSE_S: Final = 2.0  # at exit, what is queued gets this long

SpanDropReason = Literal["queue_full", "export_failed", "shutdown"]
SPAN_DROP_REASONS: Final[tuple[SpanDropReason, ...]] = ("queue_full", "export_failed", "shutdown")
AttemptKind = Literal["first", "fallback", "shadow"]
Attributes = dict[str, str | int | float | bool]


class SpanData(NamedTuple):
    """One finished span, as the exporter thread takes it: ids in hex, times in epoch ns."""

    name: str
    server: bool  # a server span (the request), else a client span (an attempt)
    trace_id: str
    span_id: str
    parent_id: str | None
    remote_parent: bool  # the parent is the caller's span (the server span of a traced call)
    start_ns: int
    end_ns: int
    attributes: Attributes
    error: bool
    state: str | None


Export = Callable[[list[SpanData]], bool]  # True when the batch was accepted


class Tracer:
    """One process's span export: the sampling bound its requests are continued with, and
    the queue its spans leave by."""

    def __init__(
        self,
        settings: Tracing,
        export: Export,
        on_drop: Callable[[SpanDropReason, int], None],
        on_export: Callable[[int], None],
    ) -> None:
        self.settings = settings
        self.bound = ratio_bound(settings.sample)
        self._export = export
        self._on_drop = on_drop
        self._on_export = on_export
        self._queue: deque[SpanData] = deque()
        self._wake = threading.Event()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="span-export", daemon=True)
        self._thread.start()

    def server(self, ex: Exchange) -> None:
        """The request's span, once its record is written."""
        trace = ex.trace
        attributes = server_attributes(ex)
        name = ex.model or ex.method or "request"
        error = ex.outcome in ERROR_OUTCOMES
        self._put(name, True, trace, trace.span_id, ex.started, attributes, error)

    def client(
        self,
        trace: Trace,
        span_id: str,
        name: str,
        started: float,
        attributes: Attributes,
        error: bool,
    ) -> None:
        """An attempt's span: `started` is when it began, as a `time.perf_counter()`."""
        self._put(name, False, trace, span_id, started, attributes, error)

    def attempt(
        self, ex: Exchange, span_id: str, model: str, version: Version, rpc: str | None = None
    ) -> AttemptSpan:
        """A context for one attempt at `version` (an HTTP one, or a gRPC call of the
        method at path `rpc`): its span ends with it."""
        return AttemptSpan(self, ex, span_id, model, version, rpc)

    def _put(
        self,
        name: str,
        server: bool,
        trace: Trace,
        span_id: str,
        started: float,
        attributes: Attributes,
        error: bool,
    ) -> None:
        end_ns = time.time_ns()
        start_ns = end_ns - int((time.perf_counter() - started) * 1e9)
        parent = trace.parent_id if server else trace.span_id
        remote = server and parent is not None
        span = SpanData(
            name, server, trace.trace_id, span_id, parent, remote,
            start_ns, end_ns, attributes, error, trace.state,
        )  # fmt: skip
        queue = self._queue
        if len(queue) >= QUEUE_SPANS:
            self._on_drop("queue_full", 1)
            return
        queue.append(span)
        if len(queue) == BATCH_SPANS:
            self._wake.set()

    def close(self, timeout: float = CLOSE_S) -> None:
        """Export what is queued, for up to `timeout`; what is left is counted as lost."""
        self._closing = True
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():  # still sending: what it has not taken is lost
            left = 0
            with contextlib.suppress(IndexError):
                while True:
                    self._queue.popleft()  # one at a time: each span is the thread's or ours
                    left += 1
            if left:
                self._on_drop("shutdown", left)

    def _run(self) -> None:
        while True:
            self._wake.wait(DELAY_S)
            self._wake.clear()
            closing = self._closing
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(BATCH_SPANS, len(self._queue)))]
                self._send(batch)
            if closing:
                return

    def _send(self, batch: list[SpanData]) -> None:
        try:
            accepted = self._export(batch)
        except Exception:  # nothing the exporter meets may end the thread
            accepted = False
        if accepted:
            self._on_export(len(batch))
        else:
            self._on_drop("export_failed", len(batch))


class AttemptSpan:
    """An attempt's client span: its answer's status, or, when it ends in an exception, the
    outcome the exception means. A version other than the one assigned is the fallback's."""

    __slots__ = ("ex", "model", "rpc", "span_id", "started", "tracer", "version")

    def __init__(
        self, tracer: Tracer, ex: Exchange, span_id: str, model: str, version: Version,
        rpc: str | None,
    ) -> None:  # fmt: skip
        self.tracer, self.ex, self.span_id = tracer, ex, span_id
        self.model, self.version, self.rpc = model, version, rpc
        self.started = time.perf_counter()

    def __enter__(self) -> AttemptSpan:
        return self

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        ex, version = self.ex, self.version
        outcome: str = ex.outcome
        if isinstance(exc, asyncio.CancelledError):
            outcome = "client_closed"
        elif exc is not None:
            failed = getattr(exc, "outcome", None)  # the proxy's Unreachable says it
            outcome = failed if isinstance(failed, str) else _unfinished(outcome)
        attempt: AttemptKind = "first" if version.name == ex.assigned_version else "fallback"
        if self.rpc is not None:
            status = ex.grpc_status if exc is None else None
            attributes = rpc_attempt_attributes(
                self.model, version, attempt, outcome, self.rpc, status
            )
        else:
            code = ex.status if exc is None else None
            attributes = attempt_attributes(self.model, version, attempt, outcome, code)
        attributes.update(assignment(ex))
        name = f"{self.model} {version.name}"
        self.tracer.client(
            ex.trace, self.span_id, name, self.started, attributes, is_error(outcome)
        )


def _unfinished(outcome: str) -> str:
    """An attempt that raised with no outcome of its own: the record's, if set by then."""
    return "unavailable" if outcome == "rejected" else outcome


def server_attributes(ex: Exchange) -> Attributes:
    """Section 15's attributes of a request, and the semantic conventions' HTTP or RPC
    ones; the user (even pseudonymised) is never one."""
    found: dict[str, Any] = {
        "model_router.model": ex.model,
        "model_router.version": ex.version,
        "model_router.outcome": ex.outcome,
        "model_router.request_id": ex.request_id,
        "model_router.protocol": ex.protocol,
        **assignment(ex),
    }
    if ex.protocol == "grpc":
        found.update(rpc_attributes(ex.path, ex.grpc_status))
    else:
        found["http.request.method"] = ex.method
        found["url.path"] = ex.path
        found["http.response.status_code"] = ex.status
    return _given(found)


def assignment(ex: Exchange) -> Attributes:
    """How the request's version was chosen, on each of its attempts' spans too."""
    return _given({
        "model_router.assigned_version": ex.assigned_version,
        "model_router.assigned_by": ex.assigned_by,
        "model_router.bucket": ex.bucket,
        "model_router.config": ex.config,
    })  # fmt: skip


def _given(found: dict[str, Any]) -> Attributes:
    """The attributes that have a value: OpenTelemetry has no null attribute."""
    return {key: value for key, value in found.items() if value is not None}


def attempt_attributes(
    model: str, version: Version, kind: AttemptKind, outcome: str, status: int | None
) -> Attributes:
    """An HTTP attempt's attributes: which version, which try, how it ended."""
    origin = version.origin
    found: dict[str, Any] = {
        "model_router.model": model,
        "model_router.version": version.name,
        "model_router.attempt": kind,
        "model_router.outcome": outcome,
        "server.address": origin.host,
        "server.port": origin.port,
        "http.response.status_code": status,
    }
    return _given(found)


def rpc_attempt_attributes(
    model: str, version: Version, kind: AttemptKind, outcome: str, path: str, status: str | None
) -> Attributes:
    """A gRPC attempt's attributes, at the version's `grpc_url`."""
    host, _, port = (version.grpc_url or "").removeprefix("grpcs://").rpartition(":")
    found: Attributes = {
        "model_router.model": model,
        "model_router.version": version.name,
        "model_router.attempt": kind,
        "model_router.outcome": outcome,
        "server.address": host.strip("[]"),
        **rpc_attributes(path, status),
    }
    if port.isdigit():
        found["server.port"] = int(port)
    return found


def is_error(outcome: str) -> bool:
    return outcome in ERROR_OUTCOMES


def rpc_attributes(path: str | None, status: str | None) -> Attributes:
    """`rpc.*` of a gRPC call at `/package.Service/Method`, ending with `status`."""
    service, _, method = (path or "").lstrip("/").rpartition("/")
    found: Attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}
    if status is not None and status in GRPC_CODES:
        found["rpc.grpc.status_code"] = GRPC_CODES[status]
    return found


# gRPC's status names and codes (grpc/doc/statuscodes.md), as the semantic conventions
# want `rpc.grpc.status_code`: a number.
_GRPC_STATUSES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
                  "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
                  "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",
                  "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED")  # fmt: skip
GRPC_CODES: Final = {name: code for code, name in enumerate(_GRPC_STATUSES)}

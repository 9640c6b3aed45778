"""An OpenTelemetry Collector's OTLP/HTTP trace receiver, as the suite's own: it decodes
each `POST /v1/traces` (protobuf, `opentelemetry-proto`) into plain spans the tests read."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tests.support.running import BACKEND_RUNNER, LOOPBACK
from tests.support.waiting import poll


@dataclass(frozen=True)
class Received:
    """One span as the collector got it: ids in hex, kind `server` or `client`."""

    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_id: str | None
    attributes: dict[str, Any]
    error: bool
    start_ns: int
    end_ns: int
    resource: dict[str, Any]
    scope: str


@dataclass
class Collector:
    url: str  # the base URL, as server.tracing.otlp_endpoint takes it
    spans: list[Received] = field(default_factory=list)
    posts: int = 0
    status: int = 200  # what it answers: 503 plays a collector that is failing
    hang: asyncio.Event | None = None  # set to let requests held since `hold()` go on

    def hold(self) -> None:
        """From now on, requests get no answer until `release()`."""
        self.hang = asyncio.Event()

    def release(self) -> None:
        if self.hang is not None:
            self.hang.set()

    def traces(self) -> dict[str, list[Received]]:
        found: dict[str, list[Received]] = {}
        for span in self.spans:
            found.setdefault(span.trace_id, []).append(span)
        return found

    async def until(self, count: int) -> list[Received]:
        """The spans, once at least `count` have come (the router sends them within ~1 s)."""

        async def enough() -> list[Received] | None:
            return self.spans if len(self.spans) >= count else None

        return await poll(enough, 30, f"{count} spans at the collector")


@asynccontextmanager
async def collector() -> AsyncIterator[Collector]:
    """A receiver on a free loopback port, for the test's duration."""
    app = web.Application()
    found = Collector("")

    async def traces(request: web.Request) -> web.Response:
        found.posts += 1
        if found.hang is not None:
            await found.hang.wait()
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        if found.status != 200:
            return web.Response(status=found.status)
        message = ExportTraceServiceRequest()
        message.ParseFromString(body)
        found.spans.extend(_decoded(message))
        answer = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=answer, content_type="application/x-protobuf")

    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app, **BACKEND_RUNNER)
    await runner.setup()
    site = web.TCPSite(runner, LOOPBACK, 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    found.url = f"http://{LOOPBACK}:{port}"
    try:
        yield found
    finally:
        found.release()
        await runner.cleanup()


def _decoded(message: ExportTraceServiceRequest) -> list[Received]:
    out = []
    for resource_spans in message.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                out.append(
                    Received(
                        span.name,
                        {Span.SPAN_KIND_SERVER: "server", Span.SPAN_KIND_CLIENT: "client"}.get(
                            span.kind, str(span.kind)
                        ),
                        span.trace_id.hex(),
                        span.span_id.hex(),
                        span.parent_span_id.hex() or None,
                        {a.key: _value(a.value) for a in span.attributes},
                        span.status.code == Status.STATUS_CODE_ERROR,
                        span.start_time_unix_nano,
                        span.end_time_unix_nano,
                        resource,
                        scope_spans.scope.name,
                    )
                )
    return out


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind is not None else None

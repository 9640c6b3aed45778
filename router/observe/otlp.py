"""The span exporter of `spans.py`: OpenTelemetry's SDK spans, sent with its OTLP/HTTP
exporter (the `otel` extra). Imported only when a table has `server.tracing`; everything
here runs on the export thread."""

from __future__ import annotations

import logging
import os
from importlib.metadata import PackageNotFoundError, version

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from router.observe.spans import EXPORT_TIMEOUT_S, Export, SpanData

SIGNAL = "/v1/traces"  # appended to the collector's base URL, as OTEL_EXPORTER_OTLP_ENDPOINT is
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)


def exporter(endpoint: str) -> Export:
    """Send batches to `<endpoint>/v1/traces`. The resource is `service.name=model-router`
    unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES say otherwise."""
    otlp = OTLPSpanExporter(endpoint=endpoint + SIGNAL, timeout=EXPORT_TIMEOUT_S)
    # Each failed batch is counted in /metrics; the exporter's own line per retry is noise.
    logging.getLogger("opentelemetry.exporter.otlp").setLevel(logging.CRITICAL)
    logging.getLogger("opentelemetry.exporter.otlp.common").setLevel(logging.CRITICAL)
    resource = Resource.create(
        {
            "service.name": "model-router",
            "service.instance.id": f"{os.uname().nodename}-{os.getpid()}",
        }
    )
    scope = InstrumentationScope("model-router", _version())

    def export(batch: list[SpanData]) -> bool:
        spans = [_readable(span, resource, scope) for span in batch]
        return otlp.export(spans) is SpanExportResult.SUCCESS

    return export


def _readable(span: SpanData, resource: Resource, scope: InstrumentationScope) -> ReadableSpan:
    state = TraceState.from_header([span.state]) if span.state else None
    trace_id = int(span.trace_id, 16)
    context = SpanContext(trace_id, int(span.span_id, 16), False, _SAMPLED, state)
    parent = None
    if span.parent_id is not None:
        parent = SpanContext(trace_id, int(span.parent_id, 16), span.remote_parent, _SAMPLED, state)
    return ReadableSpan(
        span.name,
        context,
        parent,
        resource,
        span.attributes,
        kind=SpanKind.SERVER if span.server else SpanKind.CLIENT,
        status=Status(StatusCode.ERROR) if span.error else Status(StatusCode.UNSET),
        start_time=span.start_ns,
        end_time=span.end_ns,
        instrumentation_scope=scope,
    )


def _version() -> str:
    try:
        return version("model-router")
    except PackageNotFoundError:
        return "unknown"

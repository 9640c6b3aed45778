"""A bare OTLP/HTTP trace receiver for benchmarks: decodes each batch and counts its spans.

    python bench/otlp_sink.py PORT COUNT_FILE

On SIGUSR1 it writes the spans received so far to COUNT_FILE (its pid is in
COUNT_FILE with the suffix .pid).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

ANSWER = ExportTraceServiceResponse().SerializeToString()


def main() -> None:
    port, counts = int(sys.argv[1]), Path(sys.argv[2])
    received = [0]

    async def traces(request: web.Request) -> web.Response:
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        received[0] += sum(
            len(scope.spans) for spans in message.resource_spans for scope in spans.scope_spans
        )
        return web.Response(body=ANSWER, content_type="application/x-protobuf")

    async def start(app: web.Application) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, lambda: counts.write_text(str(received[0])))
        counts.with_suffix(".pid").write_text(str(os.getpid()))

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    app.on_startup.append(start)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main()

"""A gRPC test backend over raw bytes, for any service: each method shows one thing the
router must pass through (messages of all four call shapes, statuses, metadata,
deadlines). Its answers start with the version it stands for."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import grpc.aio

Context = grpc.aio.ServicerContext[bytes, bytes]


class Echo(grpc.GenericRpcHandler):
    def __init__(self, version: str) -> None:
        self.version = version.encode()
        self.calls: list[tuple[str, dict[str, Any]]] = []  # method, metadata of each call
        self.messages: list[bytes] = []  # every request message, in order

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[bytes, bytes]:
        method = details.method

        async def behaviour(
            requests: AsyncIterator[bytes], context: Context
        ) -> AsyncIterator[bytes]:
            self.calls.append((method, dict(context.invocation_metadata() or ())))
            async for answer in self.answer(method.rpartition("/")[2], requests, context):
                yield answer

        return grpc.stream_stream_rpc_method_handler(behaviour)

    async def answer(
        self, name: str, requests: AsyncIterator[bytes], context: Context
    ) -> AsyncIterator[bytes]:
        me = self.version
        if name == "Bidi":  # each message answered as it comes
            async for message in requests:
                yield me + b":" + message
            return
        received = [m async for m in requests]
        self.messages.extend(received)
        if name == "ServerStream":
            for i in range(int(received[0])):
                yield me + b":%d" % i
        elif name == "Fail":
            context.set_trailing_metadata((("x-backend", "said so"),))
            context.set_code(grpc.StatusCode[received[0].decode()])
            context.set_details(f"{me.decode()} refused")
        elif name == "Deadline":
            yield b"%.3f" % (context.time_remaining() or -1.0)
        elif name == "Slow":
            await asyncio.sleep(float(received[0]))
            yield me + b":slept"
        else:  # Unary, ClientStream: every message, joined
            await context.send_initial_metadata((("x-initial", "from-" + me.decode()),))
            context.set_trailing_metadata((("x-trailing", "from-" + me.decode()),))
            yield me + b":" + b"|".join(received)


@asynccontextmanager
async def echo_server(version: str) -> AsyncIterator[tuple[str, Echo]]:
    """A raw-bytes gRPC backend on a free loopback port: its `HOST:PORT` and handler."""
    server = grpc.aio.server()
    echo = Echo(version)
    server.add_generic_rpc_handlers((echo,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", echo
    finally:
        await server.stop(0)

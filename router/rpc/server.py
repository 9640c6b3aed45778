"""The gRPC listener: grpcio's asyncio server with one catch-all generic handler over raw
bytes, as grpc-go's `UnknownServiceHandler` with a raw codec (and Ray Serve's proxy) do.

A method not known to be unary is served as a bidirectional stream: on the wire a unary
call is the same HTTP/2 stream with one message each way, so one handler shape carries all
four kinds without knowing their schemas. A method known to be unary (the caller says which)
is served as one, which costs grpcio a quarter of the operations.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import grpc
import grpc.aio

Context = grpc.aio.ServicerContext[bytes, bytes]
# handle(method, request messages, context) -> answer messages
Handle = Callable[[str, AsyncIterator[bytes], Context], AsyncIterator[bytes]]


class _CatchAll(grpc.GenericRpcHandler):
    def __init__(self, handle: Handle, unary: Callable[[str], bool]) -> None:
        self.handle = handle
        self.unary = unary

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[bytes, bytes]:
        method = details.method
        if self.unary(method):
            # Known to be unary: served as one, a single batch of operations each way.
            async def one(request: bytes, context: Context) -> bytes:
                answer = b""
                async for message in self.handle(method, _single(request), context):
                    answer = message
                return answer

            return grpc.unary_unary_rpc_method_handler(one)

        # An async generator function itself: grpcio tells the kinds of handler apart by it.
        async def behaviour(
            requests: AsyncIterator[bytes], context: Context
        ) -> AsyncIterator[bytes]:
            async for message in self.handle(method, requests, context):
                yield message

        # No (de)serializers: the messages stay bytes.
        return grpc.stream_stream_rpc_method_handler(behaviour)


async def _single(message: bytes) -> AsyncIterator[bytes]:
    yield message


async def serve(
    host: str,
    port: int,
    handle: Handle,
    *,
    unary: Callable[[str], bool],
    reuse_port: bool,
    max_message: int,
) -> tuple[grpc.aio.Server, int]:
    """Start listening; returns the server and its port (a free one for port 0). `unary`
    says which methods are known to be unary; the rest are served as streams."""
    options = [
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        ("grpc.max_receive_message_length", max_message),
        ("grpc.max_send_message_length", -1),
    ]
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers((_CatchAll(handle, unary),))
    bound = server.add_insecure_port(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen for gRPC on {host}:{port}")
    await server.start()
    return server, bound

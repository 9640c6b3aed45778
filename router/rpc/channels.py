"""One gRPC channel per version address, made once per process and kept alive: a channel
multiplexes every call to its backend over HTTP/2, so a call never pays a connect."""

from __future__ import annotations

from typing import Final

import grpc
import grpc.aio

# Keepalive pings find a backend that went away while idle before a call does; the
# message limits are the backends' and the clients' business, not the router's.
OPTIONS: Final = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
]


class Channels:
    def __init__(self) -> None:
        self._open: dict[str, grpc.aio.Channel] = {}

    def stream(self, address: str, method: str) -> grpc.aio.StreamStreamMultiCallable[bytes, bytes]:
        """A raw-bytes bidirectional call of `method` on the version at `address`
        (`HOST:PORT`, or `grpcs://HOST:PORT` for TLS)."""
        return self._channel(address).stream_stream(method)

    def unary(self, address: str, method: str) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
        """A raw-bytes unary call: one batch of operations, where a stream takes four."""
        return self._channel(address).unary_unary(method)

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = self._open.get(address)
        if channel is None:
            if address.startswith("grpcs://"):
                credentials = grpc.ssl_channel_credentials()
                target = address.removeprefix("grpcs://")
                channel = grpc.aio.secure_channel(target, credentials, options=OPTIONS)
            else:
                channel = grpc.aio.insecure_channel(address, options=OPTIONS)
            self._open[address] = channel
        return channel

    async def close(self) -> None:
        channels, self._open = list(self._open.values()), {}
        for channel in channels:
            await channel.close()

"""gRPC through the router for any service (contract section 12): a plain grpcio client
against raw-bytes echo backends. All four call shapes pass message by message; the split,
pins by metadata, deadlines, statuses and metadata hold; the router's own errors carry
`x-router-error`; every call leaves one record."""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from router.protocols import protowire
from router.routing.choose import bucket
from tests.support.grpc_echo import Echo, echo_server
from tests.support.running import (
    RunningRouter,
    dead_url,
    read_log,
    requests_in,
    router_process,
    router_running,
)
from tests.support.waiting import poll

SERVICE = "echo.Echo"


class Stack:
    def __init__(self, router: RunningRouter, echoes: dict[str, Echo]) -> None:
        self.router = router
        self.echoes = echoes
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{router.router.grpc_port}")

    def unary(self, name: str) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
        return unary(self.channel, f"/{SERVICE}/{name}")

    def records(self) -> list[dict[str, Any]]:
        return self.router.records()


def unary(channel: grpc.aio.Channel, method: str) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
    return channel.unary_unary(method)


def table(addresses: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {
        "echo": {
            "salt": "g",
            "grpc_services": [SERVICE],
            "versions": {name: {"grpc_url": address} for name, address in addresses.items()},
            "split": {"v1": 50, "v2": 50},
            **extra,
        }
    }


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with AsyncExitStack() as exits:
        addresses, echoes = {}, {}
        for name in ("v1", "v2"):
            addresses[name], echoes[name] = await exits.enter_async_context(echo_server(name))
        running = await exits.enter_async_context(
            router_running(table(addresses), tmp_path, grpc_listen="127.0.0.1:0")
        )
        stack = Stack(running, echoes)
        exits.push_async_callback(stack.channel.close)
        yield stack


def assigned(user: str) -> str:
    return "v1" if bucket(user, "g") < 5000 else "v2"


async def test_unary_calls_follow_the_split_and_users_stick(stack: Stack) -> None:
    users = [f"u{i}" for i in range(20)]
    for user in users:
        for _ in range(2):
            call = stack.unary("Unary")(b"hi", metadata=(("x-user-id", user),))
            answer = await call
            assert answer == f"{assigned(user)}:hi".encode()
            assert ("x-initial", f"from-{assigned(user)}") in list(await call.initial_metadata())
            assert ("x-trailing", f"from-{assigned(user)}") in list(await call.trailing_metadata())
    await stack.router.router.stop()
    records = stack.records()
    assert len(records) == 40
    for record in records:
        assert record["protocol"] == "grpc"
        assert (record["method"], record["path"]) == ("POST", "/echo.Echo/Unary")
        assert (record["status"], record["grpc_status"], record["outcome"]) == (200, "OK", "ok")
        assert record["assigned_by"] == "split"
        assert 0 <= record["first_byte_ms"] <= record["latency_ms"]
    assert {r["version"] for r in records} == {"v1", "v2"}


async def test_x_model_version_pins_and_the_backend_is_told(stack: Stack) -> None:
    answer = await stack.unary("Unary")(b"x", metadata=(("x-model-version", "v2"),))
    assert answer == b"v2:x"
    (method, metadata) = stack.echoes["v2"].calls[-1]
    assert method == "/echo.Echo/Unary"
    assert metadata["x-model-version"] == "v2"
    assert metadata["x-request-id"]
    await stack.router.router.stop()
    assert [r["assigned_by"] for r in stack.records()] == ["header"]


async def test_all_four_shapes_pass_message_by_message(stack: Stack) -> None:
    pin = (("x-model-version", "v1"),)
    streaming: grpc.aio.UnaryStreamMultiCallable[bytes, bytes]
    streaming = stack.channel.unary_stream(f"/{SERVICE}/ServerStream")
    served = streaming(b"3", metadata=pin)
    assert [m async for m in served] == [b"v1:0", b"v1:1", b"v1:2"]

    async def three() -> AsyncIterator[bytes]:
        for m in (b"a", b"b", b"c"):
            yield m

    collected: grpc.aio.StreamUnaryMultiCallable[bytes, bytes]
    collected = stack.channel.stream_unary(f"/{SERVICE}/ClientStream")
    assert await collected(three(), metadata=pin) == b"v1:a|b|c"
    # Bidirectional: each answer arrives before the next message is sent.
    both: grpc.aio.StreamStreamMultiCallable[bytes, bytes]
    both = stack.channel.stream_stream(f"/{SERVICE}/Bidi")
    bidi = both(metadata=pin)
    for word in (b"one", b"two", b"three"):
        await bidi.write(word)
        assert await bidi.read() == b"v1:" + word
    await bidi.done_writing()
    assert await bidi.read() == grpc.aio.EOF
    assert await bidi.code() == grpc.StatusCode.OK


@pytest.mark.parametrize(
    "status", ["NOT_FOUND", "RESOURCE_EXHAUSTED", "INTERNAL", "UNAUTHENTICATED"]
)
async def test_the_backends_status_details_and_trailers_pass_through(
    stack: Stack, status: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.unary("Fail")(status.encode(), metadata=(("x-model-version", "v2"),))
    error = caught.value
    assert error.code() == grpc.StatusCode[status]
    assert error.details() == "v2 refused"
    assert ("x-backend", "said so") in list(error.trailing_metadata() or ())
    assert "x-router-error" not in dict(error.trailing_metadata() or ())
    await stack.router.router.stop()
    (record,) = stack.records()
    client = ("NOT_FOUND", "UNAUTHENTICATED")
    assert record["grpc_status"] == status
    assert record["outcome"] == ("client_error" if status in client else "server_error")


async def test_the_deadline_goes_on_capped_by_timeout_s(tmp_path: Path) -> None:
    async with (
        echo_server("v1") as (address, _),
        router_running(
            table({"v1": address, "v2": address}, timeout_s=2),
            tmp_path,
            grpc_listen="127.0.0.1:0",
        ) as running,
        grpc.aio.insecure_channel(f"127.0.0.1:{running.router.grpc_port}") as channel,
    ):
        ask = unary(channel, f"/{SERVICE}/Deadline")
        # grpc-timeout goes in whole units of the wire, rounded up by a few milliseconds.
        assert 0 < float(await ask(b"", timeout=0.8)) <= 0.85  # the caller's, passed on
        assert 1.0 < float(await ask(b"", timeout=30)) <= 2.05  # capped by timeout_s
        assert 1.0 < float(await ask(b"")) <= 2.05  # none: timeout_s
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await unary(channel, f"/{SERVICE}/Slow")(b"5", timeout=0.3)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await running.router.stop()
    slow = running.records()[-1]
    assert (slow["grpc_status"], slow["outcome"]) == ("DEADLINE_EXCEEDED", "timeout")


@pytest.mark.parametrize(
    ("method", "metadata", "status", "code"),
    [
        ("/nobody.Serves/This", (), "UNIMPLEMENTED", "not_found"),
        (f"/{SERVICE}/Unary", (("x-model-version", "v9"),), "NOT_FOUND", "unknown_version"),
    ],
)
async def test_the_routers_own_errors_are_statuses_with_x_router_error(
    stack: Stack, method: str, metadata: tuple[tuple[str, str], ...], status: str, code: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await unary(stack.channel, method)(b"", metadata=metadata)
    assert caught.value.code() == grpc.StatusCode[status]
    assert dict(caught.value.trailing_metadata() or ())["x-router-error"] == code
    await stack.router.router.stop()
    (record,) = stack.records()
    assert (record["grpc_status"], record["outcome"], record["protocol"]) == (
        status,
        "rejected",
        "grpc",
    )


async def test_a_caller_that_cancels_is_logged_client_closed(stack: Stack) -> None:
    call = stack.unary("Slow")(b"5", metadata=(("x-model-version", "v1"),))
    await asyncio.sleep(0.2)  # the call is at the backend
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await stack.router.router.stop()
    (record,) = stack.records()
    assert (record["status"], record["grpc_status"], record["outcome"]) == (
        499,
        "CANCELLED",
        "client_closed",
    )


async def test_every_worker_serves_grpc_on_the_shared_port(tmp_path: Path) -> None:
    async with AsyncExitStack() as exits:
        addresses = {}
        for name in ("v1", "v2"):
            addresses[name], _ = await exits.enter_async_context(echo_server(name))
        proc = await exits.enter_async_context(
            router_process(table(addresses), tmp_path, "--workers", "2", grpc_listen="127.0.0.1:0")
        )
        found = re.search(r"gRPC (\S+),", proc.banner)
        assert found, proc.banner
        # Each channel is one connection, which the kernel gives to one worker or the other.
        for i in range(16):
            async with grpc.aio.insecure_channel(found.group(1)) as channel:
                user = f"w{i}"
                answer = await unary(channel, f"/{SERVICE}/Unary")(
                    b"x", metadata=(("x-user-id", user),)
                )
                assert answer == f"{assigned(user)}:x".encode()
        proc.signal(signal.SIGTERM)
        assert await proc.wait() == 0
    records = requests_in(tmp_path / "routing.jsonl")
    assert len(records) == 16
    assert {r["grpc_status"] for r in records} == {"OK"}


async def test_a_unary_oip_call_is_copied_to_the_shadow_with_its_own_names(
    tmp_path: Path,
) -> None:
    """The copy carries the shadow's upstream_model in the message, X-Shadow, and leaves
    its own `shadow` record; the caller's answer is the primary's."""
    async with AsyncExitStack() as exits:
        (v1, _), (v3, shadow) = [
            await exits.enter_async_context(echo_server(n)) for n in ("v1", "v3")
        ]
        models = {
            "cancer": {
                "versions": {
                    "v1": {"grpc_url": v1},
                    "v3": {"grpc_url": v3, "upstream_model": "cancer-next"},
                },
                "split": {"v1": 100, "v3": 0},
                "shadow": {"version": "v3"},
            }
        }
        running = await exits.enter_async_context(
            router_running(models, tmp_path, grpc_listen="127.0.0.1:0")
        )
        channel = await exits.enter_async_context(
            grpc.aio.insecure_channel(f"127.0.0.1:{running.router.grpc_port}")
        )
        message = protowire.string_field(1, "cancer") + protowire.string_field(3, "req-1")
        answer = await unary(channel, "/inference.GRPCInferenceService/ModelInfer")(message)
        assert answer.startswith(b"v1:")
        await running.router.stop()
        (copied,) = shadow.messages
        assert protowire.strings(copied, (1, 3)) == {1: "cancer-next", 3: "req-1"}
        assert dict(shadow.calls[0][1])["x-shadow"] == "true"
    records = read_log(running.log_path)
    (copy,) = [r for r in records if r["event"] == "shadow"]
    assert (copy["version"], copy["primary_version"], copy["outcome"]) == ("v3", "v1", "ok")
    assert copy["agree"] is None


async def test_max_in_flight_holds_for_grpc_calls_too(tmp_path: Path) -> None:
    """One call at a time at v1, no queue: a second call at once is RESOURCE_EXHAUSTED
    `overloaded`, and the version is not marked down for it."""
    async with AsyncExitStack() as exits:
        address, echo = await exits.enter_async_context(echo_server("v1"))
        models = table({"v1": address, "v2": address})
        models["echo"]["versions"]["v1"].update(max_in_flight=1, queue_s=0)
        running = await exits.enter_async_context(
            router_running(models, tmp_path, grpc_listen="127.0.0.1:0")
        )
        channel = await exits.enter_async_context(
            grpc.aio.insecure_channel(f"127.0.0.1:{running.router.grpc_port}")
        )
        pin = (("x-model-version", "v1"),)
        slow = asyncio.ensure_future(unary(channel, f"/{SERVICE}/Slow")(b"1", metadata=pin))

        async def reached() -> bool | None:
            return bool(echo.calls) or None

        await poll(reached, 5.0, "the slow call holds v1's one place")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await unary(channel, f"/{SERVICE}/Unary")(b"x", metadata=pin)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert dict(caught.value.trailing_metadata() or ())["x-router-error"] == "overloaded"
        assert await slow == b"v1:slept"
        assert await unary(channel, f"/{SERVICE}/Unary")(b"y", metadata=pin) == b"v1:y"


async def test_a_grpc_version_that_keeps_failing_is_marked_down(tmp_path: Path) -> None:
    """Passive health for gRPC: `outlier.failures` UNAVAILABLE calls in a row mark the
    version's gRPC address down; the next call is refused at once, by the router."""
    models = table({"v1": dead_url().removeprefix("http://"), "v2": "127.0.0.1:9"})
    models["echo"]["outlier"] = {"failures": 2, "cooloff_s": 60}
    pin = (("x-model-version", "v1"),)
    async with (
        router_running(models, tmp_path, grpc_listen="127.0.0.1:0") as running,
        grpc.aio.insecure_channel(f"127.0.0.1:{running.router.grpc_port}") as channel,
    ):
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await unary(channel, f"/{SERVICE}/Unary")(b"x", metadata=pin)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "could not be reached" in (caught.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await unary(channel, f"/{SERVICE}/Unary")(b"x", metadata=pin)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "down after failures" in (caught.value.details() or "")
        assert dict(caught.value.trailing_metadata() or ())["x-router-error"] == (
            "upstream_unavailable"
        )
        await running.router.stop()
    assert [r["outcome"] for r in running.records()] == ["unavailable"] * 3

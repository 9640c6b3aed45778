"""Span export (contract section 15, `server.tracing`), received by a real OTLP/HTTP
receiver that decodes the protobuf: a request is a server span named after its model, each
backend attempt (first, fallback, shadow; HTTP and gRPC) a client span under it whose id the
backend continues; the ratio samples by trace id and a sampled-in caller is always kept;
no raw user id is ever an attribute; a collector that is down costs counted spans only."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import grpc.aio
import pytest
from prometheus_client import generate_latest

from router.observe.spans import QUEUE_SPANS
from router.observe.tracecontext import ratio_bound
from tests.support.grpc_echo import echo_server
from tests.support.metrics import Metrics, scrape
from tests.support.otlp import Collector, Received, collector
from tests.support.running import dead_url, read_log, router_process, router_running
from tests.support.tables import model
from tests.support.waiting import poll

CALLER_SPAN = "b7ad6b7169203331"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CALLER = f"00-{TRACE_ID}-{CALLER_SPAN}-01"
SPAN = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})\Z")
USER = "alice@example.com"
DROPPED = "model_router_spans_dropped", "model_router_spans_dropped_total"
EXPORTED = "model_router_spans_exported", "model_router_spans_exported_total"


def tracing(found: Collector, sample: float = 1.0) -> dict[str, Any]:
    return {"tracing": {"otlp_endpoint": found.url, "sample": sample}}


def by_kind(spans: list[Received], kind: str) -> list[Received]:
    return [s for s in spans if s.kind == kind]


async def test_a_request_is_a_server_span_and_each_attempt_a_child_the_backend_continues(
    backends: dict[str, str], tmp_path: Path
) -> None:
    # v0 is down: the first attempt fails, the fallback (v1) answers, v2 gets a shadow copy.
    versions = {"v0": dead_url(), **backends}
    models = model(versions, {"v0": 100, "v1": 0, "v2": 0}, fallback="v1", shadow={"version": "v2"})
    headers = {"traceparent": CALLER, "tracestate": "vendor=1", "X-User-ID": USER}
    async with collector() as found:
        async with (
            router_running(models, tmp_path, **tracing(found)) as running,
            aiohttp.ClientSession() as session,
            session.post(f"{running.url}/models/m/echo", headers=headers, data=b"{}") as resp,
        ):
            assert resp.status == 200
            answer = await resp.json()
            back = SPAN.match(resp.headers["traceresponse"])
        spans = await found.until(4)
    assert back is not None
    (server,) = by_kind(spans, "server")
    clients = {s.attributes["model_router.attempt"]: s for s in by_kind(spans, "client")}
    assert set(clients) == {"first", "fallback", "shadow"}
    # One trace: the caller's span is the server span's parent; the server span (whose id
    # the answer carries) is every attempt's parent.
    assert {s.trace_id for s in spans} == {TRACE_ID}
    assert server.parent_id == CALLER_SPAN
    assert server.span_id == back.group(2)
    assert {c.parent_id for c in clients.values()} == {server.span_id}
    assert len({c.span_id for c in clients.values()} | {server.span_id}) == 4
    # The backend that answered got the fallback attempt's own span, and the caller's state.
    got = dict(answer["headers"])
    sent = SPAN.match(got["traceparent"])
    assert sent is not None
    assert (sent.group(1), sent.group(2)) == (TRACE_ID, clients["fallback"].span_id)
    assert got["tracestate"] == "vendor=1"
    assert server.name == "m"
    assert server.attributes == {
        "model_router.model": "m",
        "model_router.version": "v1",
        "model_router.assigned_version": "v0",
        "model_router.assigned_by": "split",
        "model_router.bucket": server.attributes["model_router.bucket"],
        "model_router.config": server.attributes["model_router.config"],
        "model_router.outcome": "ok",
        "model_router.request_id": resp.headers["X-Request-ID"],
        "model_router.protocol": "rest",
        "http.request.method": "POST",
        "url.path": "/models/m/echo",
        "http.response.status_code": 200,
    }
    first, fallback, shadow = clients["first"], clients["fallback"], clients["shadow"]
    assert (first.attributes["model_router.version"], first.error) == ("v0", True)
    assert first.attributes["model_router.outcome"] == "unavailable"
    assert "http.response.status_code" not in first.attributes
    assert (fallback.attributes["model_router.version"], fallback.error) == ("v1", False)
    assert fallback.attributes["http.response.status_code"] == 200
    assert fallback.name == "m v1"
    assert shadow.attributes["model_router.version"] == "v2"
    for attempt in (first, fallback):  # how the version was chosen, on each attempt too
        assert attempt.attributes["model_router.assigned_version"] == "v0"
        assert attempt.attributes["model_router.bucket"] == server.attributes["model_router.bucket"]
    assert server.start_ns <= first.start_ns <= first.end_ns <= fallback.start_ns
    assert fallback.end_ns <= server.end_ns
    assert server.resource["service.name"] == "model-router"
    assert server.scope == "model-router"
    # Joined to the log by trace id, and no user id (raw or pseudonymised) in any span.
    records = read_log(running.log_path)
    assert {r["trace_id"] for r in records if r["event"] in ("request", "shadow")} == {TRACE_ID}
    pseudonym = next(r["user"] for r in records if r["event"] == "request")
    values = {str(v) for s in spans for v in s.attributes.values()}
    assert not {USER, pseudonym} & values


async def test_the_ratio_samples_by_trace_id_and_a_sampled_in_caller_is_always_kept(
    backends: dict[str, str], tmp_path: Path
) -> None:
    sample = 0.25
    answered: list[tuple[str, str]] = []  # (trace id, flags) of each traceresponse
    async with collector() as found:
        async with (
            router_running(model(backends, {"v1": 100}), tmp_path, **tracing(found, sample))
            as running,
            aiohttp.ClientSession() as session,
        ):  # fmt: skip
            for i in range(200):
                # Every tenth caller sampled its trace in; every tenth after those sent 00.
                headers = {}
                if i % 10 == 0:
                    headers["traceparent"] = f"00-{i + 1:032x}-{CALLER_SPAN}-01"
                elif i % 10 == 1:
                    headers["traceparent"] = f"00-{2**64 - 1 - i:032x}-{CALLER_SPAN}-00"
                async with session.get(f"{running.url}/models/m/echo", headers=headers) as resp:
                    back = SPAN.match(resp.headers["traceresponse"])
                    assert back is not None
                    answered.append((back.group(1), back.group(3)))
        spans = await found.until(1)
    bound = ratio_bound(sample)
    kept = {t for i, (t, _) in enumerate(answered) if i % 10 == 0 or int(t[16:], 16) < bound}
    assert 20 + 30 < len(kept) < 20 + 80  # 180 traces at 0.25, plus the 20 callers' own
    assert {s.trace_id for s in by_kind(spans, "server")} == kept
    assert len(by_kind(spans, "client")) == len(kept)
    # The answer and the backend learn the decision: 01 for an exported trace.
    assert {t for t, flags in answered if flags == "01"} == kept


async def test_sample_zero_exports_only_the_callers_who_sampled_in(
    backends: dict[str, str], tmp_path: Path
) -> None:
    async with collector() as found:
        async with (
            router_running(model(backends, {"v1": 100}), tmp_path, **tracing(found, 0.0))
            as running,
            aiohttp.ClientSession() as session,
        ):  # fmt: skip
            for flags in ("00", "01", None, "00"):
                headers = {} if flags is None else {"traceparent": CALLER[:-2] + flags}
                async with session.get(f"{running.url}/models/m/echo", headers=headers) as resp:
                    assert resp.status == 200
        spans = await found.until(2)
        await asyncio.sleep(1.5)  # a batch is sent within a second: nothing more comes
    assert len(spans) == 2
    assert {s.trace_id for s in spans} == {TRACE_ID}


async def test_without_a_tracing_section_nothing_is_exported_even_with_the_env_set(
    backends: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with collector() as found:
        # A user's OTEL_* environment does not turn export on: the table decides.
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", found.url)
        monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")
        async with (
            router_running(model(backends, {"v1": 100}), tmp_path) as running,
            aiohttp.ClientSession() as session,
            session.get(f"{running.url}/models/m/echo", headers={"traceparent": CALLER}) as resp,
        ):
            assert resp.status == 200
            assert running.router.proxy.tracer is None
        await asyncio.sleep(1.5)
    assert found.posts == 0


@pytest.mark.parametrize("down", ["hanging", "refusing"])
async def test_a_collector_that_is_down_costs_dropped_spans_counted_and_nothing_else(
    backends: dict[str, str], tmp_path: Path, down: str
) -> None:
    requests = 2 * QUEUE_SPANS  # two spans each: four times what the queue holds
    async with collector() as found:
        found.hold()  # no batch gets an answer: each waits out the exporter's timeout
        if down == "refusing":  # nothing listens there: connections are refused
            found.url = dead_url()
        async with (
            router_running(model(backends, {"v1": 100}), tmp_path, **tracing(found)) as running,
            aiohttp.ClientSession() as session,
        ):

            async def client(n: int) -> None:
                for _ in range(n):
                    async with session.get(f"{running.url}/models/m/echo") as resp:
                        assert resp.status == 200

            await asyncio.gather(*(client(requests // 8) for _ in range(8)))
            metrics = await scrape(session, running.router.admin_url)
            assert (metrics.value(*DROPPED, reason="queue_full") or 0) > 0
            await running.router.stop()
        found.release()
        registry = running.router.metrics.registry

        def counted() -> float:
            # The admin port is closed by now: the same exposition, read in-process.
            after = Metrics(generate_latest(registry).decode())
            exported = after.value(*EXPORTED) or 0
            return float(exported + sum(s.value for s in after.samples(*DROPPED)))

        async def all_counted() -> float | None:
            return counted() if counted() >= 2 * requests else None

        # A batch still being sent at the stop is counted when its export ends.
        assert await poll(all_counted, 30, "every span exported or counted") == 2 * requests
    assert len(running.records()) == requests


async def test_grpc_calls_are_server_spans_with_rpc_attributes_and_a_child_per_attempt(
    tmp_path: Path,
) -> None:
    async with echo_server("v1") as (address, echo), collector() as found:
        models = {
            "echo": {
                "grpc_services": ["echo.Echo"],
                "versions": {"v1": {"grpc_url": address}},
                "split": {"v1": 100},
            }
        }
        server = {"grpc_listen": "127.0.0.1:0", **tracing(found)}
        async with (
            router_running(models, tmp_path, **server) as running,
            grpc.aio.insecure_channel(f"127.0.0.1:{running.router.grpc_port}") as channel,
        ):
            unary: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]
            unary = channel.unary_unary("/echo.Echo/Unary")
            await unary(b"x", metadata=(("traceparent", CALLER),))
        spans = await found.until(2)
    (call,) = by_kind(spans, "server")
    (attempt,) = by_kind(spans, "client")
    assert call.name == "echo"
    assert call.parent_id == CALLER_SPAN
    assert attempt.parent_id == call.span_id
    sent = SPAN.match(echo.calls[0][1]["traceparent"])
    assert sent is not None
    assert sent.group(2) == attempt.span_id
    for span in (call, attempt):
        assert span.attributes["rpc.system"] == "grpc"
        assert span.attributes["rpc.service"] == "echo.Echo"
        assert span.attributes["rpc.method"] == "Unary"
        assert span.attributes["rpc.grpc.status_code"] == 0
    assert call.attributes["model_router.protocol"] == "grpc"
    assert attempt.attributes["server.port"] == int(address.rpartition(":")[2])


async def test_every_worker_exports_its_own_spans_and_a_stop_sends_what_is_queued(
    backends: dict[str, str], tmp_path: Path
) -> None:
    async with collector() as found:
        async with router_process(
            model(backends, {"v1": 100}), tmp_path, "--workers", "2", **tracing(found)
        ) as proc:
            for _ in range(40):
                # A new connection each: the kernel spreads connections over the workers.
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(f"{proc.url}/models/m/echo") as resp,
                ):
                    assert resp.status == 200
            proc.signal()
            assert await proc.wait() == 0
        spans = await found.until(80)
    assert len(by_kind(spans, "server")) == len(by_kind(spans, "client")) == 40
    workers = {s.resource["service.instance.id"] for s in spans}
    assert len(workers) == 2  # each worker process is an instance of its own
    records = read_log(proc.log_path)
    assert {r["trace_id"] for r in records if r["event"] == "request"} == {
        s.trace_id for s in spans
    }

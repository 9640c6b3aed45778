"""W3C Trace Context propagated on every protocol (contract section 15), with no tracing
section: the caller's trace continues through the router's own span, each backend attempt
gets a new child span (never the caller's parent id unchanged), answers carry
`traceresponse`, and every record carries the trace id."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp
import grpc
import grpc.aio
import pytest

from router.observe.tracecontext import continued, new_span_id
from tests.support.grpc_echo import echo_server
from tests.support.running import read_log, router_running
from tests.support.tables import model

CALLER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
SPAN = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})\Z")


@pytest.mark.parametrize(
    ("given", "continues"),
    [
        (CALLER, True),
        (CALLER.replace("-01", "-00"), True),
        ("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-later-fields", True),
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra", False),
        ("ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", False),
        ("00-00000000000000000000000000000000-b7ad6b7169203331-01", False),
        ("00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01", False),
        ("00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01", False),
        ("garbage", False),
        (None, False),
    ],
)
def test_a_valid_traceparent_is_continued_and_any_other_starts_a_trace(
    given: str | None, continues: bool
) -> None:
    trace = continued(given, "vendor=1")
    assert (trace.trace_id == TRACE_ID) is continues
    assert SPAN.match(trace.response())
    (parent,) = (value for name, value in trace.upstream(new_span_id()) if name == "traceparent")
    assert SPAN.match(parent)
    assert new_span_id() != new_span_id()  # a new span for each attempt
    assert trace.state == ("vendor=1" if continues else None)


async def test_http_the_backend_continues_the_routers_span_and_the_answer_says_so(
    backends: dict[str, str], tmp_path: Path
) -> None:
    models = model(backends, {"v1": 100, "v2": 0}, shadow={"version": "v2"})
    headers = {"traceparent": CALLER, "tracestate": "vendor=1", "X-User-ID": "u"}
    async with (
        router_running(models, tmp_path) as running,
        aiohttp.ClientSession() as session,
        session.get(f"{running.url}/models/m/echo", headers=headers) as resp,
    ):
        answer = await resp.json()
        back = SPAN.match(resp.headers["traceresponse"])
    got = dict(answer["headers"])
    sent = SPAN.match(got["traceparent"])
    assert sent is not None
    assert back is not None
    assert sent.group(1) == back.group(1) == TRACE_ID  # one trace throughout
    assert sent.group(2) not in ("b7ad6b7169203331", back.group(2))  # a span of its own
    assert back.group(2) != "b7ad6b7169203331"  # the router's span, not the caller's
    assert got["tracestate"] == "vendor=1"
    records = read_log(running.log_path)
    (request,) = [r for r in records if r["event"] == "request"]
    (copy,) = [r for r in records if r["event"] == "shadow"]
    assert request["trace_id"] == copy["trace_id"] == TRACE_ID


async def test_http_without_traceparent_a_trace_starts_and_errors_carry_it_too(
    backends: dict[str, str], tmp_path: Path
) -> None:
    async with (
        router_running(model(backends, {"v1": 100, "v2": 0}), tmp_path) as running,
        aiohttp.ClientSession() as session,
    ):
        async with session.get(f"{running.url}/models/m/echo") as resp:
            sent = SPAN.match(dict((await resp.json())["headers"])["traceparent"])
            back = SPAN.match(resp.headers["traceresponse"])
        async with session.get(f"{running.url}/models/nope/x") as resp:
            assert resp.status == 404
            refused = SPAN.match(resp.headers["traceresponse"])
        await running.router.stop()
    assert sent is not None
    assert back is not None
    assert refused is not None
    assert sent.group(1) == back.group(1) != refused.group(1)
    first, second = running.records()
    assert (first["trace_id"], second["trace_id"]) == (back.group(1), refused.group(1))


async def test_grpc_the_backend_gets_a_child_span_and_the_trailers_the_routers(
    tmp_path: Path,
) -> None:
    async with echo_server("v1") as (address, echo):
        models = {
            "echo": {
                "grpc_services": ["echo.Echo"],
                "versions": {"v1": {"grpc_url": address}},
                "split": {"v1": 100},
            }
        }
        async with (
            router_running(models, tmp_path, grpc_listen="127.0.0.1:0") as running,
            grpc.aio.insecure_channel(f"127.0.0.1:{running.router.grpc_port}") as channel,
        ):
            unary: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]
            unary = channel.unary_unary("/echo.Echo/Unary")
            call = unary(b"x", metadata=(("traceparent", CALLER),))
            await call
            trailing = dict(await call.trailing_metadata() or ())
            await running.router.stop()
    sent = SPAN.match(echo.calls[0][1]["traceparent"])
    back = SPAN.match(str(trailing["traceresponse"]))
    assert sent is not None
    assert back is not None
    assert sent.group(1) == back.group(1) == TRACE_ID
    assert len({sent.group(2), back.group(2), "b7ad6b7169203331"}) == 3
    (record,) = running.records()
    assert record["trace_id"] == TRACE_ID

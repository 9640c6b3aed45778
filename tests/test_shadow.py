"""Shadow traffic (contract section 8), with real backends and the real router on loopback:
what a copy carries, what it never changes for the client, and what it leaves in the log."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from tests.support.metrics import scrape
from tests.support.running import (
    dead_url,
    read_log,
    router_from_file,
    router_running,
    serve,
    table_data,
)
from tests.support.waiting import poll

MIB = 1024 * 1024


@dataclass
class Shadow:
    """A shadow backend that remembers what it got and answers as told: `mode` is
    "answer" (JSON `{"prediction": <answer>}`), "hang" (until `gate` opens), "fail" (500)
    or "text" (an answer that is not JSON)."""

    mode: str = "answer"
    answer: Any = 1
    seen: list[dict[str, Any]] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    waiting: int = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=8 * MIB)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append({"method": request.method, "target": request.raw_path,
                          "headers": dict(request.headers), "body": body})  # fmt: skip
        if self.mode == "hang":
            self.waiting += 1
            try:
                await self.gate.wait()
            finally:
                self.waiting -= 1
        if self.mode == "fail":
            return web.json_response({"error": "boom"}, status=500)
        if self.mode == "text":
            return web.Response(text="not json")
        return web.json_response({"prediction": self.answer, "version": "v3"})


def model(backends: dict[str, str], shadow_url: str, **shadow: Any) -> dict[str, Any]:
    return {"m": {
        "versions": {"v1": {"url": backends["v1"]}, "v2": {"url": backends["v2"]},
                     "v3": {"url": shadow_url, "timeout_s": 2}},
        "split": {"v1": 100}, "log_response": ["prediction"],
        "shadow": {"version": "v3", **shadow},
    }}  # fmt: skip


@pytest.fixture
async def shadow(aiohttp_server: AiohttpServer) -> AsyncIterator[tuple[Shadow, str]]:
    backend = Shadow()
    url = await serve(aiohttp_server, backend.app())
    yield backend, url
    backend.gate.set()  # nothing stays blocked past the test


def shadow_records(path: Path) -> list[dict[str, Any]]:
    return [r for r in read_log(path) if r["event"] == "shadow"]


async def post(client: aiohttp.ClientSession, url: str, **kw: Any) -> tuple[int, dict[str, Any]]:
    async with client.post(url, **kw) as resp:
        return resp.status, {"headers": dict(resp.headers), "body": await resp.read()}


async def test_a_copy_carries_the_same_request_and_the_client_sees_only_the_primary(
    backends: dict[str, str], shadow: tuple[Shadow, str], tmp_path: Path
) -> None:
    backend, url = shadow
    headers = {"X-User-ID": "alice", "X-Custom": "kept", "X-Request-ID": "req-shadow-1",
               "X-Shadow": "true"}  # fmt: skip  # a client's X-Shadow never reaches a backend
    async with router_running(model(backends, url), tmp_path) as r, aiohttp.ClientSession() as c:
        async with c.post(f"{r.url}/models/m/predict?x=1&y=2", data=b'{"rows": [1]}',
                          headers=headers) as resp:  # fmt: skip
            answer = await resp.json()
            assert resp.status == 200
            assert resp.headers["X-Model-Version"] == "v1"
            assert "X-Shadow" not in resp.headers
        assert answer == {"prediction": 1, "probability": 0.75, "version": "v1"}
        await poll(lambda: _some(backend.seen), 5, "the copy reaching the shadow")
    (copy,) = backend.seen
    assert copy["method"] == "POST"
    assert copy["target"] == "/predict?x=1&y=2"
    assert copy["body"] == b'{"rows": [1]}'
    assert copy["headers"]["X-Custom"] == "kept"
    assert copy["headers"]["X-User-ID"] == "alice"
    assert copy["headers"]["X-Shadow"] == "true"
    assert copy["headers"]["X-Model-Version"] == "v3"
    assert copy["headers"]["X-Request-ID"] == "req-shadow-1"
    (record,) = shadow_records(r.log_path)
    assert record["request_id"] == "req-shadow-1"
    assert (record["model"], record["version"], record["primary_version"]) == ("m", "v3", "v1")
    assert (record["status"], record["outcome"], record["agree"]) == (200, "ok", True)
    assert record["response"] == {"prediction": 1}
    assert record["primary_upstream_ms"] > 0
    assert record["upstream_ms"] > 0
    assert record["user"] == r.records()[0]["user"]  # the same pseudonym as the request's


async def _some(items: list[Any]) -> bool | None:
    return True if items else None


async def test_the_client_never_waits_for_the_shadow(
    backends: dict[str, str], shadow: tuple[Shadow, str], tmp_path: Path
) -> None:
    """While the shadow holds its copy unanswered, the client has its answer already."""
    backend, url = shadow
    backend.mode = "hang"
    async with router_running(model(backends, url), tmp_path) as r, aiohttp.ClientSession() as c:
        for _ in range(3):
            status, _ = await post(c, f"{r.url}/models/m/predict", data=b"{}")
            assert status == 200
        await poll(lambda: _at_least(lambda: backend.waiting, 3), 5, "three copies held")
        assert backend.waiting == 3  # all three still unanswered: nobody waited for them
        backend.gate.set()
    records = shadow_records(r.log_path)
    assert [x["outcome"] for x in records] == ["ok"] * 3


async def _at_least(value: Any, n: int) -> bool | None:
    return True if value() >= n else None


@pytest.mark.parametrize("trouble", ["hang", "fail", "down"])
async def test_a_shadow_that_hangs_fails_or_is_down_changes_nothing_for_clients(
    trouble: str, backends: dict[str, str], shadow: tuple[Shadow, str], tmp_path: Path
) -> None:
    backend, url = shadow
    backend.mode = trouble
    url = dead_url() if trouble == "down" else url
    table = model(backends, url, max_in_flight=64)
    table["m"]["versions"]["v3"]["timeout_s"] = 0.3
    table["m"]["fallback"] = "v2"
    async with router_running(table, tmp_path) as r, aiohttp.ClientSession() as c:
        for i in range(20):
            status, resp = await post(c, f"{r.url}/models/m/predict", data=b"{}",
                                      headers={"X-User-ID": f"u{i}"})  # fmt: skip
            assert status == 200
            assert resp["headers"]["X-Model-Version"] == "v1"
        metrics = await scrape(c, r.router.admin_url)
        assert metrics.value("model_router_upstream_up", model="m", version="v1") == 1
        await poll(lambda: _at_least(lambda: len(shadow_records(r.log_path)), 20), 10,
                   "every copy logged")  # fmt: skip
    expected = {"hang": "timeout", "fail": "server_error", "down": "unavailable"}[trouble]
    records = shadow_records(r.log_path)
    assert len(records) == 20  # exactly one shadow record per copy
    if trouble == "down":  # after 5 refused connections in a row (outlier.failures), the
        # copies are not even tried for the cool-off: dropped as shadow_down
        outcomes = [(x["outcome"], x.get("drop_reason")) for x in records]
        tried = outcomes.count(("unavailable", None))
        assert 5 <= tried <= 8  # a copy may start before the previous one's failure is in
        assert outcomes.count(("dropped", "shadow_down")) == 20 - tried
    else:
        assert {x["outcome"] for x in records} == {expected}
    assert all(x["agree"] is None for x in records)
    requests = r.records()
    assert len(requests) == 20  # and one request record per client request
    assert {x["version"] for x in requests} == {"v1"}  # never the fallback
    assert sorted(x["request_id"] for x in records) == sorted(x["request_id"] for x in requests)


@pytest.mark.parametrize("buffering", [True, False])
async def test_large_and_streamed_bodies_are_logged_as_dropped(
    backends: dict[str, str], shadow: tuple[Shadow, str], tmp_path: Path, buffering: bool
) -> None:
    # A small chunked body is read whole first (server.request_buffering), so it is copied.
    backend, url = shadow

    async def chunked() -> AsyncIterator[bytes]:
        yield b'{"rows": '
        yield b"[1]}"

    async with (
        router_running(model(backends, url), tmp_path, request_buffering=buffering) as r,
        aiohttp.ClientSession() as c,
    ):
        status, _ = await post(c, f"{r.url}/models/m/upload", data=io.BytesIO(b"x" * (2 * MIB)))
        assert status == 200
        status, _ = await post(c, f"{r.url}/models/m/upload", data=chunked())
        assert status == 200
    records = shadow_records(r.log_path)
    chunked_copy = ("ok", None) if buffering else ("dropped", "body_too_large")
    assert [(x["outcome"], x.get("drop_reason")) for x in records] == [
        ("dropped", "body_too_large"),
        chunked_copy,
    ]
    assert len(backend.seen) == int(buffering)


async def test_copies_beyond_max_in_flight_are_dropped_and_counted(
    backends: dict[str, str], shadow: tuple[Shadow, str], tmp_path: Path
) -> None:
    backend, url = shadow
    backend.mode = "hang"
    table = model(backends, url, max_in_flight=2)
    async with router_running(table, tmp_path) as r, aiohttp.ClientSession() as c:
        for _ in range(5):
            status, _ = await post(c, f"{r.url}/models/m/predict", data=b"{}")
            assert status == 200
        metrics = await scrape(c, r.router.admin_url)
        backend.gate.set()
    dropped = metrics.value(
        "model_router_shadow_requests", "model_router_shadow_requests_total",
        model="m", version="v3", outcome="dropped",
    )  # fmt: skip
    assert dropped == 3
    records = shadow_records(r.log_path)
    outcomes = sorted((x["outcome"], x.get("drop_reason")) for x in records)
    assert outcomes == [("dropped", "overloaded")] * 3 + [("ok", None)] * 2
    assert len(backend.seen) == 2


@pytest.mark.parametrize(
    ("mode", "answer", "agree"),
    [("answer", 1.0, True), ("answer", True, False), ("answer", 0, False),
     ("text", None, None), ("fail", None, None)],
    ids=["1.0-is-1", "true-is-not-1", "differs", "not-json", "server-error"],
)  # fmt: skip
async def test_agreement_is_judged_by_value_on_ok_json_answers(
    mode: str,
    answer: Any,
    agree: bool | None,
    backends: dict[str, str],
    shadow: tuple[Shadow, str],
    tmp_path: Path,
) -> None:
    backend, url = shadow
    backend.mode, backend.answer = mode, answer
    async with router_running(model(backends, url), tmp_path) as r, aiohttp.ClientSession() as c:
        status, _ = await post(c, f"{r.url}/models/m/predict", data=b"{}")
        assert status == 200
        await poll(lambda: _some(shadow_records(r.log_path)), 5, "the shadow record")
        metrics = await scrape(c, r.router.admin_url)
    (record,) = shadow_records(r.log_path)
    assert record["agree"] is agree
    word = "null" if agree is None else str(agree).lower()
    family = "model_router_shadow_agreement"
    assert metrics.value(family, f"{family}_total", model="m", version="v3", agree=word) == 1


async def test_requests_for_the_shadow_version_itself_are_not_copied(
    backends: dict[str, str], shadow: tuple[Shadow, str], tmp_path: Path
) -> None:
    backend, url = shadow
    async with router_running(model(backends, url), tmp_path) as r, aiohttp.ClientSession() as c:
        await post(c, f"{r.url}/models/m/versions/v3/predict", data=b"{}")  # pinned to v3
        await post(c, f"{r.url}/models/m/predict", data=b"{}", headers={"X-Model-Version": "v3"})
        await post(c, f"{r.url}/models/m/versions/v2/predict", data=b"{}")  # pinned elsewhere
    records = shadow_records(r.log_path)
    assert [x["primary_version"] for x in records] == ["v2"]
    assert len(backend.seen) == 3  # two answered as v3 itself, one copy


async def test_percent_copies_a_share_of_requests(
    backends: dict[str, str], shadow: tuple[Shadow, str], tmp_path: Path
) -> None:
    _backend, url = shadow
    table = model(backends, url, percent=25)
    async with router_running(table, tmp_path) as r, aiohttp.ClientSession() as c:
        for _ in range(400):
            await post(c, f"{r.url}/models/m/predict", data=b"{}")
    copies = len(shadow_records(r.log_path))
    assert 50 <= copies <= 150  # 100 expected; the bounds are 5.8 standard deviations out
    assert len(r.records()) == 400


async def test_reload_adds_changes_and_removes_a_shadow_live(
    backends: dict[str, str], shadow: tuple[Shadow, str], tmp_path: Path
) -> None:
    _backend, url = shadow
    config = tmp_path / "routes.yaml"
    log_path = tmp_path / "routing.jsonl"
    tables = [model(backends, url), model(backends, url)]
    del tables[0]["m"]["shadow"]

    def write(models: dict[str, Any]) -> None:
        config.write_bytes(orjson.dumps(table_data(models, log_path)))

    write(tables[0])
    async with router_from_file(config) as router, aiohttp.ClientSession() as c:
        url_of = f"{router.url}/models/m/predict"
        await post(c, url_of, data=b"{}")
        write(tables[1])
        assert (await router.tables.reload("test")).result == "loaded"
        await post(c, url_of, data=b"{}")
        write(tables[0])
        assert (await router.tables.reload("test")).result == "loaded"
        await post(c, url_of, data=b"{}")
    records = shadow_records(log_path)
    assert len(records) == 1  # only the request made while the shadow was in the table
    assert len([x for x in read_log(log_path) if x["event"] == "request"]) == 3


async def test_copies_in_flight_at_shutdown_get_drain_s_then_are_logged(
    backends: dict[str, str], shadow: tuple[Shadow, str], tmp_path: Path
) -> None:
    backend, url = shadow
    backend.mode = "hang"
    table = model(backends, url)
    table["m"]["versions"]["v3"]["timeout_s"] = 30
    async with router_running(table, tmp_path, drain_s=0.3) as r, aiohttp.ClientSession() as c:
        status, _ = await post(c, f"{r.url}/models/m/predict", data=b"{}")
        assert status == 200
        await poll(lambda: _at_least(lambda: backend.waiting, 1), 5, "the copy held")
    (record,) = shadow_records(r.log_path)
    assert (record["outcome"], record["drop_reason"]) == ("dropped", "shutting_down")


async def test_a_copy_of_a_request_whose_primary_failed_names_the_version_meant(
    backends: dict[str, str], shadow: tuple[Shadow, str], tmp_path: Path
) -> None:
    backend, url = shadow
    table = model({**backends, "v1": dead_url()}, url)
    async with router_running(table, tmp_path) as r, aiohttp.ClientSession() as c:
        status, _ = await post(c, f"{r.url}/models/m/predict", data=b"{}")
        assert status == 502
    (record,) = shadow_records(r.log_path)
    assert (record["primary_version"], record["outcome"], record["agree"]) == ("v1", "ok", None)
    assert record["primary_upstream_ms"] is None
    assert len(backend.seen) == 1

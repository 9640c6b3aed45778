"""The admin listener (contract section 6): probes, the config view, the token, metrics, and
the upstream health it reports (passive outlier detection and active checks).

Metrics are read with prometheus-client's own parser, never by matching text.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpServer
from yarl import URL

from router.app import Router
from router.config.validate import load_table
from tests.support.client import get_json
from tests.support.echo import SEEN, create_echo_app
from tests.support.metrics import REQUESTS, Metrics, scrape
from tests.support.running import (
    LOOPBACK,
    dead_url,
    requests_in,
    router_from_file,
    serve,
    table_data,
)
from tests.support.tables import model
from tests.support.waiting import poll


def write_table(tmp_path: Path, models: dict[str, Any], **server: Any) -> Path:
    """`tmp_path/routes.yaml`, logging to `tmp_path/routing.jsonl`."""
    config = tmp_path / "routes.yaml"
    config.write_text(yaml.safe_dump(table_data(models, tmp_path / "routing.jsonl", **server)))
    return config


@asynccontextmanager
async def started(
    tmp_path: Path, models: dict[str, Any], **server: Any
) -> AsyncIterator[tuple[Router, Path]]:
    """A router in this process on a table file in tmp_path; yields it and the table path."""
    config = write_table(tmp_path, models, **server)
    async with router_from_file(config) as router:
        yield router, config


def two_versions(
    backends: dict[str, str], split: dict[str, float] | None = None, **settings: Any
) -> dict[str, Any]:
    """Model `m` on the two echo backends, all users on v1 unless `split` says otherwise."""
    return model(backends, split or {"v1": 100, "v2": 0}, **settings)


async def upstream_up(
    client: aiohttp.ClientSession, admin_url: str, model: str, version: str
) -> float | None:
    metrics = await scrape(client, admin_url)
    return metrics.value("model_router_upstream_up", model=model, version=version)


async def wait_upstream_up(
    client: aiohttp.ClientSession,
    admin_url: str,
    model: str,
    version: str,
    up: float,
    within: float,
) -> None:
    async def probe() -> bool | None:
        return True if await upstream_up(client, admin_url, model, version) == up else None

    await poll(probe, within, f"model_router_upstream_up{{{model}/{version}}} == {up}")


async def down_list(client: aiohttp.ClientSession, admin_url: str) -> list[str]:
    _, view = await get_json(client, f"{admin_url}/admin/config")
    down: list[str] = view["down"]
    return down


# --- probes and the config view ---


async def test_probes_and_the_config_view(backends: dict[str, str], tmp_path: Path) -> None:
    models = two_versions(backends, split={"v1": 50, "v2": 50})
    async with started(tmp_path, models) as (router, config), aiohttp.ClientSession() as client:
        digest = load_table(config).digest
        status, _ = await get_json(client, f"{router.admin_url}/healthz")
        assert status == 200
        status, ready = await get_json(client, f"{router.admin_url}/readyz")
        assert (status, ready["config"]) == (200, digest)
        status, view = await get_json(client, f"{router.admin_url}/admin/config")
    assert status == 200
    assert view["config"] == digest
    loaded_at = dt.datetime.fromisoformat(view["loaded_at"].replace("Z", "+00:00"))
    assert abs((dt.datetime.now(dt.UTC) - loaded_at).total_seconds()) < 60
    assert view["table"]["models"]["m"]["split"] == {"v1": 50, "v2": 50}
    assert view["table"]["models"]["m"]["versions"]["v2"] == {"url": backends["v2"]}
    assert view["last_refusal"] is None


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/admin/config"),
        ("GET", "/metrics"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("POST", "/admin/reload"),
    ],
)
async def test_admin_paths_are_not_served_on_the_public_port(
    backends: dict[str, str], tmp_path: Path, method: str, path: str
) -> None:
    async with (
        started(tmp_path, two_versions(backends)) as (router, _),
        aiohttp.ClientSession() as client,
        client.request(method, router.url + path) as resp,
    ):
        status, body = resp.status, await resp.json()
    assert status == 404
    assert body["error"]["code"] == "not_found"


async def test_admin_posts_need_the_bearer_token(
    backends: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = "s3cret-token"
    monkeypatch.setenv("TEST_ADMIN_TOKEN", token)
    models = two_versions(backends)
    async with (
        started(tmp_path, models, admin_token_env="TEST_ADMIN_TOKEN") as (router, _),
        aiohttp.ClientSession() as client,
    ):
        refused = [
            {},
            {"Authorization": "Bearer wrong-token"},
            {"Authorization": f"Basic {token}"},
            {"Authorization": token},
            {"Authorization": f"Bearer {token}x"},
        ]
        for headers in refused:
            async with client.post(f"{router.admin_url}/admin/reload", headers=headers) as resp:
                assert resp.status == 401, headers
                assert (await resp.json())["error"]["code"] == "unauthorized"
        headers = {"Authorization": f"Bearer {token}"}
        async with client.post(f"{router.admin_url}/admin/reload", headers=headers) as resp:
            assert resp.status == 200
            assert (await resp.json())["result"] == "unchanged"
        for path in ("/healthz", "/readyz", "/admin/config", "/metrics"):
            async with client.get(router.admin_url + path) as resp:
                assert resp.status == 200, path


async def test_admin_posts_are_open_when_the_token_variable_is_unset(
    backends: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TEST_ADMIN_TOKEN", raising=False)
    models = two_versions(backends)
    async with (
        started(tmp_path, models, admin_token_env="TEST_ADMIN_TOKEN") as (router, _),
        aiohttp.ClientSession() as client,
        client.post(f"{router.admin_url}/admin/reload") as resp,
    ):
        assert resp.status == 200
        assert (await resp.json())["result"] == "unchanged"


# --- metrics ---


async def test_metrics_count_requests_latency_reloads_and_build(
    backends: dict[str, str], tmp_path: Path
) -> None:
    models = two_versions(backends)
    async with started(tmp_path, models) as (router, _), aiohttp.ClientSession() as client:
        for path in ("/models/m/echo", "/models/m/echo", "/models/m/status/500", "/models/x/a"):
            async with client.get(router.url + path, headers={"X-User-ID": "u"}) as resp:
                await resp.read()

        async def counted() -> Metrics | None:
            metrics = await scrape(client, router.admin_url)
            return metrics if sum(s.value for s in metrics.samples(*REQUESTS)) == 4 else None

        metrics = await poll(counted, 3.0, "four requests counted")

        # The watcher may load the new file before the POST does; either way, one load.
        write_table(tmp_path, two_versions(backends, split={"v1": 50, "v2": 50}))
        async with client.post(f"{router.admin_url}/admin/reload") as resp:
            assert resp.status == 200

        async def reloaded() -> Metrics | None:
            after = await scrape(client, router.admin_url)
            loaded = after.value(
                "model_router_reloads", "model_router_reloads_total", result="loaded"
            )
            return after if loaded == 1 else None

        after = await poll(reloaded, 3.0, "a reload counted")

    assert metrics.value(*REQUESTS, model="m", version="v1", outcome="ok") == 2
    assert metrics.value(*REQUESTS, model="m", version="v1", outcome="server_error") == 1
    # The unknown model: its labels are the router's choice, its outcome is the contract's.
    rejected = [s.value for s in metrics.samples(*REQUESTS) if s.labels["outcome"] == "rejected"]
    assert rejected == [1]

    latency = "model_router_request_duration_seconds"
    assert metrics.families[latency].type == "histogram"
    buckets = {
        s.labels["le"]: s.value
        for s in metrics.samples(latency, f"{latency}_bucket")
        if (s.labels["model"], s.labels["version"]) == ("m", "v1")
    }
    assert {"0.001", "10.0", "+Inf"} <= buckets.keys()
    assert metrics.value(latency, f"{latency}_count", model="m", version="v1") == 3
    assert buckets["+Inf"] == 3

    build = after.samples("model_router_build_info")
    assert len(build) == 1
    assert build[0].value == 1
    assert build[0].labels["version"]


# --- upstream health ---


class HangUp:
    """A TCP server on a given port that accepts each connection and closes it at once: a
    backend that fails every request. Counts the connections it accepted."""

    def __init__(self) -> None:
        self.accepted = 0
        self._server: asyncio.Server | None = None

    async def open(self, port: int) -> None:
        self._server = await asyncio.start_server(self._hang_up, LOOPBACK, port)

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _hang_up(self, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        writer.close()
        await writer.wait_closed()


async def test_a_failing_version_is_skipped_for_the_fallback_then_probed_back(
    backends: dict[str, str], tmp_path: Path, aiohttp_server: AiohttpServer
) -> None:
    url = dead_url()
    port = URL(url).port
    assert port is not None
    versions = {"v1": {"url": url}, "v2": {"url": backends["v2"]}}
    models = {"m": {
        "versions": versions, "split": {"v1": 100, "v2": 0}, "fallback": "v2",
        "outlier": {"failures": 3, "cooloff_s": 1},
    }}  # fmt: skip
    failing = HangUp()
    await failing.open(port)
    try:
        async with started(tmp_path, models) as (router, _), aiohttp.ClientSession() as client:

            async def ask(request_id: str) -> str:
                headers = {"X-User-ID": "u", "X-Request-ID": request_id}
                status, body = await get_json(
                    client, f"{router.url}/models/m/echo", headers=headers
                )
                assert status == 200, body
                return str(body["version"])

            assert [await ask(f"failing-{i}") for i in range(3)] == ["v2"] * 3
            tried = failing.accepted
            assert tried >= 3
            # Marked down: answered by the fallback without a connection to v1.
            assert [await ask(f"down-{i}") for i in range(3)] == ["v2"] * 3
            assert failing.accepted == tried
            assert await upstream_up(client, router.admin_url, "m", "v1") == 0
            assert await down_list(client, router.admin_url) == ["m/v1"]

            await failing.close()
            await serve(aiohttp_server, create_echo_app("v1"), port)
            # After the cool-off one probe goes to v1; it succeeds, so v1 is up again.
            probes = iter(range(1000))

            async def back() -> bool | None:
                return True if await ask(f"probe-{next(probes)}") == "v1" else None

            await poll(back, 3.0, "v1 answering again after the cool-off")
            assert await upstream_up(client, router.admin_url, "m", "v1") == 1
            assert await down_list(client, router.admin_url) == []
            assert await ask("recovered") == "v1"
    finally:
        await failing.close()
    records = {r["request_id"]: r for r in requests_in(tmp_path / "routing.jsonl")}
    for request_id in ("failing-0", "failing-1", "failing-2", "down-0", "down-1", "down-2"):
        record = records[request_id]
        assert (record["assigned_version"], record["version"]) == ("v1", "v2"), record
        assert record["status"] == 200
    assert (records["recovered"]["assigned_version"], records["recovered"]["version"]) == (
        "v1",
        "v1",
    )


async def test_a_down_version_without_fallback_fails_at_once(tmp_path: Path) -> None:
    port = URL(dead_url()).port
    assert port is not None
    models = {"solo": {
        "versions": {"v1": {"url": f"http://{LOOPBACK}:{port}"}}, "split": {"v1": 100},
        "outlier": {"failures": 3, "cooloff_s": 30},
    }}  # fmt: skip
    failing = HangUp()
    await failing.open(port)
    try:
        async with started(tmp_path, models) as (router, _), aiohttp.ClientSession() as client:

            async def ask() -> tuple[int, str]:
                status, body = await get_json(client, f"{router.url}/models/solo/echo")
                return status, str(body["error"]["code"])

            assert [await ask() for _ in range(3)] == [(502, "upstream_unavailable")] * 3
            tried = failing.accepted
            assert [await ask() for _ in range(3)] == [(502, "upstream_unavailable")] * 3
            assert failing.accepted == tried  # no connection attempt while down
            assert await upstream_up(client, router.admin_url, "solo", "v1") == 0
            assert await down_list(client, router.admin_url) == ["solo/v1"]
    finally:
        await failing.close()
    records = requests_in(tmp_path / "routing.jsonl")
    assert [r["outcome"] for r in records] == ["unavailable"] * 6


async def test_active_checks_mark_a_failing_version_down_without_traffic(
    backends: dict[str, str], tmp_path: Path
) -> None:
    outlier = {"failures": 2, "cooloff_s": 30}
    models = {
        "sick": {
            "versions": {
                "v1": {"url": backends["v1"], "health": {"path": "/status/500", "interval_s": 0.2}},
                "v2": {"url": backends["v2"]},
            },
            "split": {"v1": 100, "v2": 0},
            "fallback": "v2",
            "outlier": outlier,
        },
        "well": {
            "versions": {
                "v1": {"url": backends["v1"], "health": {"path": "/echo", "interval_s": 0.2}}
            },
            "split": {"v1": 100},
            "outlier": outlier,
        },
    }
    async with started(tmp_path, models) as (router, _), aiohttp.ClientSession() as client:
        await wait_upstream_up(client, router.admin_url, "sick", "v1", 0, within=1.5)
        assert await down_list(client, router.admin_url) == ["sick/v1"]
        status, body = await get_json(client, f"{router.url}/models/sick/echo")
        assert (status, body["version"]) == (200, "v2")
        status, body = await get_json(client, f"{router.url}/models/well/echo")
        assert (status, body["version"]) == (200, "v1")
        assert await upstream_up(client, router.admin_url, "well", "v1") != 0
    records = requests_in(tmp_path / "routing.jsonl")
    assert [(r["model"], r["assigned_version"], r["version"]) for r in records] == [
        ("sick", "v1", "v2"),
        ("well", "v1", "v1"),
    ]


async def test_an_active_check_added_by_a_reload_runs_and_one_removed_stops(
    backends: dict[str, str], backend_servers: dict[str, TestServer], tmp_path: Path
) -> None:
    """The check loop follows the table in force: it works out the checked versions once
    per table, not each tick, so it must notice a reload that adds or removes a check.

    Each table gives v2 a passing check of its own (`/echo?plain`, `/echo?checked`): the
    loop's ticks on a table are seen at v2, so "no check of v1" is asserted after the loop
    has run on the table several times, never after a fixed sleep."""
    outlier = {"failures": 1, "cooloff_s": 30}
    plain = two_versions(backends, fallback="v2", outlier=outlier)
    checked = two_versions(backends, fallback="v2", outlier=outlier)
    plain["m"]["versions"]["v2"]["health"] = {"path": "/echo?plain", "interval_s": 0.1}
    checked["m"]["versions"]["v2"]["health"] = {"path": "/echo?checked", "interval_s": 0.1}
    checked["m"]["versions"]["v1"]["health"] = {"path": "/status/500", "interval_s": 0.1}
    seen, ticks = backend_servers["v1"].app[SEEN], backend_servers["v2"].app[SEEN]

    async def reload_to(models: dict[str, Any]) -> None:
        config.write_text(yaml.safe_dump(table_data(models, tmp_path / "routing.jsonl")))
        async with client.post(f"{router.admin_url}/admin/reload") as resp:
            assert (await resp.json())["result"] == "loaded"

    async def more_ticks(marker: str, n: int) -> None:
        """Until the loop has checked v2 `n` more times on the table with `marker`."""
        target = ticks.count(marker) + n

        async def probe() -> bool | None:
            return ticks.count(marker) >= target or None

        await poll(probe, 5, f"{n} more checks {marker}")

    async with started(tmp_path, plain) as (router, config), aiohttp.ClientSession() as client:
        await more_ticks("/echo?plain", 5)
        assert "/status/500" not in seen
        await reload_to(checked)
        await wait_upstream_up(client, router.admin_url, "m", "v1", 0, within=2.0)
        await reload_to(plain)
        await more_ticks("/echo?plain", 2)  # the loop is on the new table: what it had out landed
        checks = seen.count("/status/500")
        await more_ticks("/echo?plain", 5)  # five intervals of the removed check
        assert seen.count("/status/500") == checks


async def test_upstream_up_is_one_for_every_version_from_the_start(
    backends: dict[str, str], tmp_path: Path
) -> None:
    """A gauge that appears only once a version first fails cannot tell 'up' from 'unknown'."""
    async with (
        started(tmp_path, two_versions(backends)) as (router, _),
        aiohttp.ClientSession() as client,
    ):
        up = [await upstream_up(client, router.admin_url, "m", v) for v in ("v1", "v2")]
    assert up == [1, 1]

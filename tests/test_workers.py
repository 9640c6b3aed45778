"""`serve --workers N`: worker processes sharing the port, with one supervisor."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.metrics import REQUESTS, scrape
from tests.support.running import read_log, requests_in, router_process
from tests.support.tables import model
from tests.support.waiting import poll

N = 2


def two_versions(backends: dict[str, str]) -> dict[str, Any]:
    """Model `m` over the two echo backends, split 50/50."""
    return model(backends, {"v1": 50, "v2": 50})


async def send(client: aiohttp.ClientSession, url: str, n: int) -> None:
    async def one(i: int) -> None:
        # A new connection each: the kernel spreads connections, not requests, over workers.
        headers = {"X-User-ID": f"user-{i}", "Connection": "close"}
        async with client.get(f"{url}/models/m/echo", headers=headers) as resp:
            assert resp.status == 200

    await asyncio.gather(*(one(i) for i in range(n)))


async def test_workers_share_the_port_and_the_log(backends: dict[str, str], tmp_path: Path) -> None:
    async with (
        router_process(two_versions(backends), tmp_path, "--workers", str(N)) as proc,
        aiohttp.ClientSession() as client,
    ):
        await send(client, proc.url, 200)
        metrics = await scrape(client, proc.admin_url)
        assert sum(s.value for s in metrics.samples(*REQUESTS)) == 200  # over the workers
        async with client.get(f"{proc.admin_url}/readyz") as resp:
            assert resp.status == 200
        proc.signal(signal.SIGTERM)
        assert await proc.wait() == 0
    log = read_log(tmp_path / "routing.jsonl")  # every line parses: none torn
    records = [r for r in log if r["event"] == "request"]
    assert len(records) == 200
    assert all(r["status"] == 200 for r in records)
    loaded = {r["pid"] for r in log if r["event"] == "config_loaded"}
    assert len(loaded) == N


async def test_reload_and_signals_reach_every_worker(
    backends: dict[str, str], tmp_path: Path
) -> None:
    async with (
        router_process(two_versions(backends), tmp_path, "--workers", str(N)) as proc,
        aiohttp.ClientSession() as client,
    ):
        config = tmp_path / "routes.yaml"
        config.write_text(
            config.read_text().replace("v1: 50", "v1: 100").replace("v2: 50", "v2: 0")
        )
        async with client.post(f"{proc.admin_url}/admin/reload") as resp:
            assert resp.status == 200
            new = (await resp.json())["config"]

        async def all_reloaded() -> bool | None:
            events = read_log(tmp_path / "routing.jsonl")
            return len({e["pid"] for e in events if e.get("config") == new}) == N or None

        await poll(all_reloaded, 10, "every worker loading the new table")
        await send(client, proc.url, 50)
        proc.signal(signal.SIGTERM)
        assert await proc.wait() == 0
    records = requests_in(tmp_path / "routing.jsonl")
    assert len(records) == 50
    assert {r["version"] for r in records} == {"v1"}
    assert {r["config"] for r in records} == {new}


async def test_a_dead_worker_is_replaced(backends: dict[str, str], tmp_path: Path) -> None:
    async with (
        router_process(two_versions(backends), tmp_path, "--workers", str(N)) as proc,
        aiohttp.ClientSession() as client,
    ):

        async def started() -> bool | None:
            return len({r["pid"] for r in read_log(tmp_path / "routing.jsonl")}) == N or None

        await poll(started, 10, "every worker started")  # the log reaches the file a moment later
        pids = {r["pid"] for r in read_log(tmp_path / "routing.jsonl")}
        os.kill(pids.pop(), signal.SIGKILL)

        async def replaced() -> bool | None:
            events = read_log(tmp_path / "routing.jsonl")
            pids = {e["pid"] for e in events if e["event"] == "config_loaded"}
            return len(pids) == N + 1 or None

        await poll(replaced, 10, "a new worker in place of the killed one")
        async with client.get(f"{proc.admin_url}/readyz") as resp:
            assert resp.status == 200
        await send(client, proc.url, 40)
        proc.signal(signal.SIGTERM)
        assert await proc.wait() == 0
    assert len(requests_in(tmp_path / "routing.jsonl")) == 40


async def test_the_admin_view_follows_a_file_change(
    backends: dict[str, str], tmp_path: Path
) -> None:
    """The supervisor watches the file too: /admin/config shows what the workers route by."""
    async with (
        router_process(two_versions(backends), tmp_path, "--workers", str(N)) as proc,
        aiohttp.ClientSession() as client,
    ):
        async with client.get(f"{proc.admin_url}/admin/config") as resp:
            old = (await resp.json())["config"]
        config = tmp_path / "routes.yaml"
        config.write_text(
            config.read_text().replace("v1: 50", "v1: 100").replace("v2: 50", "v2: 0")
        )

        async def new_digest() -> str | None:
            async with client.get(f"{proc.admin_url}/admin/config") as resp:
                digest: str = (await resp.json())["config"]
            return digest if digest != old else None

        new = await poll(new_digest, 5, "the admin view to follow the file")
        async with client.post(f"{proc.admin_url}/admin/reload") as resp:
            assert (await resp.json())["result"] == "unchanged"
        proc.signal(signal.SIGTERM)
        assert await proc.wait() == 0
    loaded = [e for e in read_log(tmp_path / "routing.jsonl") if e["event"] == "config_loaded"]
    assert {e["pid"] for e in loaded if e["config"] == new} != set()


async def test_a_metrics_directory_the_operator_chose_is_used_and_kept(
    backends: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With PROMETHEUS_MULTIPROC_DIR set, the workers share their metrics there, and the
    supervisor never removes it (it removes only a directory it made itself)."""
    chosen = tmp_path / "metrics"
    chosen.mkdir()
    (chosen / "operator-file.txt").write_text("kept")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(chosen))
    async with (
        router_process(two_versions(backends), tmp_path, "--workers", str(N)) as proc,
        aiohttp.ClientSession() as client,
    ):
        await send(client, proc.url, 20)
        metrics = await scrape(client, proc.admin_url)
        assert sum(s.value for s in metrics.samples(*REQUESTS)) == 20
        assert any(path.suffix == ".db" for path in chosen.iterdir())  # the workers' values
        proc.signal(signal.SIGTERM)
        assert await proc.wait() == 0
    assert (chosen / "operator-file.txt").read_text() == "kept"

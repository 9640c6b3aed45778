"""`serve --workers N`: worker processes sharing the port, with one supervisor."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
from pathlib import Path
from typing import Any

import aiohttp
import psutil  # type: ignore[import-untyped]  # types-psutil is not a dev dependency
import pytest
from prometheus_client import multiprocess

from router.workers import Backoff
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


def served_by_each(metrics_dir: Path) -> dict[str, float]:
    """Requests counted by each worker, from its own file of values (`counter_<pid>.db`)."""
    counts = {}
    for path in metrics_dir.glob("counter_*.db"):
        families = multiprocess.MultiProcessCollector.merge([str(path)], accumulate=False)  # type: ignore[no-untyped-call]  # untyped upstream
        counts[path.stem] = sum(
            s.value for f in families for s in f.samples if s.name == REQUESTS[1]
        )
    return counts


async def test_workers_share_the_port_and_the_log(
    backends: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))  # to see each worker's
    async with (
        router_process(two_versions(backends), tmp_path, "--workers", str(N)) as proc,
        aiohttp.ClientSession() as client,
    ):
        await send(client, proc.url, 200)
        metrics = await scrape(client, proc.admin_url)
        assert sum(s.value for s in metrics.samples(*REQUESTS)) == 200  # over the workers
        # Each worker served some: the kernel spread the 200 connections over both (all
        # on one would be a chance of 2 in 2**200).
        served = served_by_each(metrics_dir)
        assert len(served) == N
        assert all(count > 0 for count in served.values()), served
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


def test_the_pause_before_a_replacement_doubles_up_to_30_s_and_resets() -> None:
    backoff = Backoff()
    pauses = [backoff.after(lived_s=0.2) for _ in range(9)]
    assert pauses == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    assert backoff.after(lived_s=backoff.steady_s) == 0.5  # it had lived: well again
    assert backoff.after(lived_s=0.2) == 1


def workers_of(supervisor: int) -> set[int]:
    """The supervisor's worker processes (not its resource tracker, nor a reload's child)."""
    found = set()
    for child in psutil.Process(supervisor).children():
        try:
            if "multiprocessing.spawn" in " ".join(child.cmdline()):
                found.add(child.pid)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue  # gone meanwhile, or killed and not yet reaped
    return found


async def started_workers(log_path: Path) -> set[int]:
    async def started() -> set[int] | None:
        pids = {e["pid"] for e in read_log(log_path) if e["event"] == "config_loaded"}
        return pids if len(pids) == N else None

    return await poll(started, 20, "every worker started")


async def test_a_replacement_serves_the_table_in_force_not_a_refused_file(
    backends: dict[str, str], tmp_path: Path
) -> None:
    log_path = tmp_path / "routing.jsonl"
    async with (
        router_process(two_versions(backends), tmp_path, "--workers", str(N)) as proc,
        aiohttp.ClientSession() as client,
    ):
        first = await started_workers(log_path)
        async with client.get(f"{proc.admin_url}/admin/config") as resp:
            in_force = (await resp.json())["config"]
        config = tmp_path / "routes.yaml"
        config.write_text(config.read_text().replace("v1: 50", "v1: 40"))  # adds up to 90

        async def refused() -> bool | None:
            async with client.get(f"{proc.admin_url}/admin/config") as resp:
                return (await resp.json())["last_refusal"] is not None or None

        await poll(refused, 10, "the supervisor refusing the edit")
        os.kill(min(first), signal.SIGKILL)

        async def replaced() -> int | None:
            events = read_log(log_path)
            pids = {e["pid"] for e in events if e["event"] == "config_loaded"} - first
            return pids.pop() if pids else None

        new = await poll(replaced, 20, "a worker in place of the killed one")
        async with client.get(f"{proc.admin_url}/readyz") as resp:
            assert resp.status == 200
        await send(client, proc.url, 40)
        proc.signal(signal.SIGTERM)
        assert await proc.wait() == 0
    log = read_log(log_path)
    mine = [e for e in log if e.get("pid") == new]
    assert [(e["event"], e["config"]) for e in mine] == [("config_loaded", in_force)]
    records = [r for r in log if r["event"] == "request"]
    assert len(records) == 40
    assert {r["config"] for r in records} == {in_force}
    assert not [line for line in proc.stderr if "exited with 1" in line]


async def test_a_worker_that_keeps_dying_is_replaced_after_growing_pauses(
    backends: dict[str, str], tmp_path: Path
) -> None:
    """Every replacement of one worker is killed as soon as it appears, for a while: the
    spawns come further and further apart (0.5 s, 1, 2, 4 s, ...), not every 0.5 s; the
    other worker serves all along."""
    async with (
        router_process(two_versions(backends), tmp_path, "--workers", str(N)) as proc,
        aiohttp.ClientSession() as client,
    ):
        await started_workers(tmp_path / "routing.jsonl")
        supervisor = proc.proc.pid
        known = workers_of(supervisor)
        victim, keep = sorted(known)
        os.kill(victim, signal.SIGKILL)
        loop = asyncio.get_running_loop()
        spawned: list[float] = []
        observe_s = 9.0  # fixed pauses of 0.5 s would give about 15 spawns here
        end = loop.time() + observe_s
        while loop.time() < end:
            for pid in workers_of(supervisor) - known:
                known.add(pid)
                spawned.append(loop.time())
                os.kill(pid, signal.SIGKILL)
            await asyncio.sleep(0.02)
        assert keep in workers_of(supervisor)
        await send(client, proc.url, 20)  # the other worker served all along
        proc.signal(signal.SIGTERM)
        assert await proc.wait() == 0
    gaps = [b - a for a, b in itertools.pairwise(spawned)]
    assert 3 <= len(spawned) <= 6, spawned
    assert gaps[-1] >= 2 * gaps[0], gaps  # the pauses grew
    starting = [line for line in proc.stderr if "starting another in" in line]
    pauses = [float(line.rsplit(" in ", 1)[1].split()[0]) for line in starting]
    assert pauses == sorted(pauses), pauses


async def test_workers_auto_starts_one_per_cpu_the_process_may_use(
    backends: dict[str, str], tmp_path: Path
) -> None:
    cpus = len(os.sched_getaffinity(0))
    async with router_process(two_versions(backends), tmp_path, "--workers", "auto") as proc:
        if cpus > 1:  # one CPU: one process, no supervisor (the banner says no workers)
            assert f", {cpus} workers," in proc.banner

        async def started() -> bool | None:
            pids = {r["pid"] for r in read_log(tmp_path / "routing.jsonl")}
            return len(pids) == cpus or None

        await poll(started, 10, "a worker per CPU started")
        proc.signal(signal.SIGTERM)
        assert await proc.wait() == 0

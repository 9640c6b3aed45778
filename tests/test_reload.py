"""Reloading the routing table (contract section 6): the file watcher, SIGHUP, POST /admin/reload.

A table file changes in three ways in the wild: written in place, renamed over (editors,
`kubectl cp`), or swapped through symlinks (Kubernetes ConfigMaps). Each must be in force
within two seconds; a bad table is refused whole; a request keeps the table it started with.

Where a test means to prove that SIGHUP or the admin endpoint did the reload, it edits the
file without changing its size or modification time (`write_unseen`), so the watcher cannot
get there first and the result is deterministic.
"""

from __future__ import annotations

import asyncio
import collections
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from router.cli import main
from router.config.holder import WATCH_INTERVAL_S
from router.config.validate import load_table
from tests.support.client import get_json
from tests.support.metrics import scrape
from tests.support.running import LOOPBACK, RouterProcess, read_log, requests_in, router_from_file
from tests.support.waiting import forwarded, log_record, poll

USERS = [f"user-{i}" for i in range(40)]  # under 50/50, all on one side has odds 2**-40
IN_FORCE_WITHIN_S = 2.0  # the watcher polls every 0.5 s and waits for the file to settle


def table_text(
    log_path: Path, backends: dict[str, str], split: dict[str, int], salt: str = "m"
) -> str:
    """A one-model table; every split of whole percents gives a file of the same size."""
    lines = [
        "server:",
        f"  listen: {LOOPBACK}:0",
        f"  admin_listen: {LOOPBACK}:0",
        "log:",
        f'  path: "{log_path}"',
        "models:",
        "  m:",
        f"    salt: {salt}",
        "    versions:",
        *(f'      {name}: {{url: "{url}"}}' for name, url in backends.items()),
        "    split:",
        *(f"      {name}: {percent:>3}" for name, percent in split.items()),
    ]
    return "\n".join(lines) + "\n"


def split_line(text: str) -> int:
    """The 1-based line of the `split:` key, which a split problem names."""
    return text.splitlines().index("    split:") + 1


def write_unseen(path: Path, text: str) -> None:
    """Rewrite `path` in place keeping its size and mtime: invisible to the file watcher."""
    before = os.stat(path)
    assert len(text.encode()) == before.st_size, "write_unseen needs a same-size table"
    path.write_text(text)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def reloaded(record: dict[str, Any]) -> bool:
    """A `config_loaded` from a reload (the one at start-up has no `previous`)."""
    return record["event"] == "config_loaded" and "previous" in record


async def post_reload(client: aiohttp.ClientSession, admin_url: str) -> tuple[int, dict[str, Any]]:
    async with client.post(f"{admin_url}/admin/reload") as resp:
        return resp.status, await resp.json()


async def versions_by_user(client: aiohttp.ClientSession, url: str) -> dict[str, str]:
    """Which version answers each of USERS, all asked at once."""

    async def one(user: str) -> tuple[str, str]:
        status, body = await get_json(client, f"{url}/models/m/echo", headers={"X-User-ID": user})
        assert status == 200, body
        return user, body["version"]

    return dict(await asyncio.gather(*(one(user) for user in USERS)))


async def wait_in_force(
    client: aiohttp.ClientSession, admin_url: str, digest: str, since: float
) -> None:
    """Wait until `/admin/config` shows `digest`, at most IN_FORCE_WITHIN_S after `since`."""

    async def probe() -> bool | None:
        _, body = await get_json(client, f"{admin_url}/admin/config")
        return True if body["config"] == digest else None

    await poll(probe, since + IN_FORCE_WITHIN_S - time.monotonic(), f"table {digest} in force")


# --- the file watcher ---


def plain_file(folder: Path, text: str) -> Path:
    config = folder / "routes.yaml"
    config.write_text(text)
    return config


def edit_in_place(config: Path, text: str) -> None:
    config.write_text(text)  # truncates and rewrites the same inode


def rename_over(config: Path, text: str) -> None:
    """What editors and careful deploy scripts do: a temp file in the same folder, renamed."""
    temp = config.with_name(f".{config.name}.tmp")
    temp.write_text(text)
    os.replace(temp, config)


def configmap(folder: Path, text: str) -> Path:
    """A Kubernetes ConfigMap volume as the kubelet lays it out."""
    folder = folder / "configmap"
    (folder / "..2026_11_25_1").mkdir(parents=True)
    (folder / "..2026_11_25_1" / "routes.yaml").write_text(text)
    os.symlink("..2026_11_25_1", folder / "..data")
    os.symlink("..data/routes.yaml", folder / "routes.yaml")
    return folder / "routes.yaml"


def swap_configmap(config: Path, text: str) -> None:
    """The kubelet's update: a new timestamped folder, `..data` swapped atomically by rename."""
    folder = config.parent
    old = os.readlink(folder / "..data")
    (folder / "..2026_11_25_2").mkdir()
    (folder / "..2026_11_25_2" / "routes.yaml").write_text(text)
    os.symlink("..2026_11_25_2", folder / "..data_tmp")
    os.replace(folder / "..data_tmp", folder / "..data")
    shutil.rmtree(folder / old)


@pytest.mark.parametrize(
    ("install", "change"),
    [(plain_file, edit_in_place), (plain_file, rename_over), (configmap, swap_configmap)],
    ids=["in-place", "atomic-rename", "configmap-symlink-swap"],
)
async def test_a_changed_file_is_in_force_within_two_seconds(
    backends: dict[str, str],
    tmp_path: Path,
    install: Callable[[Path, str], Path],
    change: Callable[[Path, str], None],
) -> None:
    log_path = tmp_path / "routing.jsonl"
    config = install(tmp_path, table_text(log_path, backends, {"v1": 50, "v2": 50}))
    old = load_table(config).digest
    async with router_from_file(config) as router, aiohttp.ClientSession() as client:
        assert set((await versions_by_user(client, router.url)).values()) == {"v1", "v2"}
        changed = time.monotonic()
        change(config, table_text(log_path, backends, {"v1": 100, "v2": 0}))
        new = load_table(config).digest
        assert new != old
        await wait_in_force(client, router.admin_url, new, changed)
        assert set((await versions_by_user(client, router.url)).values()) == {"v1"}
        loaded = await log_record(log_path, reloaded)
    assert loaded["config"] == new
    assert loaded["previous"] == old
    assert loaded["models"]["m"]["split"] == {"v1": 100, "v2": 0}
    assert loaded["models"]["m"]["moves"] == {"v2->v1": 50.0}
    assert [r for r in read_log(log_path) if reloaded(r)] == [loaded]  # one reload, not several


async def test_an_invalid_edit_is_refused_and_a_later_valid_one_accepted(
    backends: dict[str, str], tmp_path: Path
) -> None:
    log_path = tmp_path / "routing.jsonl"
    config = plain_file(tmp_path, table_text(log_path, backends, {"v1": 50, "v2": 50}))
    old = load_table(config).digest
    async with router_from_file(config) as router, aiohttp.ClientSession() as client:
        before = await versions_by_user(client, router.url)
        assert set(before.values()) == {"v1", "v2"}

        bad = table_text(log_path, backends, {"v1": 50, "v2": 45})
        config.write_text(bad)
        rejected = await log_record(log_path, lambda r: r["event"] == "config_rejected")
        problems = [
            f"{config}:{split_line(bad)}: models.m.split: percentages add up to 95, not 100"
        ]
        assert rejected["error"] == problems
        assert rejected["config"] == old

        # The old table stays in force: same digest, every user on the same version as before.
        _, view = await get_json(client, f"{router.admin_url}/admin/config")
        assert view["config"] == old
        assert view["last_refusal"]["problems"] == problems
        assert await versions_by_user(client, router.url) == before

        changed = time.monotonic()
        config.write_text(table_text(log_path, backends, {"v1": 100, "v2": 0}))
        new = load_table(config).digest
        await wait_in_force(client, router.admin_url, new, changed)
        assert set((await versions_by_user(client, router.url)).values()) == {"v1"}
        loaded = await log_record(log_path, reloaded)
    assert (loaded["config"], loaded["previous"]) == (new, old)


# --- SIGHUP and POST /admin/reload ---


async def test_sighup_reloads_the_table(backends: dict[str, str], tmp_path: Path) -> None:
    log_path = tmp_path / "routing.jsonl"
    config = plain_file(tmp_path, table_text(log_path, backends, {"v1": 100, "v2": 0}))
    old = load_table(config).digest
    # Started in a thread: waiting for its banner must not hold up the backends in this loop.
    proc = await asyncio.to_thread(RouterProcess, config, log_path)
    try:
        async with aiohttp.ClientSession() as client:
            assert set((await versions_by_user(client, proc.url)).values()) == {"v1"}
            write_unseen(config, table_text(log_path, backends, {"v1": 0, "v2": 100}))
            new = load_table(config).digest
            proc.signal(signal.SIGHUP)
            loaded = await log_record(log_path, lambda r: reloaded(r) and r["reason"] == "SIGHUP")
            assert (loaded["config"], loaded["previous"]) == (new, old)
            assert set((await versions_by_user(client, proc.url)).values()) == {"v2"}
        proc.signal(signal.SIGTERM)
        assert await proc.wait() == 0
    finally:
        proc.stop()


async def test_post_admin_reload_loads_reports_unchanged_and_refuses(
    backends: dict[str, str], tmp_path: Path
) -> None:
    log_path = tmp_path / "routing.jsonl"
    config = plain_file(tmp_path, table_text(log_path, backends, {"v1": 50, "v2": 50}))
    async with router_from_file(config) as router, aiohttp.ClientSession() as client:
        write_unseen(config, table_text(log_path, backends, {"v1": 100, "v2": 0}))
        new = load_table(config).digest
        status, body = await post_reload(client, router.admin_url)
        assert status == 200
        assert (body["result"], body["config"]) == ("loaded", new)
        assert set((await versions_by_user(client, router.url)).values()) == {"v1"}

        status, body = await post_reload(client, router.admin_url)
        assert status == 200
        assert (body["result"], body["config"]) == ("unchanged", new)

        bad = table_text(log_path, backends, {"v1": 50, "v2": 45})
        write_unseen(config, bad)
        status, body = await post_reload(client, router.admin_url)
        assert status == 422
        assert body["error"]["code"] == "config_rejected"
        problems = [
            f"{config}:{split_line(bad)}: models.m.split: percentages add up to 95, not 100"
        ]
        assert body["error"]["problems"] == problems
        _, view = await get_json(client, f"{router.admin_url}/admin/config")
        assert view["config"] == new
        assert view["last_refusal"]["problems"] == problems
    events = [r for r in read_log(log_path) if r["event"] in ("config_loaded", "config_rejected")]
    assert [(r["event"], r["config"]) for r in events[1:]] == [
        ("config_loaded", new),
        ("config_rejected", new),
    ]
    assert events[2]["error"] == problems


async def test_the_watcher_does_not_read_again_a_file_the_admin_read(
    backends: dict[str, str], tmp_path: Path
) -> None:
    """On a big table each read is seconds of a child process's CPU: an edit followed by
    POST /admin/reload (the usual deploy step) must cost one read, not a second by the
    watcher that only finds the table unchanged."""
    log_path = tmp_path / "routing.jsonl"
    config = plain_file(tmp_path, table_text(log_path, backends, {"v1": 50, "v2": 50}))
    async with router_from_file(config) as router, aiohttp.ClientSession() as client:
        rename_over(config, table_text(log_path, backends, {"v1": 100, "v2": 0}))
        status, body = await post_reload(client, router.admin_url)  # within the settle time
        assert (status, body["result"]) == (200, "loaded")
        # A negative ("no second read") needs a bound: one interval beyond the watcher's own
        # (it acts within IN_FORCE_WITHIN_S), not three intervals, which were shorter.
        await asyncio.sleep(IN_FORCE_WITHIN_S + WATCH_INTERVAL_S)
        metrics = await scrape(client, router.admin_url)
    reloads = {
        result: metrics.value("model_router_reloads", "model_router_reloads_total", result=result)
        for result in ("loaded", "unchanged", "rejected")
    }
    assert reloads == {"loaded": 1.0, "unchanged": None, "rejected": None}


async def test_a_request_in_flight_finishes_on_the_table_it_started_with(
    backends: dict[str, str], backend_servers: dict[str, TestServer], tmp_path: Path
) -> None:
    log_path = tmp_path / "routing.jsonl"
    config = plain_file(tmp_path, table_text(log_path, backends, {"v1": 100, "v2": 0}))
    old = load_table(config).digest
    async with router_from_file(config) as router, aiohttp.ClientSession() as client:
        headers = {"X-User-ID": "alice", "X-Request-ID": "in-flight"}
        in_flight = asyncio.create_task(
            get_json(client, f"{router.url}/models/m/slow?s=1", headers=headers)
        )
        await forwarded(backend_servers["v1"].app, "/slow?s=1", within=2.0)
        write_unseen(config, table_text(log_path, backends, {"v1": 0, "v2": 100}))
        new = load_table(config).digest
        status, body = await post_reload(client, router.admin_url)
        assert (status, body["result"], body["config"]) == (200, "loaded", new)
        assert not in_flight.done()

        headers = {"X-User-ID": "alice", "X-Request-ID": "after"}
        status, after = await get_json(client, f"{router.url}/models/m/echo", headers=headers)
        assert (status, after["version"]) == (200, "v2")
        assert await in_flight == (200, {"version": "v1", "slept": True})
    records = {r["request_id"]: r for r in requests_in(log_path)}
    assert (records["in-flight"]["version"], records["in-flight"]["config"]) == ("v1", old)
    assert (records["after"]["version"], records["after"]["config"]) == ("v2", new)


async def test_reloads_under_steady_load_lose_no_request(
    backends: dict[str, str], tmp_path: Path
) -> None:
    log_path = tmp_path / "routing.jsonl"
    tables = [
        table_text(log_path, backends, {"v1": 90, "v2": 10}),
        table_text(log_path, backends, {"v1": 10, "v2": 90}),
    ]
    config = plain_file(tmp_path, tables[0])
    digests = {load_table(config).digest}
    outcomes: list[int | str] = []  # a status, or the name of the client error
    reloads: list[tuple[int, str]] = []
    async with router_from_file(config) as router, aiohttp.ClientSession() as client:
        stop = asyncio.Event()

        async def worker(n: int) -> None:
            sent = 0
            while not stop.is_set():
                sent += 1
                headers = {"X-User-ID": f"worker-{n}-{sent}"}
                try:
                    async with client.get(f"{router.url}/models/m/echo", headers=headers) as resp:
                        await resp.read()
                        outcomes.append(resp.status)
                except aiohttp.ClientError as exc:
                    outcomes.append(type(exc).__name__)

        async def more_answered(n: int) -> None:
            """Wait until the workers have had `n` more answers (or client errors)."""
            wanted = len(outcomes) + n

            async def probe() -> bool | None:
                return True if len(outcomes) >= wanted else None

            await poll(probe, 3.0, f"{n} more requests answered")

        workers = [asyncio.create_task(worker(n)) for n in range(8)]
        try:
            for k in range(8):  # eight reloads, each after 20 more requests: over 100 in all
                await more_answered(20)
                write_unseen(config, tables[(k + 1) % 2])
                digests.add(load_table(config).digest)
                status, body = await post_reload(client, router.admin_url)
                reloads.append((status, body["result"]))
        finally:
            stop.set()
            await asyncio.gather(*workers)
    assert reloads == [(200, "loaded")] * 8
    assert len(outcomes) > 100
    assert collections.Counter(outcomes) == {200: len(outcomes)}
    records = requests_in(log_path)
    assert len(records) == len(outcomes)
    assert {r["config"] for r in records} == digests


async def test_sigusr1_reopens_the_log(backends: dict[str, str], tmp_path: Path) -> None:
    log_path = tmp_path / "routing.jsonl"
    rotated = tmp_path / "routing.jsonl.1"
    config = plain_file(tmp_path, table_text(log_path, backends, {"v1": 100, "v2": 0}))
    proc = await asyncio.to_thread(RouterProcess, config, log_path)
    try:
        async with aiohttp.ClientSession() as client:
            for _ in range(5):
                status, _ = await get_json(client, f"{proc.url}/models/m/before")
                assert status == 200
            os.rename(log_path, rotated)  # what logrotate does
            proc.signal(signal.SIGUSR1)

            async def reopened() -> bool | None:
                return True if log_path.exists() else None

            await poll(reopened, 3.0, "the log file recreated at its path")
            for _ in range(7):
                status, _ = await get_json(client, f"{proc.url}/models/m/after")
                assert status == 200
        proc.signal(signal.SIGTERM)
        assert await proc.wait() == 0
    finally:
        proc.stop()
    assert [r["path"] for r in requests_in(rotated)] == ["/models/m/before"] * 5
    assert [r["path"] for r in requests_in(log_path)] == ["/models/m/after"] * 7
    # The new file opens by naming the table in force, so it can be read on its own.
    first = read_log(log_path)[0]
    assert (first["event"], first["reason"]) == ("config_loaded", "log reopened")


# --- check NEW --against OLD ---

FAKE = {"v1": "http://127.0.0.1:9001", "v2": "http://127.0.0.1:9002"}


@pytest.mark.parametrize(
    ("split", "salt", "warns"),
    [
        ({"v1": 80, "v2": 20}, "m", False),
        ({"v2": 10, "v1": 90}, "m", True),
        ({"v1": 90, "v2": 10}, "m-2026-12", True),
    ],
    ids=["ramp", "reordered-split", "changed-salt"],
)
def test_check_against_warns_when_users_move_between_kept_versions(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    split: dict[str, int],
    salt: str,
    warns: bool,
) -> None:
    log_path = tmp_path / "routing.jsonl"
    old = tmp_path / "old.yaml"
    old.write_text(table_text(log_path, FAKE, {"v1": 90, "v2": 10}))
    new = tmp_path / "new.yaml"
    new.write_text(table_text(log_path, FAKE, split, salt=salt))
    assert main(["check", str(new), "--against", str(old)]) == 0
    lines = capsys.readouterr().out.splitlines()
    warnings = [line for line in lines if "warning" in line.lower()]
    assert bool(warnings) == warns, lines
    if not warns:
        assert any("v1 -> v2 10%" in line for line in lines), lines

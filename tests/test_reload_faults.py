"""Reloads that cannot run (contract section 13): the reader process cannot start (EMFILE),
or hangs (the table's path is a FIFO no one writes, as a hung mount would). Each is refused
like an invalid table, `config_rejected` with the reason and 422 JSON from the admin, and
the watcher lives on to take the next change.

The faults are real: the open-files limit of a running router process is lowered from
outside (`prlimit`, as root or as its owner), and the reader really blocks.
"""

from __future__ import annotations

import asyncio
import os
import resource
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from router.config.validate import load_table
from tests.support.running import RouterProcess, read_log, router_from_file, table_data
from tests.support.tables import model
from tests.support.waiting import log_record

SEEN_WITHIN_S = 10.0  # the watcher polls every 0.5 s, waits for the file to settle, reads


def write_table(
    config: Path, log_path: Path, backends: dict[str, str], v1: int, **server: Any
) -> str:
    """Write (by rename, as editors do) a table splitting `m` v1/v2; its digest."""
    temp = config.with_name(f".{config.name}.tmp")
    temp.write_text(
        yaml.safe_dump(table_data(model(backends, {"v1": v1, "v2": 100 - v1}), log_path, **server))
    )
    os.replace(temp, config)
    return load_table(config).digest


def rejected(record: dict[str, Any]) -> bool:
    return bool(record["event"] == "config_rejected")


def loaded(digest: str) -> Callable[[dict[str, Any]], bool]:
    return lambda r: r["event"] == "config_loaded" and r["config"] == digest


def lowest_free_fd(pid: int) -> int:
    """The descriptor the process `pid` would get next: the least number not open."""
    taken = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
    return next(fd for fd in range(len(taken) + 1) if fd not in taken)


async def test_a_reader_that_cannot_start_is_refused_and_the_watcher_goes_on(
    backends: dict[str, str], tmp_path: Path
) -> None:
    log_path, config = tmp_path / "routing.jsonl", tmp_path / "routes.yaml"
    write_table(config, log_path, backends, 100)
    proc = await asyncio.to_thread(RouterProcess, config, log_path)
    try:
        pid = proc.proc.pid
        await log_record(log_path, lambda r: r["event"] == "config_loaded")
        limits = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        # No descriptor left: the reader's pipes cannot be made (EMFILE).
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (lowest_free_fd(pid), limits[1]))
        write_table(config, log_path, backends, 50)
        record = await log_record(log_path, rejected, SEEN_WITHIN_S)
        assert record["reason"] == "file changed"
        assert "Too many open files" in " ".join(record["error"]), record
        resource.prlimit(pid, resource.RLIMIT_NOFILE, limits)
        digest = write_table(config, log_path, backends, 20)  # the next change is tried
        await log_record(log_path, loaded(digest), SEEN_WITHIN_S)
        assert proc.proc.poll() is None
    finally:
        proc.stop()
    assert not any("Traceback" in line for line in proc.stderr), "".join(proc.stderr)


async def test_admin_reload_answers_422_json_when_the_reader_cannot_start(
    backends: dict[str, str], tmp_path: Path
) -> None:
    log_path, config = tmp_path / "routing.jsonl", tmp_path / "routes.yaml"
    write_table(config, log_path, backends, 100)
    proc = await asyncio.to_thread(RouterProcess, config, log_path)
    try:
        pid = proc.proc.pid
        limits = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        async with aiohttp.ClientSession() as client:
            # One descriptor left: the admin connection takes it, and the reader has none.
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (lowest_free_fd(pid) + 1, limits[1]))
            async with client.post(f"{proc.admin_url}/admin/reload") as resp:
                status, body = resp.status, await resp.json()
            resource.prlimit(pid, resource.RLIMIT_NOFILE, limits)
        assert status == 422, body
        assert body["error"]["code"] == "config_rejected"
        assert "Too many open files" in " ".join(body["error"]["problems"]), body
        assert proc.proc.poll() is None
    finally:
        proc.stop()


async def test_a_hung_reader_is_stopped_after_reload_timeout_and_refused(
    backends: dict[str, str], tmp_path: Path
) -> None:
    log_path, config = tmp_path / "routing.jsonl", tmp_path / "routes.yaml"
    write_table(config, log_path, backends, 100, reload_timeout_s=1)
    timeout = aiohttp.ClientTimeout(total=30)  # the reader would hang for ever without the bound
    async with router_from_file(config) as router, aiohttp.ClientSession(timeout=timeout) as client:
        config.unlink()
        os.mkfifo(config)  # the reader blocks opening it: no one ever writes
        async with client.post(f"{router.admin_url}/admin/reload") as resp:
            status, body = resp.status, await resp.json()
        assert status == 422, body
        assert body["error"]["code"] == "config_rejected"
        assert "reload_timeout_s (1 s)" in " ".join(body["error"]["problems"]), body
        config.unlink()
        digest = write_table(config, log_path, backends, 50, reload_timeout_s=1)
        await log_record(log_path, loaded(digest), SEEN_WITHIN_S)  # the watcher went on
    events = read_log(log_path)
    refusals = [e for e in events if rejected(e)]
    assert refusals, events
    assert all("reload_timeout_s" in " ".join(e["error"]) for e in refusals)

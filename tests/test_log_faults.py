"""The routing log through real faults (contract section 13): a filesystem that fills and
frees (a small tmpfs), a log directory removed or renamed away while the router runs.

Mounting a tmpfs needs root (CI runs the suite as root); elsewhere those tests are skipped
with the reason.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml

from tests.support.metrics import scrape
from tests.support.running import RouterProcess, read_log, requests_in, router_running, table_data
from tests.support.tables import one_model
from tests.support.waiting import poll

DROPPED = "model_router_log_records_dropped", "model_router_log_records_dropped_total"
LOST_AT_EXIT = re.compile(r"(\d+) records could not be written before exit")
RECREATED_WITHIN_S = 5.0  # contract section 13
RESUMED_WITHIN_S = 5.0  # retried at least every second; a margin for a loaded machine


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs mounted on a fresh directory, unmounted at the end."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs the suite as root)")
    mount = ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)]
    done = subprocess.run(mount, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> Path:
    """Fill the filesystem until it refuses a byte more; the file that filled it."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (65536, 4096, 1):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return filler


async def started(log_path: Path) -> None:
    """Wait for the router's first record (`config_loaded`) to be on disk."""

    async def found() -> bool | None:
        return bool(read_log(log_path)) or None

    await poll(found, 3.0, f"config_loaded in {log_path}")


def whole_requests(log_path: Path) -> list[dict[str, Any]]:
    """The `request` records on whole lines (a write the full disk cut short ends one)."""
    lines = log_path.read_bytes().split(b"\n")[:-1]
    return [r for r in (orjson.loads(line) for line in lines) if r["event"] == "request"]


def ids(records: list[dict[str, Any]]) -> list[int]:
    return [int(r["request_id"].removeprefix("r-")) for r in records]


async def send(client: aiohttp.ClientSession, url: str, numbers: range) -> None:
    """One request per number, in turn, each with its number as request id."""
    for i in numbers:
        headers = {"X-Request-ID": f"r-{i:05d}"}
        async with client.get(f"{url}/models/m/echo", headers=headers) as resp:
            assert resp.status == 200


async def test_a_full_disk_holds_records_in_order_and_writing_resumes_when_it_frees(
    backends: dict[str, str], small_disk: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log_path = small_disk / "routing.jsonl"
    n = 300  # about 120 KB of records, more than the page the log file may still have room in
    async with (
        router_running(one_model(backends), tmp_path, log={"path": str(log_path)}) as r,
        aiohttp.ClientSession() as client,
    ):
        await started(log_path)
        filler = fill(small_disk)
        await send(client, r.url, range(n))  # the router keeps serving
        sink = r.router.sink

        async def said() -> str | None:
            err = capsys.readouterr().err
            return err if "No space left on device" in err else None

        err = await poll(said, RESUMED_WITHIN_S, "a line on stderr saying what failed")
        assert "holding" in err, err
        held, _ = sink.held()
        assert held > 0
        assert len(whole_requests(log_path)) + held == n  # nothing dropped: the buffer had room
        filler.unlink()

        async def resumed() -> bool | None:
            return len(whole_requests(log_path)) == n or None

        await poll(resumed, RESUMED_WITHIN_S, f"all {n} records written once space freed")
        metrics = await scrape(client, r.router.admin_url)
        assert metrics.value(*DROPPED, reason="buffer_full") == 0
    records = requests_in(log_path)  # every line parses: none torn by the short writes
    assert ids(records) == list(range(n))


async def test_records_beyond_the_buffer_drop_the_oldest_and_are_counted(
    backends: dict[str, str], small_disk: Path, tmp_path: Path
) -> None:
    log_path = small_disk / "routing.jsonl"
    n = 300
    log = {"path": str(log_path), "buffer_mb": 0.02}  # 20 KiB: about 40 records
    async with (
        router_running(one_model(backends), tmp_path, log=log) as r,
        aiohttp.ClientSession() as client,
    ):
        await started(log_path)
        filler = fill(small_disk)
        await send(client, r.url, range(n))
        assert r.router.sink.held()[1] <= r.router.sink.buffer_bytes
        metrics = await scrape(client, r.router.admin_url)
        dropped = metrics.value(*DROPPED, reason="buffer_full")
        assert dropped is not None
        assert dropped > 0
        filler.unlink()

        async def resumed() -> bool | None:
            return r.router.sink.held()[0] == 0 or None

        await poll(resumed, RESUMED_WITHIN_S, "the records held written once space freed")
    written = ids(requests_in(log_path))
    assert written == sorted(written)  # in order
    assert len(written) + dropped == n  # the counter explains every gap
    # The oldest went: the newest, as many as the buffer holds, are all there. (Records
    # ahead of them may be too: the log file's last page had room for a few.)
    assert written[-20:] == list(range(n - 20, n))


@pytest.mark.parametrize(
    "fault",
    ["directory removed", "directory renamed away", "file removed", "file renamed away"],
)
async def test_a_log_removed_or_renamed_away_is_recreated_without_a_signal(
    backends: dict[str, str], tmp_path: Path, fault: str
) -> None:
    logs = tmp_path / "logs"
    log_path = logs / "routing.jsonl"
    async with (
        router_running(one_model(backends), tmp_path, log={"path": str(log_path)}) as r,
        aiohttp.ClientSession() as client,
    ):
        await send(client, r.url, range(3))

        async def written() -> bool | None:
            return len(requests_in(log_path)) == 3 or None

        await poll(written, 3.0, "the first records written")
        match fault:
            case "directory removed":
                shutil.rmtree(logs)
            case "directory renamed away":
                logs.rename(tmp_path / "logs.old")
            case "file removed":
                log_path.unlink()
            case _:
                log_path.rename(logs / "routing.jsonl.1")

        async def recreated() -> bool | None:
            return log_path.exists() or None

        await poll(recreated, RECREATED_WITHIN_S, f"{log_path} re-created, with no traffic")
        await send(client, r.url, range(3, 6))
    log = read_log(log_path)
    assert (log[0]["event"], log[0]["reason"]) == ("config_loaded", "log re-created")
    assert ids([e for e in log if e["event"] == "request"]) == [3, 4, 5]


async def test_drops_are_counted_on_the_supervisors_metrics_under_workers(
    backends: dict[str, str], small_disk: Path, tmp_path: Path
) -> None:
    log_path = small_disk / "routing.jsonl"
    config = tmp_path / "routes.yaml"
    table = table_data(one_model(backends), log_path, log={"buffer_mb": 0.02})
    config.write_text(yaml.safe_dump(table))
    proc = RouterProcess(config, log_path, "--workers", "2")
    try:
        async with aiohttp.ClientSession() as client:
            metrics = await scrape(client, proc.admin_url)
            assert metrics.value(*DROPPED, reason="buffer_full") == 0  # shown from the start
            await started(log_path)
            fill(small_disk)
            # A new connection each, so that both workers take some.
            for i in range(300):
                headers = {"X-Request-ID": f"r-{i:05d}", "Connection": "close"}
                async with client.get(f"{proc.url}/models/m/echo", headers=headers) as resp:
                    assert resp.status == 200

            async def counted() -> float | None:
                found = (await scrape(client, proc.admin_url)).value(*DROPPED, reason="buffer_full")
                return found or None

            assert await poll(counted, 5.0, "drops counted on the supervisor's /metrics") > 0
        proc.signal(signal.SIGTERM)
        assert await proc.wait() == 0
    finally:
        proc.stop()


async def test_sigterm_on_a_full_disk_exits_and_says_what_was_lost(
    backends: dict[str, str], small_disk: Path, tmp_path: Path
) -> None:
    log_path = small_disk / "routing.jsonl"
    config = tmp_path / "routes.yaml"
    config.write_text(yaml.safe_dump(table_data(one_model(backends), log_path)))
    proc = RouterProcess(config, log_path)
    try:
        await started(log_path)
        fill(small_disk)
        async with aiohttp.ClientSession() as client:
            await send(client, proc.url, range(300))
        proc.signal(signal.SIGTERM)
        assert await proc.wait() == 0  # within the writer's bounded wait, not for ever
    finally:
        proc.stop()
    said = [m for line in proc.stderr if (m := LOST_AT_EXIT.search(line))]
    assert len(said) == 1, proc.stderr
    lost = int(said[0].group(1))
    assert len(whole_requests(log_path)) + lost == 300

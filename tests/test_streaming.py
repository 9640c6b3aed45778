"""Hundreds of MiB through a real router process, with its memory watched all the while.

Contract section 4: request and response bodies are streamed, never held whole. The
router runs as a child process so that its RSS is its own; the backends and the client
run in this test's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psutil  # type: ignore[import-untyped]  # types-psutil is not a dev dependency
import pytest

from tests.support.running import RouterProcess, requests_in, router_process
from tests.support.tables import one_model

pytestmark = pytest.mark.slow

MiB = 1 << 20
PEAK_RSS_LIMIT = 150 * MiB
SAMPLE_EVERY_S = 0.05
# server.max_body_mb, well above the largest upload: the router must stream it, not refuse it.
BODY_LIMIT_MB = 512


@dataclass
class Transfer:
    """What one transfer through the router cost: its peak RSS and its speed."""

    mib: int
    rss_before: int
    peak_rss: int = 0
    seconds: float = 0.0

    def report(self, what: str) -> None:
        print(
            f"\n{what}: {self.mib} MiB in {self.seconds:.2f} s, "
            f"{self.mib / self.seconds:.0f} MiB/s; router RSS {self.rss_before / MiB:.1f} MiB "
            f"before, peak {self.peak_rss / MiB:.1f} MiB"
        )


@contextlib.asynccontextmanager
async def watched(pid: int, mib: int) -> AsyncIterator[Transfer]:
    """Time the block and sample the process's RSS every SAMPLE_EVERY_S meanwhile."""
    process = psutil.Process(pid)
    rss = process.memory_info().rss
    transfer = Transfer(mib, rss_before=rss, peak_rss=rss)

    async def sample() -> None:
        while True:
            transfer.peak_rss = max(transfer.peak_rss, process.memory_info().rss)
            await asyncio.sleep(SAMPLE_EVERY_S)

    sampler = asyncio.create_task(sample())
    started = time.perf_counter()
    try:
        yield transfer
    finally:
        transfer.seconds = time.perf_counter() - started
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    transfer.peak_rss = max(transfer.peak_rss, process.memory_info().rss)


async def stopped(proc: RouterProcess) -> list[dict[str, Any]]:
    """SIGTERM the router, wait for it, and return its `request` records."""
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0
    return requests_in(proc.log_path)


async def upload_body(mib: int, digest: hashlib._Hash) -> AsyncIterator[bytes]:
    """`mib` distinct 1 MiB chunks; `digest` sees each one as it is sent."""
    block = os.urandom(MiB)
    for i in range(mib):
        chunk = i.to_bytes(8, "big") + block[8:]
        digest.update(chunk)
        yield chunk


async def upload(proc: RouterProcess, mib: int, *, with_length: bool) -> Transfer:
    """POST `mib` MiB to the backend's /upload through the router; checks what arrived."""
    sent = hashlib.sha256()
    headers = {"Content-Length": str(mib * MiB)} if with_length else {}
    async with (
        aiohttp.ClientSession() as client,
        watched(proc.proc.pid, mib) as transfer,
        client.post(
            f"{proc.url}/models/m/upload", data=upload_body(mib, sent), headers=headers
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()
        arrived = await resp.json()
    assert arrived == {"body_bytes": mib * MiB, "body_sha256": sent.hexdigest()}
    return transfer


async def test_200_mib_upload_with_content_length_streams_through(
    backends: dict[str, str], tmp_path: Path
) -> None:
    async with router_process(one_model(backends), tmp_path, max_body_mb=BODY_LIMIT_MB) as proc:
        transfer = await upload(proc, 200, with_length=True)
        transfer.report("upload with Content-Length")
        (record,) = await stopped(proc)
    assert (record["path"], record["status"], record["outcome"]) == ("/models/m/upload", 200, "ok")
    assert transfer.peak_rss < PEAK_RSS_LIMIT


async def test_50_mib_chunked_upload_streams_through(
    backends: dict[str, str], tmp_path: Path
) -> None:
    async with router_process(one_model(backends), tmp_path, max_body_mb=BODY_LIMIT_MB) as proc:
        transfer = await upload(proc, 50, with_length=False)
        transfer.report("chunked upload")
        (record,) = await stopped(proc)
    assert (record["path"], record["status"], record["outcome"]) == ("/models/m/upload", 200, "ok")
    assert transfer.peak_rss < PEAK_RSS_LIMIT


def zeros_sha256(mib: int) -> str:
    """What /download?mb=N sends: N MiB of zeros."""
    digest = hashlib.sha256()
    block = bytes(MiB)
    for _ in range(mib):
        digest.update(block)
    return digest.hexdigest()


async def test_300_mib_download_streams_through(backends: dict[str, str], tmp_path: Path) -> None:
    mib = 300
    received = hashlib.sha256()
    size = 0
    async with router_process(one_model(backends), tmp_path, max_body_mb=BODY_LIMIT_MB) as proc:
        async with (
            aiohttp.ClientSession() as client,
            watched(proc.proc.pid, mib) as transfer,
            client.get(f"{proc.url}/models/m/download?mb={mib}") as resp,
        ):
            assert resp.status == 200
            assert resp.content_length == mib * MiB  # passed through, not turned into chunks
            async for chunk in resp.content.iter_chunked(MiB):
                received.update(chunk)
                size += len(chunk)
        transfer.report("download")
        (record,) = await stopped(proc)
    assert size == mib * MiB
    assert received.hexdigest() == zeros_sha256(mib)
    assert (record["path"], record["status"], record["outcome"]) == (
        "/models/m/download",
        200,
        "ok",
    )
    assert transfer.peak_rss < PEAK_RSS_LIMIT

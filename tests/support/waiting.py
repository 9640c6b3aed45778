"""Waiting for another process (or a background task) to reach a state."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import web

from tests.support.echo import NAME, SEEN
from tests.support.running import read_log

T = TypeVar("T")
POLL_S = 0.05


async def poll(probe: Callable[[], Awaitable[T | None]], within: float, what: str) -> T:
    """Call `probe` every POLL_S until it returns something, for at most `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        found = await probe()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"not within {within} s: {what}")
        await asyncio.sleep(POLL_S)


async def log_record(
    log_path: Path, wanted: Callable[[dict[str, Any]], bool], within: float = 3.0
) -> dict[str, Any]:
    """The first record in the log that `wanted` accepts, waiting for the writer thread."""

    async def probe() -> dict[str, Any] | None:
        records = await asyncio.to_thread(read_log, log_path)
        return next((r for r in records if wanted(r)), None)

    return await poll(probe, within, f"a matching record in {log_path}")


async def forwarded(app: web.Application, target: str, within: float = 5.0) -> None:
    """Wait until the echo backend `app` has received `target` (its raw path and query)."""

    async def probe() -> bool | None:
        return True if target in app[SEEN] else None

    await poll(probe, within, f"{target} reaching backend {app[NAME]}")

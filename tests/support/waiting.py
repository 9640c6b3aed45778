"""Waiting for another process (or a background task) to reach a state."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

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

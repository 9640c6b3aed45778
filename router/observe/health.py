"""Upstream health: passive outlier detection, and optional active checks.

Passive (as Envoy's outlier detection): after `failures` consecutive connect failures or
timeouts a version is marked down for `cooloff_s`; then a single request goes through as a
probe, and its result marks the version up or down again. While a version is down, its
traffic goes straight to the fallback, without waiting for a timeout.

Active: a version with `health: {path, interval_s}` is asked `GET path` every interval; a
failed check counts as a failure, a passing one marks the version up at once.

Health is kept per (model, version, url), so it survives a reload that keeps the version,
and is forgotten when a reload removes the version or moves it to another url.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from router.config.model import Table
from router.http.client import Client, Origin, UpstreamError

Key = tuple[str, str, str]  # model, version, url


def grpc_key(model: str, version: str, grpc_url: str) -> Key:
    """A version's gRPC address in the books: apart from its HTTP url, which may be
    another server, or the same one failing otherwise."""
    return (model, version, f"grpc:{grpc_url}")


@dataclass(slots=True)
class _State:
    failures: int = 0
    down_until: float = 0.0  # monotonic time; 0 while up
    went_down: float = 0.0
    probe_until: float = 0.0  # a probe is out until then; if it never reports, another may go


class HealthBook:
    def __init__(self, on_change: Callable[[Key, bool], None] | None = None) -> None:
        self._states: dict[Key, _State] = {}
        self._on_change = on_change

    def available(self, key: Key) -> bool:
        """May a request go to this version now? Claims the probe when the cool-off is over."""
        state = self._states.get(key)
        if state is None or not state.down_until:
            return True
        now = time.monotonic()
        if now < state.down_until or now < state.probe_until:
            return False
        state.probe_until = now + (state.down_until - state.went_down)
        return True

    def is_down(self, key: Key) -> bool:
        state = self._states.get(key)
        return state is not None and bool(state.down_until)

    def success(self, key: Key) -> None:
        state = self._states.get(key)
        if state is None:
            return
        was_down = bool(state.down_until)
        del self._states[key]
        if was_down and self._on_change is not None:
            self._on_change(key, True)

    def forget(self, key: Key) -> None:
        """A version no longer in force: its state goes (a version brought back starts up)."""
        self._states.pop(key, None)

    def failure(self, key: Key, threshold: int, cooloff_s: float) -> None:
        state = self._states.setdefault(key, _State())
        state.failures += 1
        if state.down_until or state.failures >= threshold:
            was_up = not state.down_until
            state.went_down = time.monotonic()
            state.down_until = state.went_down + cooloff_s
            state.probe_until = 0.0
            if was_up and self._on_change is not None:
                self._on_change(key, False)


@asynccontextmanager
async def active_checks(
    tables: Callable[[], Table], book: HealthBook, client: Client
) -> AsyncIterator[None]:
    """Run every configured check on time, following the table in force across reloads;
    the checks go out through the upstream client, as requests do."""
    due: dict[Key, float] = {}
    running: set[asyncio.Task[None]] = set()

    async def check(c: _Check) -> None:
        try:
            response = await client.send(c.origin, "GET", c.path, (), None, c.timeout_s)
            try:
                await response.read()
            finally:
                response.release()
            ok = response.status < 500
        except UpstreamError:
            ok = False
        if ok:
            book.success(c.key)
        else:
            book.failure(c.key, c.failures, c.cooloff_s)

    async def loop() -> None:
        table, checks = None, []
        while True:
            if tables() is not table:  # a reload: only versions with a check are walked
                table = tables()
                checks = _checks(table)
                kept = {check.key for check in checks}
                for key in [key for key in due if key not in kept]:
                    del due[key]
            now = time.monotonic()
            for c in checks:
                if due.get(c.key, 0.0) <= now:
                    due[c.key] = now + c.interval_s
                    task = asyncio.create_task(check(c))
                    running.add(task)
                    task.add_done_callback(running.discard)
            await asyncio.sleep(0.1)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        for t in list(running):
            t.cancel()
        await asyncio.gather(task, *running, return_exceptions=True)


@dataclass(frozen=True, slots=True)
class _Check:
    """One version's active check, as the table in force configures it."""

    key: Key
    origin: Origin
    path: str
    interval_s: float
    timeout_s: float
    failures: int  # the model's outlier settings
    cooloff_s: float


def _checks(table: Table) -> list[_Check]:
    """The versions of `table` with an active check: worked out once per table, so that a
    table of thousands of models and no checks costs the loop nothing."""
    return [
        _Check(
            key=(model.name, version.name, version.url),
            origin=version.origin,
            path=version.health.path,
            interval_s=version.health.interval_s,
            timeout_s=min(version.timeout_s, version.health.interval_s),
            failures=model.outlier.failures,
            cooloff_s=model.outlier.cooloff_s,
        )
        for model in table.models.values()
        for version in model.versions.values()
        if version.health is not None
    ]

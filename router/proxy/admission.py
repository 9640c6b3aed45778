"""Admission to a version (contract section 10): at most `max_in_flight` requests forwarded
to it at once; one more waits its turn, first come first served, for up to `queue_s`, then
gets 503 `overloaded`. Envoy's circuit breakers (max requests, max pending) and nginx's
`max_conns` with `queue` do the same.

A place is held from the moment the request is sent until its answer has been relayed
whole, and is handed straight to the first request waiting, so a queue cannot be jumped.
The common case (a place free, nobody waiting) takes no await at all.
"""

from __future__ import annotations

import asyncio
from collections import deque

from router.config.model import Version
from router.errors import RouterError
from router.observe.metrics import Metrics

Key = tuple[str, str, str]  # model, version, url: a version's place in one table


class Overloaded(RouterError):
    """503 `overloaded`, with `Retry-After: 1` (contract section 10)."""

    def __init__(self, message: str) -> None:
        super().__init__("overloaded", message)


class _Gate:
    __slots__ = ("in_flight", "waiting")

    def __init__(self) -> None:
        self.in_flight = 0
        self.waiting: deque[asyncio.Future[None]] = deque()


class Admission:
    """The gates of every version of the tables in force; a version's gate outlives a
    reload that keeps its url, so requests begun on the old table still count. A gate a
    reload removes goes once nobody holds or awaits a place at it."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._gates: dict[Key, _Gate] = {}
        self._leaving: set[Key] = set()  # removed, and still held: dropped when idle

    def forget(self, key: Key) -> None:
        """A version a reload removed (or moved to another url): its gate goes now if idle,
        else when the last place held at it is given back."""
        gate = self._gates.get(key)
        if gate is None:
            return
        if gate.in_flight or gate.waiting:
            self._leaving.add(key)
        else:
            del self._gates[key]

    def __len__(self) -> int:
        """How many gates are kept: one per version that had traffic and is in force."""
        return len(self._gates)

    def enter(self, key: Key, version: Version) -> asyncio.Future[None] | None:
        """A place now (None), or a future to `wait` on; raises Overloaded when the version
        has no place and no queue (`queue_s: 0`)."""
        gate = self._gates.get(key)
        if gate is None:
            gate = self._gates[key] = _Gate()
        if gate.in_flight < version.max_in_flight and not gate.waiting:
            gate.in_flight += 1
            self.metrics.in_flight(key, 1)
            return None
        if version.queue_s <= 0:
            raise self._refuse(key, version, "full")
        waiter = asyncio.get_running_loop().create_future()
        gate.waiting.append(waiter)
        self.metrics.queued(key, 1)
        return waiter

    async def wait(self, key: Key, version: Version, waiter: asyncio.Future[None]) -> None:
        """Wait for the place `enter` promised, up to the version's `queue_s`."""
        gate = self._gates[key]
        loop = asyncio.get_running_loop()
        timer = loop.call_later(version.queue_s, self._expire, key, gate, waiter)
        try:
            await waiter
        except asyncio.CancelledError:  # the client went away while waiting
            if waiter.done() and not waiter.cancelled():
                self.leave(key)  # it was handed the place just as it was cancelled
            else:
                self._unqueue(key, gate, waiter)
            raise
        except Overloaded:
            raise self._refuse(key, version, "queue_timeout") from None
        finally:
            timer.cancel()

    def leave(self, key: Key) -> None:
        """Give the place back: to the first request still waiting, or free it."""
        gate = self._gates[key]
        while gate.waiting:
            waiter = gate.waiting.popleft()
            self.metrics.queued(key, -1)
            if not waiter.done():
                waiter.set_result(None)  # the place passes on: in_flight is unchanged
                return
        gate.in_flight -= 1
        self.metrics.in_flight(key, -1)
        if not gate.in_flight and self._leaving and key in self._leaving:
            self._leaving.discard(key)
            del self._gates[key]

    def _expire(self, key: Key, gate: _Gate, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            self._unqueue(key, gate, waiter)
            waiter.set_exception(Overloaded("queue_s ran out"))

    def _unqueue(self, key: Key, gate: _Gate, waiter: asyncio.Future[None]) -> None:
        if waiter in gate.waiting:
            gate.waiting.remove(waiter)
            self.metrics.queued(key, -1)

    def short_of(self, key: Key, cause: Exception) -> Overloaded:
        """The router itself ran out (descriptors, buffers): 503, counted as `local`, and
        never the version's failure."""
        self.metrics.overloaded(key, "local")
        return Overloaded(f"{cause}; retry later")

    def _refuse(self, key: Key, version: Version, reason: str) -> Overloaded:
        self.metrics.overloaded(key, reason)
        model = key[0]
        return Overloaded(
            f"version '{version.name}' of model '{model}' has {version.max_in_flight} "
            f"requests in flight (max_in_flight) and no place came free within "
            f"{version.queue_s:g} s (queue_s); retry later"
        )

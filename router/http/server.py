"""The public port's HTTP/1.1 server: the listening sockets, their connections, shutdown.

A server of the router's own (why not aiohttp's: docs/performance.md), built for what a
proxy needs, one module per concern:

- `connection.py`: llhttp parses requests strictly (`framing.py` holds the framing rules,
  `limits.py` the limits); each request runs as one task; keep-alive and pipelining, in
  order; lingering close after an early answer; `phase.py` is the table of its phases;
- `flow.py`: reading pauses for named reasons, writing waits for a slow client;
- `request.py`, `response.py`, `body.py`: a request, its answer and a body stream, as
  values that know their connection only as a `Channel`;
- this module: listening, the idle sweep and shutdown in the usual order (stop accepting,
  close idle connections, let requests in flight finish, close the rest).

The server knows nothing of routing: what it cannot answer itself it hands to `Hooks`
that the proxy gives it, error bodies included.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from router.http.connection import Connection
from router.http.hooks import Hooks
from router.http.limits import ServerLimits


class Server:
    """The listening sockets and the connections of the public port."""

    def __init__(self, hooks: Hooks, limits: ServerLimits | None = None) -> None:
        self.hooks = hooks
        self.limits = limits or ServerLimits()
        # Kept, not asked for: on Python 3.11 `asyncio.get_running_loop()` makes a getpid
        # system call each time.
        self.loop = asyncio.get_running_loop()
        self.connections: set[Connection] = set()
        self.stopping = False
        # Every request's task, from its creation (not its first step): a pipelined request
        # started by the answer before it is in flight before that one's task ends.
        self.in_flight: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._servers: list[asyncio.Server] = []
        self._sweeper: asyncio.TimerHandle | None = None

    async def listen(self, host: str, port: int, *, reuse_port: bool = False) -> None:
        server = await self.loop.create_server(
            lambda: Connection(self), host, port, backlog=1024, reuse_port=reuse_port or None
        )
        self._servers.append(server)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self.limits.sweep_s, self._sweep)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [sock.getsockname()[:2] for s in self._servers for sock in s.sockets]

    def _sweep(self) -> None:
        """Close keep-alive connections idle for `idle_s` (or sending a head that slowly)."""
        deadline = self.loop.time() - self.limits.idle_s
        for conn in list(self.connections):
            if conn.current is None and not conn.waiting and conn.idle_since < deadline:
                conn.close()
        self._sweeper = self.loop.call_later(self.limits.sweep_s, self._sweep)

    def track(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = self.loop.create_task(coro)
        self.in_flight.add(task)
        self._idle.clear()
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self.in_flight.discard(task)
        if not self.in_flight:
            self._idle.set()

    async def drained(self, seconds: float) -> bool:
        """Wait until no request is in flight, for up to `seconds`; True if none is left."""
        try:
            async with asyncio.timeout(seconds):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    def cut_off(self) -> None:
        """Cancel the requests still running (the drain time is over). One whose task has
        not begun is left to begin: it answers 503 at once, and logs it."""
        for conn in self.connections:
            request = conn.current
            if request is not None and request.started and request.task is not None:
                request.task.cancel()

    def stop_accepting(self) -> None:
        """New connections are refused; idle ones close; busy ones close after their answer."""
        self.stopping = True
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            conn.drain()

    def close(self) -> None:
        """Close every connection left (after the drain)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            conn.abort()

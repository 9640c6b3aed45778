"""The public port's HTTP/1.1 server: the listening sockets, their connections, shutdown.

A server of the router's own (why not aiohttp's: docs/performance.md), built for what a
proxy needs, one module per concern:

- `connection.py`: llhttp parses requests strictly (`framing.py` holds the framing rules,
  `limits.py` the limits); each request runs as one task; keep-alive and pipelining, in
  order; lingering close after an early answer; `phase.py` is the table of its phases;
- `flow.py`: reading pauses for named reasons, writing waits for a slow client;
- `request.py`, `response.py`, `body.py`: a request, its answer and a body stream, as
  values that know their connection only as a `Channel`;
- `listener.py`: listening sockets that accept only what the server can hold;
- this module: the connections, the idle sweep and shutdown in the usual order (stop
  accepting, close idle connections, let requests in flight finish, close the rest).

The server knows nothing of routing: what it cannot answer itself it hands to `Hooks`
that the proxy gives it, error bodies included.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine
from typing import Any

from router.http.connection import Connection
from router.http.hooks import Hooks
from router.http.limits import ServerLimits
from router.http.listener import Listener, listening_sockets


class Server:
    """The listening sockets and the connections of the public port."""

    def __init__(
        self,
        hooks: Hooks,
        limits: ServerLimits | None = None,
        max_connections: Callable[[], int] = lambda: 10_000,
    ) -> None:
        """`max_connections` is asked at each accept: the table in force may change it."""
        self.hooks = hooks
        self.limits = limits or ServerLimits()
        self.max_connections = max_connections
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
        self._listeners: list[Listener] = []
        self._opening: set[asyncio.Task[None]] = set()  # accepted, no Connection made yet
        self._sweeper: asyncio.TimerHandle | None = None

    async def listen(self, host: str, port: int, *, reuse_port: bool = False) -> None:
        for sock in listening_sockets(host, port, reuse_port=reuse_port):
            listener = Listener(self.loop, sock, self._room, self._accepted)
            self._listeners.append(listener)
            listener.resume()
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self.limits.sweep_s, self._sweep)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [listener.sock.getsockname()[:2] for listener in self._listeners]

    def _room(self) -> bool:
        return len(self.connections) + len(self._opening) < self.max_connections()

    def _accepted(self, sock: socket.socket) -> None:
        task = self.loop.create_task(self._connect(sock))
        self._opening.add(task)  # held: the loop keeps only weak references to tasks
        task.add_done_callback(self._opening.discard)

    async def _connect(self, sock: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(lambda: Connection(self), sock)
        except OSError:
            sock.close()

    def closed_one(self) -> None:
        """A connection closed: a listener paused for want of room accepts again."""
        if not self.stopping:
            for listener in self._listeners:
                listener.resume()

    def _sweep(self) -> None:
        """Answer 408 to a head arriving for `client_header_s`; close keep-alive connections
        idle for `idle_s`."""
        now = self.loop.time()
        deadline = now - self.limits.idle_s
        for conn in list(self.connections):
            if conn.head_overdue(now):
                conn.time_out_head()
            elif conn.current is None and not conn.waiting and conn.idle_since < deadline:
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
        for listener in self._listeners:
            listener.close()
        for conn in list(self.connections):
            conn.drain()

    def close(self) -> None:
        """Close every connection left (after the drain)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        for listener in self._listeners:
            listener.close()
        for conn in list(self.connections):
            conn.abort()

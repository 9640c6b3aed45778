"""Listening sockets that accept only what the server can hold (contract section 10).

asyncio's and uvloop's own `create_server` accept whatever arrives. At the open-files limit
asyncio stops for a second, and uvloop (libuv) accepts and at once closes what waits, so
that clients see resets. Here the server decides: beyond `max_connections`, or when the
process runs out of descriptors or buffers (EMFILE, ENFILE, ENOBUFS, ENOMEM), a listener
stops accepting and new connections wait in the kernel's listen backlog, as nginx does at
`worker_connections`; it accepts again as soon as a connection closes, or after a short
pause when the shortage came from elsewhere (the upstream side, say).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable

BACKLOG = 4096  # the kernel caps it at net.core.somaxconn
ACCEPT_BATCH = 128  # connections accepted per wake-up, so that requests are served meanwhile
RETRY_S = 0.1  # after a shortage with no connection of ours closing to end it
SHORTAGES = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))
# A connection that went away while it waited in the backlog: nothing to do.
GONE = frozenset((errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ECONNRESET))

log = logging.getLogger("model_router.http")


def listening_sockets(host: str, port: int, *, reuse_port: bool) -> list[socket.socket]:
    """Bound, listening, non-blocking sockets for every address `host` names."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    socks: list[socket.socket] = []
    for family, kind, proto, _, address in dict.fromkeys(infos):
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.setblocking(False)
        except OSError:
            sock.close()
            for opened in socks:
                opened.close()
            raise
        socks.append(sock)
    return socks


class Listener:
    """One listening socket. `room()` says whether another connection may be accepted;
    `accepted(sock)` takes each one that was."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        room: Callable[[], bool],
        accepted: Callable[[socket.socket], None],
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.room = room
        self.accepted = accepted
        self.paused = True
        self.closed = False
        self.short = False  # said once per shortage, not at every retry
        self._retry: asyncio.TimerHandle | None = None

    def resume(self) -> None:
        if self.paused and not self.closed:
            self.paused = False
            self.loop.add_reader(self.sock.fileno(), self._accept)

    def pause(self) -> None:
        if not self.paused and not self.closed:
            self.paused = True
            self.loop.remove_reader(self.sock.fileno())

    def close(self) -> None:
        self.pause()
        if self._retry is not None:
            self._retry.cancel()
        self.closed = True
        self.sock.close()

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            if not self.room():
                self.pause()  # a connection closing resumes it
                return
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in GONE:
                    continue
                if exc.errno not in SHORTAGES:
                    raise
                self._short_of(exc)
                return
            self.short = False
            conn.setblocking(False)
            self.accepted(conn)

    def _short_of(self, exc: OSError) -> None:
        """Out of descriptors or buffers: the waiting connections stay in the backlog."""
        if not self.short:
            log.warning("accepting paused: %s", exc.strerror or exc)
            self.short = True
        self.pause()
        if self._retry is None:
            self._retry = self.loop.call_later(RETRY_S, self._retried)

    def _retried(self) -> None:
        self._retry = None
        self.resume()

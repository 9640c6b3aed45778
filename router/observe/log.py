"""The routing log: structlog events rendered by orjson, written off the event loop.

Handlers only render a line and put it on a queue; one writer thread per process takes
lines off in batches and appends them with a single `os.write` per batch. The file is
opened with O_APPEND, so several worker processes can share it and lines stay whole.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
from collections import deque
from pathlib import Path
from typing import Any, Final

import orjson
import structlog
from structlog.typing import EventDict, FilteringBoundLogger, WrappedLogger

from router.config.model import UserIdMode
from router.http.clock import now_rfc3339
from router.http.text import printable

USER_ID_KEY_ENV: Final = "ROUTER_USER_ID_KEY"
PSEUDONYM_CHARS: Final = 16  # 64 bits: no collisions in practice, not reversible

_REOPEN: Final = object()
FLUSH_S: Final = 0.05  # lines reach the file within this long after they are logged


class LogSink:
    """A structlog logger that hands rendered lines to a writer thread.

    `msg` only appends to a deque (thread-safe, never blocking): a stalled disk costs
    memory, never request latency. The thread wakes every FLUSH_S, takes what is there and
    writes it with one `os.write`: one wake-up per batch, not per line, so it takes little
    time from the event loop. `close()` writes everything first.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        # Lines, and REOPEN marks in their place among them: lines logged before a reopen
        # go to the old file, lines logged after it to the new one.
        self._pending: deque[bytes | object] = deque()
        self._wake = threading.Event()
        self._stop = False
        self._fd = self._open()
        self._thread = threading.Thread(target=self._run, name="routing-log", daemon=True)
        self._thread.start()

    def msg(self, line: bytes) -> None:
        self._pending.append(line)

    info = warning = error = critical = debug = msg

    def reopen(self) -> None:
        """Open the file again under its name, after logrotate has moved it away."""
        self._pending.append(_REOPEN)
        self._wake.set()

    def close(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join()

    def _open(self) -> int:
        if self.path == "-":
            return os.dup(1)
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _run(self) -> None:
        while True:
            self._wake.wait(FLUSH_S)
            self._wake.clear()
            stop = self._stop
            pending = self._pending
            lines: list[bytes] = []
            for _ in range(len(pending)):
                item = pending.popleft()
                if isinstance(item, bytes):
                    lines.append(item)
                    continue
                self._flush(lines)
                os.close(self._fd)
                self._fd = self._open()
            self._flush(lines)
            if stop:
                os.close(self._fd)
                return

    def _flush(self, lines: list[bytes]) -> None:
        if lines:
            self._write(b"\n".join(lines) + b"\n")
            lines.clear()

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]


def _order(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Put `event` and `ts` first, so a line reads well in `less`; stamp events without ts."""
    event = event_dict.pop("event")
    ts = event_dict.pop("ts", None) or now_rfc3339()
    return {"event": event, "ts": ts, **event_dict}


def make_logger(sink: LogSink) -> FilteringBoundLogger:
    """The routing-log logger: `log.info("request", **fields)` writes one JSON line."""
    logger: FilteringBoundLogger = structlog.wrap_logger(
        sink,
        processors=[_order, structlog.processors.JSONRenderer(serializer=orjson.dumps)],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    ).bind()  # the bound logger itself, not a lazy proxy that binds on every call
    return logger


class Pseudonymizer:
    """What `user` holds in a record, per `log.user_ids`.

    `hash` gives a keyed HMAC-SHA256 when ROUTER_USER_ID_KEY is set (so the pseudonyms
    cannot be reversed by hashing guessed ids), else a plain SHA-256; either truncated.
    """

    def __init__(self, mode: UserIdMode, key: str | None = None) -> None:
        self.mode = mode
        self._key = key.encode("utf-8") if key else None

    @classmethod
    def from_env(cls, mode: UserIdMode) -> Pseudonymizer:
        return cls(mode, os.environ.get(USER_ID_KEY_ENV))

    def __call__(self, user_id: str | None) -> str | None:
        if user_id is None:
            return None
        if self.mode == "raw":
            return printable(user_id)
        data = user_id.encode("utf-8", "surrogateescape")
        if self._key is not None:
            digest = hmac.new(self._key, data, hashlib.sha256).hexdigest()
        else:
            digest = hashlib.sha256(data).hexdigest()
        return digest[:PSEUDONYM_CHARS]

    def fields(self, user_id: str | None) -> dict[str, Any]:
        """`{"user": ...}`, or nothing at all with `user_ids: omit`."""
        if self.mode == "omit":
            return {}
        return {"user": self(user_id)}

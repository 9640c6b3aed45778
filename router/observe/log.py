"""The routing log: structlog events rendered by orjson, written off the event loop.

Handlers only render a line and hand it to the sink (sink.py): one writer thread per
process appends lines in batches, in bounded memory, through disk faults.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from typing import Any, Final

import orjson
import structlog
from structlog.typing import EventDict, FilteringBoundLogger, WrappedLogger

from router.config.model import UserIdMode
from router.http.clock import now_rfc3339
from router.http.text import printable
from router.observe.sink import LogSink as LogSink  # its home until sink.py

USER_ID_KEY_ENV: Final = "ROUTER_USER_ID_KEY"
PSEUDONYM_CHARS: Final = 16  # 64 bits: no collisions in practice, not reversible


def _order(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Put `event` and `ts` first, so a line reads well in `less`; stamp events without ts."""
    event = event_dict.pop("event")
    ts = event_dict.pop("ts", None) or now_rfc3339()
    return {"event": event, "ts": ts, **event_dict}


def _fallback(value: Any) -> Any:
    """What structlog's JSON renderer writes for a value JSON has no type for."""
    return repr(value)


def render(fields: dict[str, Any]) -> bytes:
    """One log line, as the logger below renders an event whose fields are already in
    order (`event`, `ts`, the rest): for the hot path, which skips structlog's copies."""
    return orjson.dumps(fields, default=_fallback)


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

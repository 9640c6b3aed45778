"""The routing-log record of one request (contract section 5), filled in as it goes."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from router.observe.tracecontext import Trace
from router.routing.choose import AssignedBy

CLIENT_CLOSED: Final = 499  # nginx's status for a client that went away first
# What the contract counts as an error (the error rate, section 7), and which requests were
# assigned at random (the only ones fit to compare versions): the report and the rollout
# controller read the log by these.
ERROR_OUTCOMES: Final = ("server_error", "timeout", "unavailable")
RANDOMISED: Final = ("split", "no_user_random")

Outcome = Literal[
    "ok", "client_error", "server_error", "timeout", "unavailable", "rejected", "client_closed"
]


@dataclass(slots=True)
class Exchange:
    """What is known of one request so far; becomes its `request` record."""

    ts: str
    started: float
    request_id: str
    method: str | None
    path: str | None
    config: str
    trace: Trace  # its place in a W3C trace (contract section 15)
    model: str | None = None
    version: str | None = None
    assigned_version: str | None = None
    assigned_by: AssignedBy | None = None
    bucket: int | None = None
    user: dict[str, Any] = field(default_factory=dict)  # {"user": ...}, or {} to omit it
    status: int | None = None
    outcome: Outcome = "rejected"
    upstream_ms: float | None = None
    response: dict[str, Any] | None = None
    protocol: str = "rest"  # the protocol its path belongs to (contract section 11)
    # When the answer's first body byte (a gRPC call's first message) went out, as a
    # `time.perf_counter()`: first_byte_ms.
    first_byte: float | None = None
    grpc_status: str | None = None  # a gRPC call's status name (contract section 12)
    feedback: bool = False  # an accepted feedback is logged as a `feedback` event instead
    # Resolved once the record is written (the request is over): a shadow copy waits on it
    # to compare its answer with this one. None unless a copy asked for it.
    finished: asyncio.Future[None] | None = None

    def record(self) -> dict[str, Any]:
        """The `request` event's fields in the order of its line, `event` first (as
        log.py's `_order` puts it): the handler renders it without structlog's copies."""
        first_byte = self.first_byte
        fields: dict[str, Any] = {
            "event": "request",
            "ts": self.ts,
            "request_id": self.request_id,
            "model": self.model,
            "version": self.version,
            "assigned_version": self.assigned_version,
            "assigned_by": self.assigned_by,
            "bucket": self.bucket,
            "user": self.user.get("user"),  # {} with `user_ids: omit`: taken out below
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "outcome": self.outcome,
            "latency_ms": ms_since(self.started),
            "upstream_ms": self.upstream_ms,
            "config": self.config,
            "protocol": self.protocol,
            "trace_id": self.trace.trace_id,
            "first_byte_ms": first_byte and _ms(first_byte - self.started),
        }  # one dict of constant keys: no `**` merge in the middle
        if not self.user:
            del fields["user"]
        if self.grpc_status is not None:
            fields["grpc_status"] = self.grpc_status
        if self.response is not None:
            fields["response"] = self.response
        return fields


def outcome_of(status: int) -> Outcome:
    """A backend's answer as a record's outcome: ok below 400, then 4xx and 5xx."""
    return "ok" if status < 400 else "client_error" if status < 500 else "server_error"


def ms_since(start: float) -> float:
    """Milliseconds since `start` (a `time.perf_counter()`), as records carry them."""
    return _ms(time.perf_counter() - start)


def _ms(seconds: float) -> float:
    """Milliseconds to 3 decimals, as `round(seconds * 1000, 3)` gives them (but for a
    last digit on a rare exact tie), through an integer: `round` to 3 places converts to
    decimal, 1,300 more instructions a call, three calls a request."""
    return round(seconds * 1000 * 1000) / 1000

"""Errors the router makes itself, and their JSON shape (contract section 4)."""

from __future__ import annotations

from typing import Literal

import orjson

from router.http.text import printable

ErrorCode = Literal[
    "unknown_model",
    "unknown_version",
    "version_retired",
    "missing_user_id",
    "body_too_large",
    "upstream_timeout",
    "upstream_unavailable",
    "bad_path",
    "not_found",
    "unauthorized",
    "bad_feedback",
    "body_timeout",
    "bad_body",
    "bad_request",
    "method_not_allowed",
    "request_timeout",
    "not_implemented",
    "unsupported_version",
    "shutting_down",
    "overloaded",
    "internal_error",
]

STATUS: dict[ErrorCode, int] = {
    "unknown_model": 404,
    "unknown_version": 404,
    "version_retired": 410,
    "missing_user_id": 400,
    "body_too_large": 413,
    "upstream_timeout": 504,
    "upstream_unavailable": 502,
    "bad_path": 400,
    "not_found": 404,
    "unauthorized": 401,
    "bad_feedback": 400,
    "body_timeout": 408,
    "bad_body": 400,
    "bad_request": 400,  # refused by the HTTP parser, before routing
    "method_not_allowed": 405,  # CONNECT, TRACE: never forwarded; the answer carries Allow
    "request_timeout": 408,  # a request head not whole within client_header_s
    "not_implemented": 501,  # a transfer coding other than chunked
    "unsupported_version": 505,  # not HTTP/1.0 or HTTP/1.1
    "shutting_down": 503,  # drain_s ran out before the answer
    "overloaded": 503,  # a version's max_in_flight and queue_s, or the router's own limits
    "internal_error": 500,  # a bug in the router: its traceback is on stderr
}


def error_body(code: str, message: str, request_id: str, **more: object) -> bytes:
    """The contract's JSON error: `{"error": {"code", "message", "request_id", ...more}}`."""
    # Messages quote what the client sent, which may hold bytes that are not UTF-8.
    return orjson.dumps(
        {"error": {"code": code, "message": printable(message), "request_id": request_id, **more}}
    )


class RouterError(Exception):
    """A request the router answers itself, with one of the contract's codes."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        message = printable(message)
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message
        self.status = STATUS[code]

    def body(self, request_id: str) -> bytes:
        return error_body(self.code, self.message, request_id)

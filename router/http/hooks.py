"""What the HTTP server asks of the application that runs on it: the proxy gives these."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from router.http.request import Request
from router.http.response import StreamResponse


@dataclass(frozen=True, slots=True)
class Hooks:
    """What the server asks of the application."""

    # Answers one request.
    handle: Callable[[Request], Awaitable[StreamResponse]]
    # Logs the record of a request the server answered itself (refused before routing, or
    # `OPTIONS *`), given its status and the request if it was parsed; returns its id.
    refused: Callable[[int, Request | None], str]
    # Logs the record of a request received but never started: its connection closed
    # first, closed by the router (True) or by the client.
    dropped: Callable[[Request, bool], None]
    # The JSON body of an error the server answers itself: (code, message, request id).
    error_body: Callable[[str, str, str], bytes]

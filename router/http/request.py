"""A request as the public port's server (`router/server.py`) hands it to the proxy.

Only what the proxy uses: method, target, version, headers, cookies, query and a body
read on demand. Everything is parsed once, by llhttp, before the handler starts; cookies
and the query string only when asked for (most routing looks at a header).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from functools import cached_property
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from multidict import CIMultiDictProxy, MultiDict, MultiDictProxy

from router.http.body import Body

if TYPE_CHECKING:
    from router.http.server import Connection


class BadBody(Exception):
    """The body broke its own framing (a bad chunk size, bytes after the last chunk)."""


class Request:
    """One request: parsed head, body stream, and the task that handles it."""

    __slots__ = (
        "__dict__",
        "_conn",
        "body_exists",
        "content",
        "content_length",
        "headers",
        "keep_alive",
        "method",
        "raw_path",
        "started",
        "task",
        "version",
    )  # fmt: skip

    def __init__(
        self,
        conn: Connection,
        method: str,
        raw_path: str,
        version: tuple[int, int],
        headers: CIMultiDictProxy[str],
        content_length: int | None,
        chunked: bool,
        keep_alive: bool,
    ) -> None:
        self._conn = conn
        self.method = method
        self.raw_path = raw_path  # the target as sent: origin-form, absolute-form or `*`
        self.version = version
        self.headers = headers
        self.content_length = content_length
        self.body_exists = chunked or bool(content_length)
        self.keep_alive = keep_alive  # what the client asked for (llhttp's reading of it)
        self.content = Body(conn.server.loop, conn.body_flow)
        self.task: asyncio.Task[None] | None = None
        self.started = False  # the task has begun to run

    @property
    def remote(self) -> str | None:
        """The client's address, as X-Forwarded-For should append it."""
        return self._conn.remote

    @property
    def scheme(self) -> str:
        return "http"

    @property
    def responded(self) -> bool:
        """Some of the answer (its status line at least) has gone out to the client."""
        return self._conn.responded

    @cached_property
    def cookies(self) -> Mapping[str, str]:
        """The Cookie header's pairs (RFC 6265 5.4); a later pair with the same name wins."""
        found: dict[str, str] = {}
        for header in self.headers.getall("Cookie", ()):
            for pair in header.split(";"):
                name, eq, value = pair.partition("=")
                name, value = name.strip(), value.strip()
                if not eq or not name:
                    continue
                if len(value) >= 2 and value[0] == value[-1] == '"':
                    value = value[1:-1]
                found[name] = value
        return found

    @cached_property
    def query(self) -> MultiDictProxy[str]:
        """The query string's parameters, decoded (`+` is a space); the first one wins."""
        _, _, query = self.raw_path.partition("?")
        return MultiDictProxy(MultiDict(parse_qsl(query, keep_blank_values=True)))

    def send_continue(self) -> None:
        """`100 Continue` for a client that sent `Expect: 100-continue`, once it is wanted
        (RFC 9110 10.1.1): a request refused before (413) never makes the client send it."""
        if self.version >= (1, 1) and self.headers.get("Expect", "").lower() == "100-continue":
            self._conn.send_continue()

    def close_connection(self) -> None:
        """Close the client's connection now: an answer that broke off must look broken."""
        self._conn.close()

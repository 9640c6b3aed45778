"""A request as the public port's server hands it to the proxy: a value that knows its
connection only as a `Channel`.

Only what the proxy uses: method, target, version, headers, cookies, query and a body
read on demand. Everything is parsed once, by llhttp, before the handler starts; cookies
and the query string only when asked for (most routing looks at a header).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from functools import cached_property
from typing import Protocol
from urllib.parse import parse_qsl

from multidict import CIMultiDictProxy, MultiDict, MultiDictProxy

from router.http.body import Body


def new_request_id() -> str:
    """128 random bits in hex. An id must be unique, not secret: no system call for it."""
    return f"{random.getrandbits(128):032x}"


class Channel(Protocol):
    """What a request and its answer need of the connection they came on."""

    loop: asyncio.AbstractEventLoop
    remote: str | None  # the client's address

    def body_flow(self, pause: bool) -> None: ...
    def send_continue(self) -> None: ...
    def close(self) -> None: ...
    def keeps_alive(self) -> bool: ...
    async def write(self, data: bytes) -> None: ...
    def finished(self, close: bool) -> None: ...


class Request:
    """One request: parsed head, body stream, and the task that handles it."""

    __slots__ = (
        "__dict__",
        "body_exists",
        "channel",
        "content",
        "content_length",
        "headers",
        "keep_alive",
        "method",
        "raw_path",
        "responded",
        "started",
        "task",
        "version",
    )

    def __init__(
        self,
        channel: Channel,
        method: str,
        raw_path: str,
        version: tuple[int, int],
        headers: CIMultiDictProxy[str],
        content_length: int | None,
        chunked: bool,
        keep_alive: bool,
    ) -> None:
        self.channel = channel
        self.method = method
        self.raw_path = raw_path  # the target as sent: origin-form, absolute-form or `*`
        self.version = version
        self.headers = headers
        self.content_length = content_length
        self.body_exists = chunked or bool(content_length)
        self.keep_alive = keep_alive  # what the client asked for (llhttp's reading of it)
        self.content = Body(channel.loop, channel.body_flow)
        self.task: asyncio.Task[None] | None = None
        self.started = False  # the task has begun to run
        self.responded = False  # some of the answer (its status line at least) went out

    @property
    def remote(self) -> str | None:
        """The client's address, as X-Forwarded-For should append it."""
        return self.channel.remote

    @property
    def scheme(self) -> str:
        return "http"

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
            self.channel.send_continue()

    def close_connection(self) -> None:
        """Close the client's connection now: an answer that broke off must look broken."""
        self.channel.close()

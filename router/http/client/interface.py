"""What every upstream transport takes and gives: an `Origin` to send to, and an
`UpstreamResponse` whose body is read whole or piece by piece."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import SplitResult

from multidict import CIMultiDictProxy

from router.http.text import host_port

CONNECT_S = 5.0  # the longest connect, whatever the timeout


@dataclass(frozen=True, slots=True)
class Origin:
    """A version's url taken apart once, when the table loads."""

    scheme: str
    host: str
    port: int
    base: str  # the url's path, before every forwarded one; no trailing slash
    prefix: str  # the url as written, less a trailing slash: what a target is appended to
    authority: str  # host:port, as the Host header gives it

    @classmethod
    def of(cls, parts: SplitResult) -> Origin:
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        base = parts.path.rstrip("/")
        prefix = f"{parts.scheme}://{parts.netloc}{base}"
        return cls(parts.scheme, host, port, base, prefix, host_port(host, port))

    def url(self, target: str) -> str:
        return self.prefix + target


def connect_timeout(timeout_s: float) -> float:
    """A connect slower than half the timeout (5 s at most) counts as unreachable."""
    return min(timeout_s / 2, CONNECT_S)


class UpstreamResponse(Protocol):
    """An answer whose head is in. Its body must be read with `read` or `chunks`, then
    `release` hands the connection back (or closes it)."""

    status: int
    reason: str
    headers: CIMultiDictProxy[str]
    content_length: int | None

    async def read(self) -> bytes:
        """The whole body, within the exchange's timeout_s."""
        ...

    def chunks(self) -> AsyncIterator[bytes]:
        """The body piece by piece, each within timeout_s of asking for it: time spent
        by the caller between pieces (a slow client) is not the version's."""
        ...

    def release(self) -> None: ...

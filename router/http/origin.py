"""A version's url taken apart: what the routing table keeps and the client connects to.

Apart from the client package, so that reading a table (`check`, and the child process
that reads one for a reload) does not import aiohttp: 0.2 s of every `check`.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import SplitResult

from router.http.text import host_port


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

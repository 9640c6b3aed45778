"""What every upstream transport takes and gives: an `Origin` to send to, and an
`UpstreamResponse` whose body is read whole or piece by piece."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from multidict import CIMultiDictProxy

from router.http.client.errors import BadResponse

CONNECT_S = 5.0  # the longest connect, whatever the timeout

# Methods a client may send twice with the effect of once (RFC 9110 9.2.2): the only ones a
# transport sends again on its own once they may have reached the backend (aiohttp's client
# retries the same set on a kept-alive connection that failed).
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


def not_replayed(failure: Exception, method: str) -> BadResponse:
    """The error of a request written to a kept-alive connection that failed, and not sent
    again: it says why, and what would allow it."""
    return BadResponse(
        f"{failure}, after the {method} was written to a kept-alive connection; {method} is"
        " not idempotent, so it was not sent again (the model's retry_post: true allows it)"
    )


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

"""One error tree for every upstream transport (as httpx's). Each adapter translates its
own library's failures into these, in one place, so the proxy catches four named errors.

What each means to the proxy: `ConnectFailed` and `ConnectTimeout` never reached the
version (the request may go to a fallback); `ResponseTimeout` and `BadResponse` reached
it and got no usable answer in time; `LocalShortage` is the router's own state (out of
descriptors, buffers or ports), never the version's. Errors of the request body's own
source (a client that stops sending) are not translated: they reach the caller as they were
raised.
"""

from __future__ import annotations

import errno

# The router's own shortages: a connect that fails with one of these says nothing of the
# version (contract section 10).
LOCAL_ERRNOS = frozenset(
    (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EADDRNOTAVAIL)
)


class UpstreamError(Exception):
    """The exchange with the version failed."""


class ConnectFailed(UpstreamError):
    """No connection: refused, no route, no such host."""


class LocalShortage(UpstreamError):
    """The router could not open a connection for want of its own resources."""


def connect_error(exc: OSError) -> UpstreamError:
    """What a failed connect means: the router's shortage, or the version unreachable."""
    if exc.errno in LOCAL_ERRNOS:
        return LocalShortage(f"the router is out of resources: {exc.strerror or exc}")
    return ConnectFailed(f"cannot connect: {exc.strerror or exc}")


class ConnectTimeout(UpstreamError):
    """No connection within the connect timeout."""


class ResponseTimeout(UpstreamError):
    """Connected, but the answer (or its next piece) did not come within timeout_s."""


class BadResponse(UpstreamError):
    """Connected, but the answer was not HTTP that can be passed on, or the version closed
    the connection before or in the middle of it."""

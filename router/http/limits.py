"""The public port's limits, as one value handed to the server (nginx's defaults where it
has one), so that a test or an operator changes a limit by passing another value."""

from __future__ import annotations

import contextlib
import resource
from dataclasses import dataclass


def raise_open_files() -> int:
    """Raise the soft open-files limit to the hard one (contract section 10), as nginx's
    `worker_rlimit_nofile` and Go's runtime do: a soft limit of 1024 (systemd's default)
    would cap a proxy at a few hundred clients. Returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:  # an unlimited hard limit may be more than the kernel will take
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@dataclass(frozen=True, slots=True)
class ServerLimits:
    max_line: int = 8190  # bytes in the request target or one header line (nginx's 8 KiB)
    max_head: int = 64 * 1024  # bytes in all header lines together; a trailer has the same
    max_fields: int = 1000  # header lines
    pipeline_depth: int = 32  # requests received ahead of the one being handled, at most
    idle_s: float = 75.0  # a keep-alive connection with no request for this long is closed
    # A request head not whole this long after its first byte gets 408 (nginx's
    # client_header_timeout); keep it below idle_s, which closes silently.
    client_header_s: float = 60.0
    linger_s: float = 2.0  # the rest of a refused body is read and dropped this long
    send_s: float = 60.0  # a client that reads nothing of its answer this long is cut off
    sweep_s: float = 1.0  # how often idle connections are looked for

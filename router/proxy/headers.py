"""Which headers cross the proxy, in each direction (contract section 4; RFC 9110 7.6.1)."""

from __future__ import annotations

import datetime as dt
import email.utils
import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Final

from multidict import MultiMapping

from router.config.model import Version
from router.http.request import Request, new_request_id
from router.observe.tracecontext import Trace

# Hop-by-hop headers concern one connection only and are never forwarded (RFC 9110 7.6.1).
# Proxy-* covers Proxy-Authorization, Proxy-Authenticate and the non-standard
# Proxy-Connection that old clients still send.
HOP_BY_HOP: Final = frozenset(
    {"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade"}
)

# Set by the router itself towards the backend. Host is the backend's own (as nginx's
# default `proxy_set_header Host $proxy_host`); Expect is answered by the router's server.
# A backend's trace headers are each attempt's own (contract section 15): the router's span
# is the parent, never the caller's unchanged; the caller's answer names the router's span.
_SET_UPSTREAM: Final = frozenset(
    {"host", "expect", "x-model-version", "x-request-id", "x-forwarded-proto", "x-forwarded-host",
     "traceparent", "tracestate"}
)  # fmt: skip
_SET_DOWNSTREAM: Final = frozenset({"x-model-version", "x-request-id", "traceresponse"})

REQUEST_ID: Final = re.compile(r"[A-Za-z0-9._-]{1,128}\Z")


# What never crosses in each direction, unless `Connection` names more (one set look-up
# per header on the hot path).
# X-Shadow marks the router's copies (section 8): a client cannot send it to a backend.
_DROP_UPSTREAM: Final = HOP_BY_HOP | _SET_UPSTREAM | {"x-forwarded-for", "x-shadow"}
_DROP_DOWNSTREAM: Final = HOP_BY_HOP | _SET_DOWNSTREAM


# Whether each header name, as sent, crosses with only `_DROP_UPSTREAM` (or
# `_DROP_DOWNSTREAM`) dropped: a request's headers are mostly the names of the one before,
# and one look-up here costs a third of lowering and testing the name. At most
# _VERDICTS_KEPT names are kept each way; the others are worked out each time.
_VERDICTS_KEPT: Final = 1024
_UPSTREAM_VERDICTS: dict[str, bool] = {}
_DOWNSTREAM_VERDICTS: dict[str, bool] = {}


def _forwardable(
    headers: Mapping[str, str],
    items: Iterable[tuple[str, str]],
    base: frozenset[str],
    verdicts: dict[str, bool],
) -> list[tuple[str, str]]:
    """The headers that cross: not in `base`, nor named by `Connection` (hop-by-hop too)."""
    listed = headers.get("Connection")
    if listed and not (named := _connection_names(listed)) <= base:
        drop = base | named
        return [(name, value) for name, value in items if _crosses(name, drop)]
    return [
        (name, value)
        for name, value in items
        if (kept := verdicts.get(name)) or (kept is None and _learn(name, base, verdicts))
    ]


@lru_cache(maxsize=256)
def _connection_names(listed: str) -> frozenset[str]:
    """The names a `Connection` value lists (`keep-alive`, mostly: dropped anyway)."""
    return frozenset(token.strip().lower() for token in listed.split(","))


def _learn(name: str, drop: frozenset[str], verdicts: dict[str, bool]) -> bool:
    kept = _crosses(name, drop)
    if len(verdicts) < _VERDICTS_KEPT:
        verdicts[name] = kept
    return kept


def _crosses(name: str, drop: frozenset[str]) -> bool:
    lower = name.lower()
    return (
        lower not in drop
        and not lower.startswith("proxy-")
        and not ("_" in lower and _posing(lower, drop))
    )


def _posing(lower: str, drop: frozenset[str]) -> bool:
    """Whether a name with "_" is one not forwarded, with "-" for "_": a CGI or WSGI backend
    reads `X_Forwarded_For` as X-Forwarded-For (both are HTTP_X_FORWARDED_FOR), so it would
    pass for a header the router sets or drops. Other names with "_" pass unchanged."""
    plain = lower.replace("_", "-")
    return plain in drop or plain.startswith("proxy-")


def upstream_headers(
    headers: MultiMapping[str],
    items: Iterable[tuple[str, str]],
    *,
    remote: str | None,
    scheme: str,
    version: str,
    request_id: str,
) -> list[tuple[str, str]]:
    """The headers sent to the backend: the client's, less hop-by-hop, plus ours.

    X-Forwarded-For is appended to (every proxy on the way adds the address it saw);
    repeated X-Forwarded-For lines are folded into one list, as RFC 9110 5.3 allows.
    """
    out = _forwardable(headers, items, _DROP_UPSTREAM, _UPSTREAM_VERDICTS)
    seen = list(headers.getall("X-Forwarded-For", ()))
    if remote:
        seen.append(remote)
    if seen:
        out.append(("X-Forwarded-For", ", ".join(seen)))
    out.append(("X-Forwarded-Proto", scheme))
    # Only a valid `host[:port]` gets here: the server refuses any other Host (framing.py).
    if host := headers.get("Host"):
        out.append(("X-Forwarded-Host", host))
    out.append(("X-Model-Version", version))
    out.append(("X-Request-ID", request_id))
    return out


def headers_for(
    request: Request, version: str, request_id: str, trace: Trace, span_id: str
) -> list[tuple[str, str]]:
    """What a version gets with this request (the primary, or a shadow's copy): `span_id`
    is this attempt's span, in the request's trace."""
    out = upstream_headers(
        request.headers,
        request.headers.items(),
        remote=request.remote,
        scheme=request.scheme,
        version=version,
        request_id=request_id,
    )
    out.extend(trace.upstream(span_id))
    return out


def downstream_headers(
    headers: Mapping[str, str],
    items: Iterable[tuple[str, str]],
    *,
    version: str,
    request_id: str,
    extra: Iterable[tuple[str, str]],
) -> list[tuple[str, str]]:
    """The headers sent to the client: the backend's, less hop-by-hop, plus ours."""
    out = _forwardable(headers, items, _DROP_DOWNSTREAM, _DOWNSTREAM_VERDICTS)
    out.append(("X-Model-Version", version))
    out.append(("X-Request-ID", request_id))
    out.extend(extra)
    return out


def request_id(given: str | None) -> str:
    """The client's X-Request-ID when it is 1-128 of [A-Za-z0-9._-], else a new one."""
    return given if given is not None and REQUEST_ID.match(given) else new_request_id()


def lifecycle_headers(model: str, version: Version) -> tuple[tuple[str, str], ...]:
    """What a deprecated version's answers carry (contract section 4): `Deprecation`,
    `Sunset` (RFC 8594) when it has a sunset, a `Link` to its successor when it has one."""
    if version.state != "deprecated":
        return ()
    return _deprecation(model, version.sunset, version.successor)


@lru_cache(maxsize=4096)
def _deprecation(
    model: str, sunset: dt.date | None, successor: str | None
) -> tuple[tuple[str, str], ...]:
    headers = [("Deprecation", "true")]
    if sunset is not None:
        midnight = dt.datetime.combine(sunset, dt.time(), dt.UTC)
        headers.append(("Sunset", email.utils.format_datetime(midnight, usegmt=True)))
    if successor is not None:
        link = f'</models/{model}/versions/{successor}>; rel="successor-version"'
        headers.append(("Link", link))
    return tuple(headers)

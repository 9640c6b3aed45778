"""What the public port takes as a request: size limits and framing rules (RFC 9112),
checked on what llhttp has parsed, before anything is routed.

A refusal is a `BadHead` carrying the contract-shaped code and the status it is answered
with (the proxy's error hook renders the body). The size limits are `ServerLimits`. The
choices follow nginx where the RFC leaves room: a transfer coding other than chunked is
refused rather than undone, a request line that is not HTTP/1.0 or HTTP/1.1 gets 505,
CONNECT and TRACE get 405, and an empty Host is as invalid as a malformed one.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from multidict import CIMultiDict

# The codes of the refusals made here, with their status: the router's `ErrorCode` has them.
RefusalCode = Literal[
    "bad_request", "method_not_allowed", "request_timeout", "not_implemented", "unsupported_version"
]
_STATUS: dict[RefusalCode, int] = {
    "bad_request": 400,
    "method_not_allowed": 405,
    "request_timeout": 408,
    "not_implemented": 501,
    "unsupported_version": 505,
}

_VERSIONS = {"1.1": (1, 1), "1.0": (1, 0)}

Fields = tuple[tuple[str, str], ...]  # header lines that go with a refusal

# The methods the router forwards, as `Allow` lists them (RFC 9110 10.2.1) in the answer to
# `OPTIONS *` and in a 405. Other methods llhttp knows (WebDAV's, PURGE) are forwarded too,
# unadvertised; CONNECT and TRACE never are.
ALLOW = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
_NOT_ALLOWED = {
    b"CONNECT": "the router opens no tunnels",
    # TRACE would echo the client's headers, credentials included (cross-site tracing).
    b"TRACE": "the router does not echo requests",
}

# Host is `host[:port]` (RFC 9110 7.2, RFC 3986 3.2.2): a name of letters, digits, "-" and
# "_" in dot-separated labels (dotted IPv4 is one; a trailing dot is allowed), or an IPv6
# literal in brackets; the port is digits. Narrower than RFC 3986's reg-name, which also
# allows percent-encoding and ",", "@", ";" and the like: no DNS name holds them, and a
# Host that carries a list, userinfo or a path must never reach X-Forwarded-Host.
_HOST = re.compile(r"(?:[\w-]+(?:\.[\w-]+)*\.?|\[([0-9A-Fa-f:.]+)\])(?::[0-9]{1,5})?", re.ASCII)

# Names that read as a framing header once "_" is taken for "-", as CGI and WSGI backends
# do (`Content_Length` and `Content-Length` both become CONTENT_LENGTH): the router and a
# backend would disagree on where the body ends.
_FRAMING_NAMES = frozenset({b"content-length", b"transfer-encoding"})


class BadHead(Exception):
    """The request is refused with `code` (400 `bad_request` by default); `headers` go
    with the answer (`Allow` with a 405)."""

    def __init__(
        self, message: str, code: RefusalCode = "bad_request", headers: Fields = ()
    ) -> None:
        super().__init__(message)
        self.code: RefusalCode = code
        self.status = _STATUS[code]
        self.headers = headers


def check_head(
    http_version: str, method: bytes, target: bytes, headers: CIMultiDict[str]
) -> tuple[tuple[int, int], bool]:
    """The request's HTTP version and whether its body is chunked; BadHead if refused."""
    version = _VERSIONS.get(http_version)
    if version is None:
        raise BadHead("only HTTP/1.0 and HTTP/1.1 are served here", "unsupported_version")
    _check_method(method, target)
    _check_host(headers.getall("Host", []), version)
    chunked = "Transfer-Encoding" in headers and _chunked(headers, version)
    if _upgrade(headers) and (chunked or headers.get("Content-Length") not in (None, "0")):
        # llhttp hands over no body for an upgrade: refused, never forwarded cut short.
        raise BadHead("a request that asks for an upgrade cannot carry a body here")
    return version, chunked


def check_field_name(name: bytes) -> None:
    """BadHead for a header name with "_" that is a framing header's with "-" for "_"."""
    if name.replace(b"_", b"-").lower() in _FRAMING_NAMES:
        shown = name.decode("latin-1")
        raise BadHead(f"header '{shown}' would read as a framing header with '-' for '_'")


def _check_method(method: bytes, target: bytes) -> None:
    """CONNECT and TRACE get 405 (as nginx answers them), and `*` (asterisk-form) is for
    OPTIONS only (RFC 9112 3.2.4); the connection answers `OPTIONS *` itself."""
    if method in _NOT_ALLOWED:
        message = f"{method.decode()} is not allowed: {_NOT_ALLOWED[method]}"
        raise BadHead(message, "method_not_allowed", (("Allow", ALLOW),))
    if target == b"*" and method != b"OPTIONS":
        raise BadHead("only OPTIONS may have '*' as its target (RFC 9112 3.2.4)")


def _check_host(hosts: list[str], version: tuple[int, int]) -> None:
    """RFC 9112 3.2: 400 for an HTTP/1.1 request without Host, and for any request with
    more than one Host or an invalid one. An empty Host is refused too, as nginx does:
    only a request whose target has no authority may send one, and none here needs to."""
    if len(hosts) > 1 or (not hosts and version >= (1, 1)):
        raise BadHead("a request needs exactly one Host header (HTTP/1.0: at most one)")
    if hosts and not _known_host(hosts[0]):
        raise BadHead(f"Host '{hosts[0]}' is not a valid host[:port] (RFC 9110 7.2)")


# Host values already checked, and their verdict: a port's requests name a handful of
# hosts, and the regular expression costs about 4,500 instructions a request (callgrind).
_HOSTS_KEPT = 256
_hosts: dict[str, bool] = {}


def _known_host(host: str) -> bool:
    valid = _hosts.get(host)
    if valid is None:
        valid = _valid_host(host)
        if len(_hosts) < _HOSTS_KEPT:
            _hosts[host] = valid
    return valid


def _valid_host(host: str) -> bool:
    found = _HOST.fullmatch(host)
    if found is None or found[1] is None:
        return found is not None
    try:
        ipaddress.IPv6Address(found[1])
    except ValueError:
        return False
    return True


def _upgrade(headers: CIMultiDict[str]) -> bool:
    """Whether llhttp takes the request as asking to switch protocols (CONNECT, which it
    also takes so, is refused before this)."""
    return "Upgrade" in headers and "upgrade" in ",".join(headers.getall("Connection", ())).lower()


def _chunked(headers: CIMultiDict[str], version: tuple[int, int]) -> bool:
    """True for a chunked body; any other transfer coding is refused: not last, the body's
    length is unknowable (400, RFC 9112 6.3); before chunked, a coding the router would
    have to undo for the backend (501, RFC 9112 6.1)."""
    if version < (1, 1):
        raise BadHead("an HTTP/1.0 request cannot use Transfer-Encoding (RFC 9112 6.1)")
    listed = ",".join(headers.getall("Transfer-Encoding")).split(",")
    codings = [coding.strip().lower() for coding in listed if coding.strip()]
    if not codings or codings[-1] != "chunked":
        raise BadHead("Transfer-Encoding must end with chunked (RFC 9112 6.3)")
    if len(codings) > 1:
        raise BadHead("no transfer coding but chunked is supported", "not_implemented")
    return True

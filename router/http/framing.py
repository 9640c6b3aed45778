"""What the public port takes as a request: size limits and framing rules (RFC 9112),
checked on what llhttp has parsed, before anything is routed.

A refusal is a `BadHead` carrying the contract-shaped code and the status it is answered
with (the proxy's error hook renders the body). The size limits are `ServerLimits`. The
choices follow nginx where the RFC leaves room: a transfer coding other than chunked is
refused rather than undone, and a request line that is not HTTP/1.0 or HTTP/1.1 gets 505.
"""

from __future__ import annotations

from typing import Literal

from multidict import CIMultiDict

# The codes of the refusals made here, with their status: the router's `ErrorCode` has them.
RefusalCode = Literal["bad_request", "not_implemented", "unsupported_version"]
_STATUS: dict[RefusalCode, int] = {
    "bad_request": 400,
    "not_implemented": 501,
    "unsupported_version": 505,
}

_VERSIONS = {"1.1": (1, 1), "1.0": (1, 0)}


class BadHead(Exception):
    """The request is refused with `code` (400 `bad_request` by default)."""

    def __init__(self, message: str, code: RefusalCode = "bad_request") -> None:
        super().__init__(message)
        self.code: RefusalCode = code
        self.status = _STATUS[code]


def check_head(
    http_version: str, method: bytes, headers: CIMultiDict[str]
) -> tuple[tuple[int, int], bool]:
    """The request's HTTP version and whether its body is chunked; BadHead if refused."""
    version = _VERSIONS.get(http_version)
    if version is None:
        raise BadHead("only HTTP/1.0 and HTTP/1.1 are served here", "unsupported_version")
    if version >= (1, 1) and len(headers.getall("Host", ())) != 1:
        raise BadHead("an HTTP/1.1 request needs exactly one Host header")  # RFC 9112 3.2
    chunked = "Transfer-Encoding" in headers and _chunked(headers, version)
    if _upgrade(method, headers) and (chunked or headers.get("Content-Length") not in (None, "0")):
        # llhttp hands over no body for an upgrade: refused, never forwarded cut short.
        raise BadHead("a request that asks for an upgrade cannot carry a body here")
    return version, chunked


def _upgrade(method: bytes, headers: CIMultiDict[str]) -> bool:
    """Whether llhttp takes the request as asking to switch protocols."""
    if method == b"CONNECT":
        return True
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

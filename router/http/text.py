"""Small text rules shared by every layer: hosts in URLs and bytes that are not UTF-8."""

from __future__ import annotations


def host_port(host: str, port: int) -> str:
    """`host:port`, an IPv6 host in brackets (RFC 3986 3.2.2): `[::1]:8080`."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def printable(text: str) -> str:
    """Text as JSON can hold it: bytes that were not UTF-8 (kept as surrogates by
    `surrogateescape` when headers and targets are decoded) become U+FFFD."""
    if text.isascii():
        return text
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")

"""The contract's JSON error shape (contract section 4), as tests check it."""

from __future__ import annotations

from typing import Any

import aiohttp


def contract_error(body: Any, code: str) -> dict[str, str]:
    """`{"error": {"code", "message", "request_id"}}` with `code` and a message; returns
    the inner object."""
    assert list(body) == ["error"], body
    error: dict[str, str] = body["error"]
    assert set(error) == {"code", "message", "request_id"}, error
    assert error["code"] == code, error
    assert isinstance(error["message"], str)
    assert error["message"]
    assert isinstance(error["request_id"], str)
    assert error["request_id"]
    return error


async def router_error(resp: aiohttp.ClientResponse, status: int, code: str) -> str:
    """Check a router-made error: the status, the contract's JSON shape with `code`, and the
    request ID of the answer's header; return the message."""
    body = await resp.json()
    assert resp.status == status, body
    assert resp.content_type == "application/json"
    error = contract_error(body, code)
    assert error["request_id"] == resp.headers["X-Request-ID"]
    return error["message"]

"""The contract's JSON error shape (contract section 4), as tests check it."""

from __future__ import annotations

from typing import Any


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

"""A bearer token (RFC 6750) checked as the admin port and feedback check theirs."""

from __future__ import annotations

import hmac


def bears(authorization: str | None, token: str) -> bool:
    """Whether an `Authorization` value is `Bearer <token>`. compare_digest takes as long
    for a wrong token as for a right one: no timing oracle."""
    scheme, _, credentials = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        credentials.strip().encode(), token.encode()
    )

"""`POST /feedback/<model>`: ground truth for an earlier request, answered by the router
itself and logged as a `feedback` event only (contract section 4).

Labels decide rollouts (the accuracy guardrail), so they are guarded like the admin port:
when `server.feedback_token_env` names a set variable, a feedback needs its bearer token
(contract section 13). The body is read like any other the router reads itself: each piece
within `body_timeout_s`, the whole within FEEDBACK_BYTES, so slow posts cannot hold
connections (and fill `max_connections`) for ever.
"""

from __future__ import annotations

import os
from typing import Final

import orjson
from structlog.typing import FilteringBoundLogger

from router.config.model import ServerSettings, Table
from router.errors import RouterError
from router.http.auth import bears
from router.http.request import Request
from router.http.response import Response, StreamResponse
from router.observe.record import CLIENT_CLOSED, Exchange
from router.proxy.body import read_whole, too_large
from router.routing.paths import find_model

FEEDBACK_BYTES: Final = 1024 * 1024
_EXPECTED = 'expected {"request_id": "<id of the request>", "label": <the true answer>}'


async def feedback(
    request: Request, table: Table, name: str, log: FilteringBoundLogger, ex: Exchange
) -> StreamResponse:
    if request.method != "POST":
        raise RouterError("not_found", f"feedback is sent with POST /feedback/{name}")
    if name in table.models:  # a refused one is still logged under its model
        ex.model = name
    authorize(request, table.server)
    model = find_model(table, name)
    limit = min(FEEDBACK_BYTES, table.server.max_body_bytes)
    length = request.content_length
    if length is not None and length > limit:
        raise RouterError("body_too_large", too_large(limit))
    body = await read_whole(request, limit, table.server.body_timeout_s)
    if body.client_gone:
        ex.status, ex.outcome = CLIENT_CLOSED, "client_closed"
        return Response(CLIENT_CLOSED)
    try:
        payload = orjson.loads(body.data or b"")
    except orjson.JSONDecodeError as exc:
        raise RouterError("bad_feedback", f"the body is not JSON: {exc}") from exc
    if (
        not isinstance(payload, dict)
        or not isinstance(payload.get("request_id"), str)
        or not payload["request_id"]
        or "label" not in payload
    ):
        raise RouterError("bad_feedback", _EXPECTED)
    log.info("feedback", model=model.name, request_id=payload["request_id"], label=payload["label"])
    ex.feedback = True
    return Response(202, body=b'{"accepted":true}', content_type="application/json")


def authorize(request: Request, settings: ServerSettings) -> None:
    """401 `unauthorized` unless the request bears the token of `feedback_token_env`, when
    that names a variable that is set (read per request: a reload may name another)."""
    env = settings.feedback_token_env
    token = os.environ.get(env, "") if env else ""
    if not token:
        return
    if not bears(request.headers.get("Authorization"), token):
        message = "feedback needs 'Authorization: Bearer <token>' (server.feedback_token_env)"
        raise RouterError("unauthorized", message)

"""`POST /feedback/<model>`: ground truth for an earlier request, answered by the router
itself and logged as a `feedback` event only (contract section 4)."""

from __future__ import annotations

from typing import Final

import orjson
from structlog.typing import FilteringBoundLogger

from router.config.model import Table
from router.errors import RouterError
from router.http.body import BadBody
from router.http.request import Request
from router.http.response import Response, StreamResponse
from router.observe.record import CLIENT_CLOSED, Exchange
from router.proxy.body import malformed, too_large
from router.routing.paths import find_model

FEEDBACK_BYTES: Final = 1024 * 1024
_EXPECTED = 'expected {"request_id": "<id of the request>", "label": <the true answer>}'


async def feedback(
    request: Request, table: Table, name: str, log: FilteringBoundLogger, ex: Exchange
) -> StreamResponse:
    if request.method != "POST":
        raise RouterError("not_found", f"feedback is sent with POST /feedback/{name}")
    model = find_model(table, name)
    ex.model = model.name
    length = request.content_length
    if length is not None and length > FEEDBACK_BYTES:
        raise RouterError("body_too_large", too_large(FEEDBACK_BYTES))
    try:
        request.send_continue()
        data = await request.content.read(FEEDBACK_BYTES + 1)
        payload = orjson.loads(data)
    except ConnectionError:
        ex.status, ex.outcome = CLIENT_CLOSED, "client_closed"
        return Response(CLIENT_CLOSED)
    except BadBody as exc:
        raise RouterError("bad_body", malformed(exc)) from exc
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

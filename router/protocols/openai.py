"""OpenAI-compatible APIs (vLLM, TGI, llama.cpp; contract section 11): the body's
top-level `"model"` names the model, `<model>:<version>` pins a version, and the version's
server gets its own model name in that one string, every other byte as received.

`GET /v1/models` lists the table's models, as OpenAI's list.
"""

from __future__ import annotations

from typing import Final

import orjson

from router.config.model import Model, Table, Version
from router.errors import RouterError
from router.protocols.base import Adapter, Call
from router.protocols.jsonbody import replace_value, value_span

PATHS: Final = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings"})
_EXPECTED = 'expected a JSON object with "model": "<model>" or "<model>:<version>"'


class OpenAI(Adapter):
    name = "openai"
    model_in_body = True

    def call(self, path: str, query: str) -> Call | None:
        if path == "/v1/models":
            return Call(self, None, tail=path, local="models")
        if path in PATHS:
            return Call(self, None, tail=path + query)
        return None

    def model_of(self, data: bytes | None) -> tuple[str, str | None]:
        try:
            payload = orjson.loads(data or b"")
        except orjson.JSONDecodeError as exc:
            raise RouterError("bad_request", f"the body is not JSON ({exc}); {_EXPECTED}") from exc
        named = payload.get("model") if isinstance(payload, dict) else None
        if not isinstance(named, str) or not named:
            raise RouterError("bad_request", f'the body has no string "model"; {_EXPECTED}')
        model, _, pinned = named.partition(":")
        return model, pinned or None

    def body(self, call: Call, data: bytes, model: Model, version: Version) -> bytes:
        span = value_span(data, "model")
        if span is None:  # model_of found it: only a body that was never routed gets here
            return data
        wanted = version.upstream_model or model.name
        if orjson.loads(data[span[0] : span[1]]) == wanted:
            return data  # already what the version's server serves: forwarded as received
        return replace_value(data, span, wanted)

    def error(self, error: RouterError, request_id: str) -> bytes:
        # The shape OpenAI's SDKs parse into their APIError (message, type, code, param).
        return orjson.dumps(
            {
                "error": {
                    "message": error.message,
                    "type": error.code,
                    "code": error.code,
                    "param": None,
                }
            }
        )

    def answer(self, call: Call, table: Table, serving: bool) -> tuple[int, bytes]:
        listed = [
            {"id": name, "object": "model", "owned_by": "model-router"} for name in table.models
        ]
        return 200, orjson.dumps({"object": "list", "data": listed})


OPENAI = OpenAI()

"""TF Serving's REST API, which KServe v1 shares (contract section 11):
`/v1/models/<m>[/versions/<v>|/labels/<v>][:predict|:classify|:regress|/metadata]`.

KServe v1's `:explain` goes the same way. A label pins the router's version of that name;
the backend gets the version's `upstream_version`, if it has one.
"""

from __future__ import annotations

from urllib.parse import unquote

import orjson

from router.config.model import Model, Version
from router.errors import RouterError
from router.protocols.base import Adapter, Call, upstream_path

VERBS = frozenset({"predict", "classify", "regress", "explain"})


class TFServing(Adapter):
    name = "tfserving"
    same_target = False

    def call(self, segments: list[str], query: str) -> Call | None:
        """The call of `/v1/models/...` (`segments` after `models`), or None if none."""
        last = segments[-1]
        name, colon, verb = last.partition(":")
        if colon and verb not in VERBS:
            return None
        segments = [*segments[:-1], name]
        tail = ":" + verb if colon else ""
        if not colon and len(segments) in (2, 4) and segments[-1] == "metadata":
            tail, segments = "/metadata", segments[:-1]
        if len(segments) == 1 and segments[0]:
            return Call(self, unquote(segments[0]), None, tail + query)
        if len(segments) == 3 and segments[1] in ("versions", "labels") and segments[2]:
            return Call(self, unquote(segments[0]), unquote(segments[2]), tail + query)
        return None

    def error(self, error: RouterError, request_id: str) -> bytes:
        # TF Serving's own errors are {"error": "<message>"}.
        return orjson.dumps({"error": error.message})

    def target(self, call: Call, model: Model, version: Version) -> str:
        return upstream_path("/v1/models", model, version) + call.tail


TF_SERVING = TFServing()

"""TF Serving's REST API, which KServe v1 shares (contract section 11):
`/v1/models/<m>[/versions/<v>|/labels/<v>][:predict|:classify|:regress|/metadata]`.

KServe v1's `:explain` goes the same way. A label pins the router's version of that name;
the backend gets the version's `upstream_version`, if it has one.
"""

from __future__ import annotations

from urllib.parse import unquote

from router.protocols.base import Call, ModelServer

VERBS = frozenset({"predict", "classify", "regress", "explain"})


class TFServing(ModelServer):
    name = "tfserving"
    prefix = "/v1/models"

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


TF_SERVING = TFServing()

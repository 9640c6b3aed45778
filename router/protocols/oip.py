"""The Open Inference Protocol v2 over REST (KServe v2, Triton, MLServer, Seldon; contract
section 11): `/v2/models/<m>[/versions/<v>][/ready|/infer|...]`, and the server-wide
`/v2`, `/v2/health/live` and `/v2/health/ready`, which the router answers itself.

A model's other sub-paths (Triton's `/config` and `/stats`, KServe's `/generate`) are
forwarded the same way: the protocol puts them under the model.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from urllib.parse import unquote

import orjson

from router.config.model import Table
from router.protocols.base import Call, Local, ModelServer

_LOCAL: dict[str, Local] = {"": "server", "health/live": "live", "health/ready": "ready"}


def router_version() -> str:
    try:
        return version("model-router")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "0+unknown"


class OpenInference(ModelServer):
    name = "oip"
    prefix = "/v2/models"
    server_metadata = orjson.dumps(
        {"name": "model-router", "version": router_version(), "extensions": []}
    )

    def call(self, path: str, query: str) -> Call | None:
        """The call of a `/v2...` path (`path` without its query), or None if none."""
        rest = path[len("/v2") :].strip("/") if path != "/v2" else ""
        if rest in _LOCAL:
            return Call(self, None, tail=rest, local=_LOCAL[rest])
        segments = rest.split("/")
        if len(segments) < 2 or segments[0] != "models" or not segments[1]:
            return None
        model, tail = unquote(segments[1]), segments[2:]
        pinned = None
        if len(tail) >= 2 and tail[0] == "versions":
            pinned, tail = unquote(tail[1]), tail[2:]
        return Call(self, model, pinned, "".join("/" + s for s in tail) + query)

    def answer(self, call: Call, table: Table, serving: bool) -> tuple[int, bytes]:
        if call.local == "server":
            return 200, self.server_metadata
        if call.local == "live":  # the process answers: it is live, even while draining
            return 200, b'{"live":true}'
        return (200, b'{"ready":true}') if serving else (503, b'{"ready":false}')


OIP = OpenInference()

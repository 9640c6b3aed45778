"""What a protocol adapter says, and the call it makes of a request target.

The proxy core (choice, admission, fallback, relay, shadow, records) never looks at a
protocol: it asks the request's `Call` which model and version the client named, what
target and body a version gets, and the `Adapter` how the router's own errors and answers
look to that protocol's clients (Envoy's split between codecs and the router filter).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Final, Literal, NamedTuple
from urllib.parse import quote

import orjson

from router.config.model import Model, Table, Version
from router.errors import RouterError, error_body

ProtocolName = Literal["rest", "oip", "tfserving", "openai", "grpc"]
# What the router answers itself rather than forwarding.
Local = Literal["feedback", "live", "ready", "server", "models"]

ROUTER_ERROR_HEADER: Final = "X-Router-Error"


class Adapter:
    """One protocol: where its requests name the model, how a version's upstream request
    is written, and the shape of the router's answers. The base is the router's own
    `/models/...` protocol's shape (contract section 4)."""

    name: ProtocolName = "rest"
    # The model is named in the JSON body (OpenAI): the body is read whole to route.
    model_in_body: bool = False
    # A version gets the call's tail as it is (no model in the path to rewrite).
    same_target: bool = True

    def error(self, error: RouterError, request_id: str) -> bytes:
        """The body of an error the router makes, as this protocol's clients parse it."""
        return error_body(error.code, error.message, request_id)

    def target(self, call: Call, model: Model, version: Version) -> str:
        """The path and query the version gets."""
        return call.tail

    def body(self, call: Call, data: bytes, model: Model, version: Version) -> bytes:
        """The body the version gets: as received, unless the protocol names the model
        in it."""
        return data

    def answer(self, call: Call, table: Table, serving: bool) -> tuple[int, bytes]:
        """The router's own answer to a `Local` call: status and JSON body."""
        raise RouterError("not_found", f"no route for '{call.tail}'")

    def model_of(self, data: bytes | None) -> tuple[str, str | None]:
        """The model and pinned version a body names (only for `model_in_body`)."""
        raise NotImplementedError


class Call(NamedTuple):
    """What a request target asks for, as its protocol reads it (a tuple: one is made per
    request, and a frozen dataclass costs a microsecond more to build)."""

    adapter: Adapter
    model: str | None  # as named in the path; None when the body names it (OpenAI)
    pinned: str | None = None  # /versions/<v>/ (or /labels/<v>/)
    tail: str = "/"  # what follows the model (and version) in the path, with the query
    local: Local | None = None

    @property
    def protocol(self) -> ProtocolName:
        return self.adapter.name

    def target_for(self, model: Model, version: Version) -> str:
        """The path and query `version` gets."""
        adapter = self.adapter
        return self.tail if adapter.same_target else adapter.target(self, model, version)

    def body_for(self, model: Model, version: Version, data: bytes) -> bytes:
        """The body held whole as `version` gets it."""
        return self.adapter.body(self, data, model, version) if self.adapter.model_in_body else data


class RouteError(RouterError):
    """A target that names no route, or a body that names no model; with the model it
    names, if any, for the log, and the protocol whose error shape answers it."""

    def __init__(self, error: RouterError, model: str | None, adapter: Adapter) -> None:
        super().__init__(error.code, error.message)
        self.model = model
        self.adapter = adapter


class ModelServer(Adapter):
    """A model server's protocol that names the model in the path, under `prefix`: the Open
    Inference Protocol and TF Serving. A version gets `<prefix>/<upstream model>[/versions/
    <upstream version>]` and the tail; the router's errors are `{"error": "<message>"}`, as
    tritonclient, the KServe clients and TF Serving's read them."""

    prefix: str
    same_target = False

    def error(self, error: RouterError, request_id: str) -> bytes:
        return orjson.dumps({"error": error.message})

    def target(self, call: Call, model: Model, version: Version) -> str:
        name = version.upstream_model or model.name
        return _named(self.prefix, name, version.upstream_version) + call.tail


@lru_cache(maxsize=4096)
def _named(prefix: str, name: str, version: str | None) -> str:
    """Quoted once per name, not per request."""
    if version is None:
        return f"{prefix}/{quote(name, safe='')}"
    return f"{prefix}/{quote(name, safe='')}/versions/{quote(version, safe='')}"

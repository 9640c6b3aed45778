"""gRPC calls (contract section 12): which model and version a call names, how its messages
are written for a version, the statuses of the router's own errors, and the answers the
router gives itself. Pure: statuses are grpcio's `StatusCode` names; the listener and the
channels (router/rpc/) turn them into grpcio's values.

The Open Inference Protocol's `inference.GRPCInferenceService` names the model in its
request messages (`model_name`/`name` is field 1, `model_version`/`version` field 2 of
every model-level request); any other service is named by `models.<m>.grpc_services`, its
version pinned by the `x-model-version` metadata.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal, NamedTuple

from router.config.model import Model, Version
from router.errors import ErrorCode, RouterError
from router.protocols import protowire

OIP_SERVICE: Final = "inference.GRPCInferenceService"
# Model-level methods of the OIP service (and Triton's), each naming its model in fields
# 1 and 2; all unary but ModelStreamInfer, which is routed once, on its first message.
MODEL_METHODS: Final = frozenset(
    {"ModelInfer", "ModelStreamInfer", "ModelMetadata", "ModelReady", "ModelConfig",
     "ModelStatistics"}
)  # fmt: skip
STREAMED: Final = frozenset({"ModelStreamInfer"})
LOCAL: Final = frozenset({"ServerLive", "ServerReady", "ServerMetadata"})
NAME_FIELDS: Final = (1, 2)

Kind = Literal["oip", "service", "local"]

# The router's errors as gRPC statuses (contract section 12).
STATUS: dict[ErrorCode, str] = {
    "unknown_model": "NOT_FOUND",
    "unknown_version": "NOT_FOUND",
    "missing_user_id": "INVALID_ARGUMENT",
    "bad_request": "INVALID_ARGUMENT",
    "version_retired": "FAILED_PRECONDITION",
    "overloaded": "RESOURCE_EXHAUSTED",
    "body_too_large": "RESOURCE_EXHAUSTED",
    "upstream_unavailable": "UNAVAILABLE",
    "shutting_down": "UNAVAILABLE",
    "upstream_timeout": "DEADLINE_EXCEEDED",
    "not_found": "UNIMPLEMENTED",
}
# A status's outcome in the record, when the backend sent it.
CLIENT_ERRORS: Final = frozenset(
    {"INVALID_ARGUMENT", "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED",
     "FAILED_PRECONDITION", "OUT_OF_RANGE", "UNAUTHENTICATED"}
)  # fmt: skip


def status_of(error: RouterError) -> str:
    return STATUS.get(error.code, "INTERNAL")


class GrpcCall(NamedTuple):
    """What a gRPC method asks for."""

    method: str  # /package.Service/Method, as called
    service: str
    name: str  # the method's own name
    kind: Kind
    model: str | None = None  # for a service of `grpc_services`

    @property
    def unary(self) -> bool:
        """Known to be a unary call: its one request message can be sent again."""
        return self.kind == "oip" and self.name not in STREAMED

    def names(self, first: bytes) -> tuple[str, str | None]:
        """The model and pinned version an OIP request message names."""
        try:
            found = protowire.strings(first, NAME_FIELDS)
        except protowire.WireError as exc:
            raise RouterError("bad_request", f"{self.method}: {exc}") from exc
        model = found.get(1)
        if not model:
            raise RouterError("bad_request", f"{self.method}: the request names no model")
        return model, found.get(2) or None

    def rewrite(self, message: bytes, model: Model, version: Version) -> bytes:
        """The message as `version` gets it: an OIP request carries the version's names on
        its backend; any other message goes as it came."""
        if self.kind != "oip":
            return message
        names = {1: version.upstream_model or model.name, 2: version.upstream_version}
        return protowire.with_strings(message, names)


def call_of(method: str, services: Mapping[str, str]) -> GrpcCall:
    """The call a method path names; RouterError (`not_found`: UNIMPLEMENTED) if none.
    `services` maps a service of `grpc_services` to its model."""
    service, _, name = method.lstrip("/").rpartition("/")
    if service == OIP_SERVICE:
        if name in LOCAL:
            return GrpcCall(method, service, name, "local")
        if name in MODEL_METHODS:
            return GrpcCall(method, service, name, "oip")
    elif service in services:
        return GrpcCall(method, service, name, "service", services[service])
    raise RouterError("not_found", f"no model serves {method}; see models.<m>.grpc_services")


def unary_method(method: str) -> bool:
    """Whether a method path is one the router knows to be unary (the OIP model calls but
    ModelStreamInfer, and the server calls it answers itself)."""
    service, _, name = method.lstrip("/").rpartition("/")
    return service == OIP_SERVICE and (name in LOCAL or name in MODEL_METHODS - STREAMED)


def local_answer(call: GrpcCall, serving: bool, version: str) -> bytes:
    """ServerLive, ServerReady and ServerMetadata, as the router answers them."""
    if call.name == "ServerLive":
        return protowire.bool_field(1, True)
    if call.name == "ServerReady":
        return protowire.bool_field(1, serving)
    return protowire.string_field(1, "model-router") + protowire.string_field(2, version)

"""The Open Inference Protocol v2 over gRPC (``inference.GRPCInferenceService``, as Triton
and KServe serve it) for one example backend, beside its REST face (backends/oip.py).

The messages and the servicer base are the ones ``tritonclient.grpc`` ships
(``service_pb2``, ``service_pb2_grpc``): they are generated from the protocol's published
``grpc_service.proto`` (Triton's superset of KServe's), so no stubs are built here. Served
on grpcio's asyncio server, in the same event loop and with the same model, names and
faults (``Faults``, one sequence of draws for both faces) as the aiohttp application.

- ``ServerLive``, ``ServerReady``, ``ServerMetadata``: the server;
- ``ModelReady``, ``ModelMetadata``: the model, as ``GET /v2/models/<name>[/ready]``;
- ``ModelInfer``: one input of shape ``[n, 30]``, FP32 or FP64, its tensor in
  ``raw_input_contents`` (tritonclient.grpc sends it there, little-endian) or in
  ``contents.fp32_contents``/``fp64_contents``; the outputs ``predict`` (INT64) and
  ``probability`` (FP64) in ``raw_output_contents``, as Triton answers;
- ``ModelStreamInfer``: Triton's shape of it, a stream of ``ModelInferRequest`` in and of
  ``ModelStreamInferResponse`` out, one per request, in order; a request that cannot be
  answered gets ``error_message`` and the stream goes on (MLServer's stream differs: it
  answers ``ModelInferResponse`` messages, which tritonclient cannot read).

A model or version this backend does not serve is NOT_FOUND, a malformed request
INVALID_ARGUMENT, an injected failure INTERNAL (HTTP's 500); the others of Triton's
service (repository, shared memory, ...) are UNIMPLEMENTED, the servicer base's answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import grpc.aio
import numpy as np
from aiohttp import web
from tritonclient.grpc import service_pb2, service_pb2_grpc

from backends.model import N_FEATURES, predict_batch
from backends.oip import DATATYPES, INPUT_NAME, OUTPUTS, InferError, check_names
from backends.state import MODEL_KEY, NAME_KEY, VERSION_KEY, delay, injected_failure

Context = grpc.aio.ServicerContext[Any, Any]

SERVER_NAME = "model-router-example-backend"
# The REST face's statuses as gRPC's (the mapping grpc-gateway and Triton use).
STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    500: grpc.StatusCode.INTERNAL,
}
NUMPY: dict[str, np.dtype[Any]] = {"FP32": np.dtype("<f4"), "FP64": np.dtype("<f8")}
_ANSWERED: dict[str, np.dtype[Any]] = {"predict": np.dtype("<i8"), "probability": np.dtype("<f8")}


# The base class comes from generated code without type hints (tritonclient is untyped).
class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """The OIP gRPC service of the backend whose aiohttp application is ``app``; its
    methods keep the proto's names (CamelCase), which grpcio looks up."""

    def __init__(self, app: web.Application) -> None:
        self.app = app

    async def ServerLive(self, request: Any, context: Context) -> Any:
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Context) -> Any:
        return service_pb2.ServerReadyResponse(ready=True)  # trained before serving

    async def ServerMetadata(self, request: Any, context: Context) -> Any:
        return service_pb2.ServerMetadataResponse(name=SERVER_NAME, version="1")

    async def ModelReady(self, request: Any, context: Context) -> Any:
        await self._check(request.name, request.version, context)
        return service_pb2.ModelReadyResponse(ready=True)

    async def ModelMetadata(self, request: Any, context: Context) -> Any:
        await self._check(request.name, request.version, context)
        tensor = service_pb2.ModelMetadataResponse.TensorMetadata
        return service_pb2.ModelMetadataResponse(
            name=self.app[NAME_KEY],
            versions=[self.app[VERSION_KEY]],
            platform="scikit-learn",
            inputs=[tensor(name=INPUT_NAME, datatype="FP64", shape=[-1, N_FEATURES])],
            outputs=[tensor(name=n, datatype=t, shape=[-1]) for n, t in OUTPUTS.items()],
        )

    async def ModelInfer(self, request: Any, context: Context) -> Any:
        await delay(self.app)
        try:
            return infer(self.app, request)
        except InferError as exc:
            await context.abort(STATUS[exc.status], exc.message)

    async def ModelStreamInfer(
        self, requests: AsyncIterator[Any], context: Context
    ) -> AsyncIterator[Any]:
        async for request in requests:
            await delay(self.app)
            try:
                answer = infer(self.app, request)
            except InferError as exc:
                yield service_pb2.ModelStreamInferResponse(error_message=exc.message)
            else:
                yield service_pb2.ModelStreamInferResponse(infer_response=answer)

    async def _check(self, name: str, version: str, context: Context) -> None:
        try:
            check_names(self.app, name, version or None)
        except InferError as exc:
            await context.abort(STATUS[exc.status], exc.message)


def infer(app: web.Application, request: Any) -> Any:
    """The ModelInferResponse to one ModelInferRequest; InferError if it cannot be answered
    (an injected failure included, drawn once per otherwise valid request)."""
    check_names(app, request.model_name, request.model_version or None)
    rows = parse_rows(request)
    wanted = parse_outputs(request)
    failure = injected_failure(app)
    if failure is not None:
        raise InferError(500, failure)
    labels, probabilities = predict_batch(app[MODEL_KEY], app[VERSION_KEY], rows)
    data = {"predict": labels, "probability": probabilities}
    tensor = service_pb2.ModelInferResponse.InferOutputTensor
    return service_pb2.ModelInferResponse(
        model_name=app[NAME_KEY],
        model_version=app[VERSION_KEY],
        id=request.id,
        outputs=[tensor(name=n, datatype=OUTPUTS[n], shape=[len(rows)]) for n in wanted],
        raw_output_contents=[np.asarray(data[n], dtype=_ANSWERED[n]).tobytes() for n in wanted],
    )


def parse_rows(request: Any) -> Any:
    """The request's one input as an ``(n, 30)`` float64 array; InferError(400) if not."""
    if len(request.inputs) != 1:
        count = len(request.inputs)
        raise InferError(400, f"inputs must be one input, {INPUT_NAME!r}; got {count}")
    tensor = request.inputs[0]
    if tensor.datatype not in DATATYPES:
        raise InferError(400, f"inputs[0].datatype must be FP32 or FP64, got {tensor.datatype!r}")
    shape = list(tensor.shape)
    if len(shape) != 2 or shape[0] < 0 or shape[1] != N_FEATURES:
        raise InferError(400, f"inputs[0].shape must be [n, {N_FEATURES}], got {shape}")
    values = _values(request, tensor)
    if values.size != shape[0] * N_FEATURES:
        raise InferError(
            400, f"inputs[0] holds {values.size} numbers; shape {shape} needs "
            f"{shape[0] * N_FEATURES}"
        )  # fmt: skip
    if not np.isfinite(values).all():
        index = int(np.flatnonzero(~np.isfinite(values))[0])
        raise InferError(400, f"inputs[0][{index}] must be a finite number, got {values[index]}")
    return values.astype(np.float64).reshape(shape[0], N_FEATURES)


def _values(request: Any, tensor: Any) -> Any:
    """The tensor's numbers, flat: from ``raw_input_contents`` if the request has them."""
    dtype = NUMPY[tensor.datatype]
    if request.raw_input_contents:
        raw = request.raw_input_contents[0]
        if len(raw) % dtype.itemsize:
            raise InferError(
                400, f"raw_input_contents[0] holds {len(raw)} bytes, not a whole number of "
                f"{tensor.datatype} values"
            )  # fmt: skip
        return np.frombuffer(raw, dtype=dtype)
    contents = tensor.contents
    found = contents.fp32_contents if tensor.datatype == "FP32" else contents.fp64_contents
    return np.asarray(found, dtype=dtype)


def parse_outputs(request: Any) -> list[str]:
    """The names of the outputs asked for, in the order asked; every output if none are."""
    names = [output.name for output in request.outputs] or list(OUTPUTS)
    unknown = [name for name in names if name not in OUTPUTS]
    if unknown:
        raise InferError(400, f"outputs must name some of {', '.join(OUTPUTS)}, got {unknown}")
    return names


def new_server(app: web.Application) -> grpc.aio.Server:
    """A grpcio asyncio server with the service of ``app``'s backend, not yet bound."""
    # No SO_REUSEPORT (grpcio sets it by default): a port already taken is an error, not
    # a second server sharing it by halves.
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(app), server)
    return server


def bind(server: grpc.aio.Server, host: str, port: int) -> int:
    """Bind ``server`` to ``host:port`` (0: a free port) and return the port; OSError if
    the address cannot be bound (grpcio says so with a RuntimeError)."""
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        return server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(f"cannot bind gRPC to {address}: {exc}") from exc


@asynccontextmanager
async def serving(app: web.Application, host: str, port: int) -> AsyncIterator[int]:
    """Serve ``app``'s backend over gRPC on ``host:port`` while the block runs; yields the
    port (a free one if ``port`` is 0). Stopped on the way out, calls in flight cancelled
    after a second."""
    server = new_server(app)
    bound = bind(server, host, port)
    await server.start()
    try:
        yield bound
    finally:
        await server.stop(1)


def cleanup_ctx(host: str, port: int) -> Any:
    """For ``app.cleanup_ctx``: gRPC on ``host:port`` for as long as the application runs
    (started before aiohttp binds its own port, so both are up when it says it is ready)."""

    async def grpc_face(app: web.Application) -> AsyncIterator[None]:
        async with serving(app, host, port):
            yield

    return grpc_face

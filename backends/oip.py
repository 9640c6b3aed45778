"""The Open Inference Protocol v2 over REST (KServe v2, Triton, MLServer) for one example
backend, beside its ``POST /predict``:

- ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``: the server;
- ``GET /v2/models/<name>[/versions/<version>]``: the model's metadata;
- ``GET .../ready``: the model is ready (it is trained before the server starts);
- ``POST .../infer``: one input of shape ``[n, 30]``, FP32 or FP64, its data flat or nested
  (tritonclient sends it flat, row-major); two outputs, ``predict`` (INT64, the labels) and
  ``probability`` (FP64, of class 1), so ``/outputs/0/data/0`` is the first row's label.

A model name or version this backend does not serve gets 404 and a malformed request 400,
both as ``{"error": "<message>"}``, the shape tritonclient, MLServer and KServe use.
JSON only: tritonclient's binary tensor extension is refused with a 400 that says to pass
``binary_data=False`` (MLServer refuses it too); a request for binary outputs is answered in
JSON, which tritonclient reads as well.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
from aiohttp import web

from backends.model import N_FEATURES, predict_batch
from backends.state import MODEL_KEY, NAME_KEY, VERSION_KEY, delay, injected_failure

DEFAULT_MODEL_NAME = "cancer"
INPUT_NAME = "input-0"
OUTPUTS = {"predict": "INT64", "probability": "FP64"}  # in the order they are answered
DATATYPES = {"FP32", "FP64"}
# tritonclient sets it when part of the body is raw tensor bytes after the JSON.
BINARY_HEADER = "Inference-Header-Content-Length"


class InferError(Exception):
    """A request this backend cannot answer: the status and the message to send."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def add_routes(app: web.Application) -> None:
    """Serve the protocol's paths on ``app`` (which holds the keys of backends/state.py)."""
    app.router.add_get("/v2", handle_server)
    app.router.add_get("/v2/health/live", handle_live)
    app.router.add_get("/v2/health/ready", handle_ready)
    for model in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        app.router.add_get(model, handle_metadata)
        app.router.add_get(model + "/ready", handle_model_ready)
        app.router.add_post(model + "/infer", handle_infer)


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def handle_server(request: web.Request) -> web.Response:
    return web.json_response(
        {"name": "model-router-example-backend", "version": "1", "extensions": []}
    )


async def handle_live(request: web.Request) -> web.Response:
    return web.json_response({"live": True})


async def handle_ready(request: web.Request) -> web.Response:
    return web.json_response({"ready": True})  # the model is trained before the server starts


def check_model(request: web.Request) -> None:
    """Raise InferError(404) unless the path names the model (and version) served here."""
    check_names(request.app, request.match_info["name"], request.match_info.get("version"))


def check_names(app: web.Application, asked: str, pinned: str | None) -> None:
    """Raise InferError(404) unless ``asked`` (and ``pinned``, if not None) are the model
    name (and version) ``app`` serves; shared by the REST and gRPC faces."""
    name, version = app[NAME_KEY], app[VERSION_KEY]
    if asked != name:
        raise InferError(404, f"model {asked!r} not found: this backend serves {name!r}")
    if pinned is not None and pinned != version:
        raise InferError(
            404, f"model {name!r} has no version {pinned!r}: this backend serves {version!r}"
        )


async def handle_metadata(request: web.Request) -> web.Response:
    try:
        check_model(request)
    except InferError as exc:
        return error(exc.status, exc.message)
    return web.json_response(
        {
            "name": request.app[NAME_KEY],
            "versions": [request.app[VERSION_KEY]],
            "platform": "scikit-learn",
            "inputs": [{"name": INPUT_NAME, "datatype": "FP64", "shape": [-1, N_FEATURES]}],
            "outputs": [
                {"name": name, "datatype": datatype, "shape": [-1]}
                for name, datatype in OUTPUTS.items()
            ],
        }
    )


async def handle_model_ready(request: web.Request) -> web.Response:
    try:
        check_model(request)
    except InferError as exc:
        return error(exc.status, exc.message)
    return web.json_response({"name": request.app[NAME_KEY], "ready": True})


async def handle_infer(request: web.Request) -> web.Response:
    """Classify the rows of the request's one input; see the module's docstring."""
    await delay(request.app)
    try:
        check_model(request)
        if BINARY_HEADER in request.headers:
            raise InferError(
                400,
                "binary tensor data is not supported: send JSON "
                "(tritonclient: set_data_from_numpy(..., binary_data=False))",
            )
        body = await _read_json(request)
        rows = parse_rows(body)
        wanted = parse_outputs(body)
    except InferError as exc:
        return error(exc.status, exc.message)
    failure = injected_failure(request.app)
    if failure is not None:
        return error(500, failure)
    labels, probabilities = predict_batch(request.app[MODEL_KEY], request.app[VERSION_KEY], rows)
    data: dict[str, list[Any]] = {"predict": labels, "probability": probabilities}
    answer: dict[str, Any] = {
        "model_name": request.app[NAME_KEY],
        "model_version": request.app[VERSION_KEY],
    }
    if isinstance(body.get("id"), str):
        answer["id"] = body["id"]
    answer["outputs"] = [
        {"name": name, "datatype": OUTPUTS[name], "shape": [len(rows)], "data": data[name]}
        for name in wanted
    ]
    return web.json_response(answer)


async def _read_json(request: web.Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.read())
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        raise InferError(400, f"the request body must be JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InferError(400, 'the request body must be a JSON object with "inputs"')
    return body


def parse_rows(body: dict[str, Any]) -> Any:
    """The one input of an infer request as an ``(n, 30)`` float64 array.

    Raises InferError(400) naming what was wrong and what is expected.
    """
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InferError(400, f'"inputs" must be a list of one input, {INPUT_NAME!r}')
    tensor = inputs[0]
    datatype = tensor.get("datatype")
    if datatype not in DATATYPES:
        raise InferError(400, f"inputs[0].datatype must be FP32 or FP64, got {datatype!r}")
    shape = tensor.get("shape")
    if not (
        isinstance(shape, list)
        and len(shape) == 2
        and all(type(n) is int and n >= 0 for n in shape)
        and shape[1] == N_FEATURES
    ):
        raise InferError(400, f"inputs[0].shape must be [n, {N_FEATURES}], got {shape!r}")
    values = _flatten(tensor.get("data"))
    if len(values) != shape[0] * N_FEATURES:
        raise InferError(
            400, f"inputs[0].data holds {len(values)} numbers; shape {shape} needs "
            f"{shape[0] * N_FEATURES}"
        )  # fmt: skip
    return np.asarray(values, dtype=np.float64).reshape(shape[0], N_FEATURES)


def _flatten(data: Any) -> list[float]:
    """The numbers of a flat or nested list, in row-major order."""
    if not isinstance(data, list):
        raise InferError(400, "inputs[0].data must be a list of numbers, flat or nested")
    values: list[float] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            values.append(_finite(item, len(values)))
        else:
            stack.pop()
    return values


def _finite(value: Any, index: int) -> float:
    # bool is a subclass of int, but `true` is not a measurement.
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an integer too large for a float
            number = math.inf
        if math.isfinite(number):
            return number
    raise InferError(400, f"inputs[0].data[{index}] must be a finite number, got {value!r}")


def parse_outputs(body: dict[str, Any]) -> list[str]:
    """The names of the outputs asked for, in the order asked; every output if none are."""
    asked = body.get("outputs")
    if asked is None:
        return list(OUTPUTS)
    items = asked if isinstance(asked, list) else [None]
    names = [o.get("name") if isinstance(o, dict) else None for o in items]
    if not names or not all(name in OUTPUTS for name in names):
        raise InferError(
            400, f'"outputs" must name some of {", ".join(OUTPUTS)}, got {json.dumps(asked)}'
        )
    return [str(name) for name in names]

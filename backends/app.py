"""The HTTP face of one example backend: ``POST /predict``, ``GET /health``, and the Open
Inference Protocol v2 (backends/oip.py) beside them.

Prediction runs inline on the event loop: one row costs well under a millisecond for v1 and
v2, which is cheaper than handing it to a thread, and a few milliseconds for v3's forest,
which a thread would not make cheaper (most of that is Python, under the GIL).

A backend can be made faulty on purpose (``Faults``, in backends/state.py): its predictions
come late or fail with a 500, on both faces.
"""

from __future__ import annotations

import json
import math
import random
from typing import Any

from aiohttp import web

from backends import oip
from backends.model import N_FEATURES, Classifier, check_version, predict, train
from backends.state import (
    DRAWS_KEY,
    FAULTS_KEY,
    MODEL_KEY,
    NAME_KEY,
    VERSION_KEY,
    Faults,
    delay,
    injected_failure,
)

__all__ = ["MODEL_KEY", "VERSION_HEADER", "VERSION_KEY", "BadRequest", "Faults", "create_app"]

VERSION_HEADER = "X-Backend-Version"

_EXPECTED = f'{{"features": [{N_FEATURES} numbers]}}'


class BadRequest(ValueError):
    """The request body is not what ``POST /predict`` expects; the message says why."""


def create_app(
    version: str,
    model: Classifier | None = None,
    faults: Faults | None = None,
    name: str = oip.DEFAULT_MODEL_NAME,
) -> web.Application:
    """Build the backend for ``version``, training its model unless one is given.

    Passing a pre-trained ``model`` lets tests train once and start many servers.
    ``faults`` makes it fail or slow on purpose (see the module's docstring). ``name`` is
    the model's name on the Open Inference paths (``/v2/models/<name>/...``).
    """
    check_version(version)
    faults = faults or Faults()
    app = web.Application()
    app[VERSION_KEY] = version
    app[NAME_KEY] = name
    app[MODEL_KEY] = train(version) if model is None else model
    app[FAULTS_KEY] = faults
    app[DRAWS_KEY] = random.Random(faults.seed)
    app.router.add_post("/predict", handle_predict)
    app.router.add_get("/health", handle_health)
    oip.add_routes(app)
    # A signal rather than a middleware, so 404s, 405s and 413s carry the header too.
    app.on_response_prepare.append(_add_version_header)
    return app


async def handle_predict(request: web.Request) -> web.Response:
    """Classify one row: ``{"features": [30 numbers]}`` in, the version's answer out."""
    await delay(request.app)
    try:
        features = parse_features(await _read_json(request))
    except BadRequest as exc:
        return web.json_response(
            {"error": {"code": "bad_request", "message": str(exc)}}, status=400
        )
    failure = injected_failure(request.app)
    if failure is not None:
        return web.json_response(
            {"error": {"code": "injected_fault", "message": failure}}, status=500
        )
    return web.json_response(predict(request.app[MODEL_KEY], request.app[VERSION_KEY], features))


async def handle_health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "version": request.app[VERSION_KEY]})


async def _add_version_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers[VERSION_HEADER] = request.app[VERSION_KEY]


async def _read_json(request: web.Request) -> Any:
    try:
        return await request.json()
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        raise BadRequest(f"request body must be JSON like {_EXPECTED}: {exc}") from exc


def parse_features(body: Any) -> list[float]:
    """Check a decoded ``POST /predict`` body and return its features as floats.

    Raises BadRequest naming what was wrong and what is expected.
    """
    if not isinstance(body, dict):
        raise BadRequest(f"request body must be a JSON object like {_EXPECTED}, got {_kind(body)}")
    if "features" not in body:
        raise BadRequest(f'request body has no "features": send {_EXPECTED}')
    features = body["features"]
    if not isinstance(features, list):
        raise BadRequest(f"features must be a list of {N_FEATURES} numbers, got {_kind(features)}")
    if len(features) != N_FEATURES:
        raise BadRequest(f"features must be a list of {N_FEATURES} numbers, got {len(features)}")
    return [_finite_number(i, value) for i, value in enumerate(features)]


def _finite_number(index: int, value: Any) -> float:
    # bool is a subclass of int, but `true` is not a measurement.
    number = math.nan
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an integer too large for a float
            number = math.inf
    if not math.isfinite(number):
        raise BadRequest(f"features[{index}] must be a finite number, got {_show(value)}")
    return number


def _kind(value: Any) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):  # before the number test: bool is an int
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "null"


def _show(value: Any, limit: int = 40) -> str:
    """``value`` as JSON, cut short so an error message stays one readable line."""
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."

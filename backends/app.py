"""The HTTP face of one example backend: ``POST /predict`` and ``GET /health``.

Prediction runs inline on the event loop: one row costs well under a millisecond for v1 and
v2, which is cheaper than handing it to a thread, and a few milliseconds for v3's forest,
which a thread would not make cheaper (most of that is Python, under the GIL).

A backend can be made faulty on purpose, for rollout demos and tests (``Faults``): each
``/predict`` answer waits ``delay_ms`` longer, and a share ``fail_rate`` of the requests that
would have got a prediction get a 500 instead. The draws come from a generator seeded with
``seed``, so the n-th request fails or not the same way in every run.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from backends.model import N_FEATURES, Classifier, check_version, predict, train

MODEL_KEY: web.AppKey[Classifier] = web.AppKey("model")
VERSION_KEY = web.AppKey("version", str)
FAULTS_KEY: web.AppKey[Faults] = web.AppKey("faults")
DRAWS_KEY = web.AppKey("fault_draws", random.Random)
VERSION_HEADER = "X-Backend-Version"

_EXPECTED = f'{{"features": [{N_FEATURES} numbers]}}'


class BadRequest(ValueError):
    """The request body is not what ``POST /predict`` expects; the message says why."""


@dataclass(frozen=True)
class Faults:
    """Injected faults of ``POST /predict``; the default injects none."""

    fail_rate: float = 0.0  # share of would-be predictions answered with a 500, in [0, 1]
    delay_ms: float = 0.0  # extra wait before every /predict answer, >= 0
    seed: int = 0  # of the draws that decide which requests fail

    def __post_init__(self) -> None:
        if not 0.0 <= self.fail_rate <= 1.0:
            raise ValueError(f"fail_rate must be within [0, 1], got {self.fail_rate!r}")
        if not 0.0 <= self.delay_ms < math.inf:
            raise ValueError(f"delay_ms must be a finite number >= 0, got {self.delay_ms!r}")

    def __bool__(self) -> bool:
        return self.fail_rate > 0 or self.delay_ms > 0

    def describe(self) -> str:
        """``"fails 5% of predictions with a 500, answers 200 ms late"``, or ``"no faults"``."""
        parts = []
        if self.fail_rate > 0:
            parts.append(f"fails {100 * self.fail_rate:g}% of predictions with a 500")
        if self.delay_ms > 0:
            parts.append(f"answers {self.delay_ms:g} ms late")
        return ", ".join(parts) or "no faults"


def create_app(
    version: str, model: Classifier | None = None, faults: Faults | None = None
) -> web.Application:
    """Build the backend for ``version``, training its model unless one is given.

    Passing a pre-trained ``model`` lets tests train once and start many servers.
    ``faults`` makes it fail or slow on purpose (see the module's docstring).
    """
    check_version(version)
    faults = faults or Faults()
    app = web.Application()
    app[VERSION_KEY] = version
    app[MODEL_KEY] = train(version) if model is None else model
    app[FAULTS_KEY] = faults
    app[DRAWS_KEY] = random.Random(faults.seed)
    app.router.add_post("/predict", handle_predict)
    app.router.add_get("/health", handle_health)
    # A signal rather than a middleware, so 404s, 405s and 413s carry the header too.
    app.on_response_prepare.append(_add_version_header)
    return app


async def handle_predict(request: web.Request) -> web.Response:
    """Classify one row: ``{"features": [30 numbers]}`` in, the version's answer out."""
    version = request.app[VERSION_KEY]
    faults = request.app[FAULTS_KEY]
    if faults.delay_ms > 0:
        await asyncio.sleep(faults.delay_ms / 1000)
    try:
        features = parse_features(await _read_json(request))
    except BadRequest as exc:
        return web.json_response(
            {"error": {"code": "bad_request", "message": str(exc)}}, status=400
        )
    # One draw per valid request, whatever the settings: which requests fail depends only
    # on the seed and their order of arrival.
    if request.app[DRAWS_KEY].random() < faults.fail_rate:
        return web.json_response(
            {"error": {"code": "injected_fault", "message": f"{version}: {faults.describe()}"}},
            status=500,
        )
    return web.json_response(predict(request.app[MODEL_KEY], version, features))


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

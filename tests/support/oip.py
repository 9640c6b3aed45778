"""A test backend that speaks the Open Inference Protocol v2 (REST) and TF Serving's REST
for one model name, and says in each answer what it received: a stand-in for a model
server whose version is `label` (its prediction) and whose model is named `served`."""

from __future__ import annotations

from typing import Any

from aiohttp import web

SERVED = web.AppKey("served", str)
LABEL = web.AppKey("label", int)
TARGETS = web.AppKey("targets", list[str])


def _unknown(name: str) -> web.Response:
    return web.json_response({"error": f"Model {name} not found"}, status=404)


async def infer(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name != request.app[SERVED]:
        return _unknown(name)
    body: dict[str, Any] = await request.json()
    rows = body["inputs"][0]["shape"][0]
    label = request.app[LABEL]
    answer = {
        "model_name": name,
        "model_version": request.match_info.get("version"),
        "id": body.get("id", ""),
        "parameters": {"target": request.raw_path, "user": request.headers.get("X-User-ID")},
        "outputs": [
            {"name": "predict", "datatype": "INT64", "shape": [rows], "data": [label] * rows}
        ],
    }
    return web.json_response(answer)


async def metadata(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name != request.app[SERVED]:
        return _unknown(name)
    return web.json_response(
        {
            "name": name,
            "versions": [str(request.app[LABEL])],
            "platform": "test",
            "inputs": [{"name": "x", "datatype": "FP64", "shape": [-1, 2]}],
            "outputs": [{"name": "predict", "datatype": "INT64", "shape": [-1]}],
        }
    )


async def ready(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    return web.Response() if name == request.app[SERVED] else _unknown(name)


async def tf_predict(request: web.Request) -> web.Response:
    """TF Serving's `:predict` (and any verb): the target it got, and the label."""
    return web.json_response(
        {"predictions": [request.app[LABEL]], "target": request.raw_path, "method": request.method}
    )


@web.middleware
async def remember(request: web.Request, handler: Any) -> web.StreamResponse:
    request.app[TARGETS].append(request.raw_path)
    response: web.StreamResponse = await handler(request)
    return response


def create_oip_app(served: str, label: int) -> web.Application:
    app = web.Application(middlewares=[remember])
    app[SERVED], app[LABEL], app[TARGETS] = served, label, []
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        app.router.add_post(prefix + "/infer", infer)
        app.router.add_get(prefix, metadata)
        app.router.add_get(prefix + "/ready", ready)
    app.router.add_route("*", "/v1/models/{rest:.*}", tf_predict)
    return app

"""The admin listener: probes, the table in force, reload, metrics (contract section 6).

It runs on its own port (loopback by default), so the public port never serves these paths.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from router.config.holder import ReloadResult, TableHolder
from router.config.model import Table
from router.errors import RouterError, error_body
from router.http.auth import bears
from router.http.clock import iso_utc
from router.http.request import new_request_id
from router.observe.health import HealthBook

TABLES = web.AppKey("tables", TableHolder)
METRICS: web.AppKey[Callable[[], AsyncIterator[bytes]]] = web.AppKey("metrics")
# `model/version` of each version of a table that is down, as this process knows it.
Down = Callable[[Table], Awaitable[list[str]]]
DOWN: web.AppKey[Down] = web.AppKey("down")
TOKEN = web.AppKey("token", str)  # empty: POST endpoints are open
NOT_READY: web.AppKey[Callable[[], str | None]] = web.AppKey("not_ready")
RELOAD: web.AppKey[Callable[[], Awaitable[ReloadResult]]] = web.AppKey("reload")

_log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_admin_app(
    tables: TableHolder,
    metrics: Callable[[], AsyncIterator[bytes]],
    down: Down,
    not_ready: Callable[[], str | None],
    reload_all: Callable[[], Awaitable[ReloadResult]] | None = None,
) -> web.Application:
    """`metrics` writes the /metrics body in chunks; `down` names the versions down (a
    supervisor's come from its workers); `not_ready` gives the reason the process is not
    ready, or None; `reload_all` defaults to reloading `tables` (a supervisor passes one
    that reaches its workers too)."""
    app = web.Application(middlewares=[_json_errors])
    app[TABLES], app[METRICS], app[DOWN] = tables, metrics, down
    app[NOT_READY] = not_ready
    app[RELOAD] = reload_all or (lambda: tables.reload("admin"))
    env = tables.current.server.admin_token_env
    app[TOKEN] = os.environ.get(env, "") if env else ""
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/admin/config", config)
    app.router.add_post("/admin/reload", reload)
    app.router.add_get("/metrics", metrics_text)
    return app


def down_in(book: HealthBook) -> Down:
    """The versions of a table that this process's health book has down."""

    async def down(table: Table) -> list[str]:
        return [
            f"{model.name}/{version.name}"
            for model in table.models.values()
            for version in model.versions.values()
            if book.is_down((model.name, version.name, version.url))
        ]

    return down


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _error(status: int, code: str, message: str, **more: object) -> web.Response:
    body = error_body(code, message, new_request_id(), **more)
    return web.Response(body=body, status=status, content_type="application/json")


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Admin errors in the contract's JSON shape too; POSTs checked for the bearer token."""
    try:
        if request.method == "POST":
            _authorize(request)
        return await handler(request)
    except RouterError as error:
        return _error(error.status, error.code, error.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = "not_found" if exc.status == 404 else "method_not_allowed"
        return _error(exc.status, code, f"{request.method} {request.path}: {exc.reason}")
    except Exception:  # a bug: its traceback on stderr, the contract's JSON to the caller
        _log.exception("admin %s %s failed", request.method, request.path)
        message = f"{request.method} {request.path} failed; the traceback is on stderr"
        return _error(500, "internal_error", message)


def _authorize(request: web.Request) -> None:
    token = request.app[TOKEN]
    if not token:
        return
    if not bears(request.headers.get("Authorization"), token):
        raise RouterError("unauthorized", "this endpoint needs 'Authorization: Bearer <token>'")


async def healthz(_: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready once a table is loaded; not ready while draining, so load balancers move on."""
    reason = request.app[NOT_READY]()
    if reason is not None:
        return _json({"status": reason}, 503)
    return _json({"status": "ready", "config": request.app[TABLES].current.digest})


async def config(request: web.Request) -> web.Response:
    holder = request.app[TABLES]
    down = await request.app[DOWN](holder.current)
    return _json(
        {
            "config": holder.current.digest,
            "source": str(holder.path) if holder.path else None,
            "loaded_at": iso_utc(holder.loaded_at),
            "table": orjson.Fragment(holder.current.written),
            "last_refusal": holder.last_refusal,
            # `table` is the file as written; these of its settings wait for a restart.
            "restart_needed": holder.restart_needed,
            "down": down,
        }
    )


async def reload(request: web.Request) -> web.Response:
    result = await request.app[RELOAD]()
    if result.result == "rejected":
        message = f"the routing table was refused; {result.digest} stays in force"
        return _error(422, "config_rejected", message, problems=list(result.problems))
    return _json({"result": result.result, "config": result.digest, "models": result.moves})


async def metrics_text(request: web.Request) -> web.StreamResponse:
    """Sent as it is written: on a big table the text is tens of megabytes."""
    response = web.StreamResponse(headers={"Content-Type": CONTENT_TYPE_LATEST})
    await response.prepare(request)
    async for chunk in request.app[METRICS]():
        await response.write(chunk)
    await response.write_eof()
    return response

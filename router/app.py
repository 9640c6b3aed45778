"""Putting the router together: the aiohttp apps, their lifecycles, signals and shutdown."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any, cast

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from router.config import Table
from router.events import LogSink, Pseudonymizer, make_logger
from router.proxy import Proxy
from router.table import TableHolder

PROXY = web.AppKey("proxy", Proxy)
TABLES = web.AppKey("tables", TableHolder)


def client_session() -> aiohttp.ClientSession:
    """The one pooled, keep-alive client session of a process.

    A proxy must pass bodies and headers through untouched, so: no decompression, no
    cookie jar (one user's cookies must never reach another's request), no default
    User-Agent, Accept-Encoding or Content-Type, no proxy settings from the environment.
    """
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=60, keepalive_timeout=30),
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
        trust_env=False,
        read_bufsize=2**18,
        timeout=aiohttp.ClientTimeout(total=None),
    )


async def _session_ctx(app: web.Application) -> AsyncIterator[None]:
    async with client_session() as session:
        app[PROXY].session = session
        yield


def create_app(proxy: Proxy) -> web.Application:
    """The public app: every path goes to the proxy, which answers unknown ones itself."""
    app = web.Application()
    app[PROXY] = proxy
    app.cleanup_ctx.append(_session_ctx)
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    return app


def create_admin_app(tables: TableHolder) -> web.Application:
    """The admin listener: health for probes; kept off the public port."""
    app = web.Application()
    app[TABLES] = tables

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        table = request.app[TABLES].current
        return web.json_response({"status": "ready", "config": table.digest})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


class UnhandledRequestLog(AbstractAccessLogger):
    """aiohttp's access-log hook, used only for requests it refused before the handler.

    aiohttp answers junk bytes and oversized headers with 400 itself; the contract still
    wants one record per request, so this writes it. `logger` is the Proxy (see serve).
    """

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        cast(Proxy, self.logger).log_unhandled(request, response)


def models_summary(table: Table) -> dict[str, Any]:
    """The `models` field of `config_loaded`: each model's split in force."""
    return {name: {"split": model.split.as_dict()} for name, model in table.models.items()}


class Router:
    """One process's router: its log writer, table holder, proxy and listeners.

    `serve` runs one until a signal; tests start one in-process the same way.
    """

    def __init__(self, table: Table, source: str | None = None) -> None:
        self.sink = LogSink(table.log.path)
        self.log = make_logger(self.sink)
        self.tables = TableHolder(table, source)
        self.proxy = Proxy(self.tables, self.log, Pseudonymizer.from_env(table.log.user_ids))
        self.runner = web.AppRunner(
            create_app(self.proxy),
            handle_signals=False,
            access_log_class=UnhandledRequestLog,
            access_log=cast(Any, self.proxy),
            shutdown_timeout=table.server.drain_s,
            auto_decompress=False,  # bodies pass through byte for byte
        )
        self.admin = web.AppRunner(
            create_admin_app(self.tables), handle_signals=False, access_log=None
        )
        self.log.info(
            "config_loaded", config=table.digest, source=source, models=models_summary(table)
        )

    @property
    def url(self) -> str:
        return _url(self.runner)

    @property
    def admin_url(self) -> str:
        return _url(self.admin)

    async def start(self) -> None:
        server = self.tables.current.server
        await self.runner.setup()
        await self.admin.setup()
        await web.TCPSite(self.runner, server.listen.host, server.listen.port, backlog=1024).start()
        await web.TCPSite(self.admin, server.admin_listen.host, server.admin_listen.port).start()

    async def stop(self) -> None:
        """Stop accepting, let requests in flight finish for up to drain_s, flush the log."""
        try:
            await self.admin.cleanup()
            await self.runner.cleanup()
        finally:
            self.sink.close()  # every record queued so far is on disk after this


async def serve(table: Table, source: str) -> int:
    """Run until SIGTERM or SIGINT; then drain, flush the log and return 0."""
    router = Router(table, source)
    try:
        await router.start()
        print(
            f"model-router: serving on {router.url} (admin {router.admin_url}), "
            f"config {table.digest}, log {table.log.path}",
            file=sys.stderr,
            flush=True,
        )
        await _until_stopped(router.sink)
        print("model-router: stopping; letting requests in flight finish", file=sys.stderr)
    finally:
        await router.stop()
    return 0


async def _until_stopped(sink: LogSink) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, sink.reopen)
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            loop.remove_signal_handler(signum)


def _url(runner: web.AppRunner) -> str:
    host, port = runner.addresses[0][:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"

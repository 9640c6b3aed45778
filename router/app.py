"""Putting the router together: the public server, the admin app, lifecycles, signals and
shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from router.admin import create_admin_app, down_in
from router.config.holder import TableHolder, keep_out_of_gc, watching
from router.config.model import Address, Table, Tracing
from router.config.tracing import EXTRA as TRACING_EXTRA
from router.errors import error_body
from router.http.client import Client, client_session
from router.http.hooks import Hooks
from router.http.limits import ServerLimits, raise_open_files
from router.http.server import Server
from router.http.text import host_port
from router.observe import health
from router.observe.health import HealthBook
from router.observe.log import LogSink, Pseudonymizer, make_logger
from router.observe.metrics import Metrics
from router.observe.removed import Removals, Removed
from router.observe.spans import Tracer
from router.proxy.handler import Proxy


class Router:
    """One process's router: its log writer, table holder, proxy and listeners.

    `serve` runs one until a signal; tests start one in-process the same way.
    """

    def __init__(
        self,
        table: Table,
        source: str | None = None,
        overrides: Callable[[Table], Table] = lambda table: table,
        *,
        admin: bool = True,
        reuse_port: bool = False,
        limits: ServerLimits | None = None,
    ) -> None:
        """`admin=False, reuse_port=True` make a worker: the public port only, shared.
        `limits` are the public port's (nginx's defaults if not given)."""
        self.reuse_port = reuse_port
        self.limits = limits
        self.metrics = Metrics()
        try:
            self.sink = LogSink(
                table.log.path, table.log.buffer_bytes, self.metrics.log_records_dropped
            )
        except OSError as exc:
            raise ServeError(f"cannot open the log {table.log.path}: {exc.strerror}") from exc
        self.log = make_logger(self.sink)
        self.tables = TableHolder(table, source, self.log, self.metrics.count_reload, overrides)
        book = HealthBook(lambda key, up: self.metrics.set_up(key[0], key[1], up))
        self.tables.on_swap.append(lambda t, changed: self.metrics.track(t, book.is_down, changed))
        removals = Removals(table)  # after track: a version moved to a new url stays shown
        self.tables.on_swap.append(lambda t, changed: self._forget(removals.after(t, changed)))
        self.metrics.track(table, book.is_down)
        pseudonymize = Pseudonymizer.from_env(table.log.user_ids)
        tracer = start_tracer(table.server.tracing, self.metrics)
        self.proxy = Proxy(
            self.tables, self.log, pseudonymize, self.metrics, book, self.sink.msg, tracer
        )
        self.draining = [False]
        self.server: Server | None = None
        self.grpc: Any = None  # grpc.aio.Server when server.grpc_listen is set
        self.grpc_port = 0
        # Set up in order in start(), torn down in reverse in stop(): the upstream client
        # (one pooled aiohttp session and the lean pool), the active health checks that use
        # it, the table file watcher.
        self._lifecycles = contextlib.AsyncExitStack()
        self.admin: web.AppRunner | None = None
        if admin:
            app = create_admin_app(
                self.tables,
                self.metrics.exposition,
                down_in(book),
                lambda: "draining" if self.draining[0] else None,
            )
            self.admin = web.AppRunner(app, handle_signals=False, access_log=None)

    def _forget(self, removed: Removed) -> None:
        """A reload removed versions: they leave the health and admission books and
        /metrics (contract section 13)."""
        for key in removed.keys:
            self.proxy.health.forget(key)
            self.proxy.admission.forget(key)
        for model, version in removed.versions:
            self.metrics.forget(model, version)

    @property
    def url(self) -> str:
        assert self.server is not None, "start() first"
        return _url(self.server.addresses)

    @property
    def admin_url(self) -> str:
        return _url(self.admin.addresses) if self.admin is not None else "-"

    async def start(self) -> None:
        server = self.tables.current.server
        stack, proxy = self._lifecycles, self.proxy
        session = await stack.enter_async_context(client_session())
        proxy.client = Client(session)
        stack.push_async_callback(proxy.client.close)
        tables = self.tables
        await stack.enter_async_context(
            health.active_checks(lambda: tables.current, proxy.health, proxy.client)
        )
        await stack.enter_async_context(watching(tables))
        # The public port: the router's own HTTP/1.1 server (router/http/).
        hooks = Hooks(proxy.handle, proxy.refused, proxy.dropped, error_body)
        tables = self.tables
        public = self.server = Server(
            hooks, self.limits, lambda: tables.current.server.max_connections
        )
        address = server.listen
        await listen_on(
            lambda: public.listen(address.host, address.port, reuse_port=self.reuse_port),
            "public",
            address,
        )
        if server.grpc_listen is not None:
            await self._serve_grpc(server.grpc_listen, server.max_body_bytes)
        if self.admin is not None:
            await self.admin.setup()
            site = web.TCPSite(self.admin, server.admin_listen.host, server.admin_listen.port)
            await listen_on(site.start, "admin", server.admin_listen)
        self.tables.announce()  # once listening: a log never names a table that never served
        self.sink.on_new_file = self._announce_from_thread(asyncio.get_running_loop())
        keep_out_of_gc()  # the table read at start, and the process's modules

    async def _serve_grpc(self, address: Address, max_message: int) -> None:
        """The gRPC listener (router/rpc/), on the proxy's books, with one channel per
        version address for the way up; grpcio is the `grpc` extra."""
        from router.protocols.grpc import unary_method
        from router.protocols.oip import router_version
        from router.proxy.grpc_call import GrpcProxy
        from router.rpc.channels import Channels
        from router.rpc.server import serve

        channels = Channels()
        self._lifecycles.push_async_callback(channels.close)
        handler = GrpcProxy(self.proxy, channels, router_version())

        async def start() -> None:
            self.grpc, self.grpc_port = await serve(
                address.host,
                address.port,
                handler.handle,
                unary=unary_method,
                reuse_port=self.reuse_port,
                max_message=max_message,
            )

        await listen_on(start, "gRPC", address)

    def _announce_from_thread(self, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
        """The log writer re-created a removed file: it too starts by naming the table."""

        def announce() -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nothing to say
                loop.call_soon_threadsafe(self.tables.announce, "log re-created")

        return announce

    def reopen_log(self) -> None:
        """SIGUSR1: a new log file, which starts by saying which table is in force."""
        self.sink.reopen()
        self.tables.announce("log reopened")

    async def stop(self) -> None:
        """Stop accepting, let requests in flight finish for up to drain_s, flush the log."""
        self.draining[0] = True
        self.proxy.serving = False  # /v2/health/ready says so from here
        drain_s = self.tables.current.server.drain_s
        deadline = asyncio.get_running_loop().time() + drain_s
        # gRPC calls in flight get drain_s too, beside the HTTP requests; then they are
        # cancelled, each logging its record.
        grpc_stopped = None
        if self.grpc is not None:  # from now: it takes no new call while HTTP drains
            grpc_stopped = asyncio.create_task(self.grpc.stop(drain_s))
        try:
            if self.server is not None:
                # New connections are refused from here; idle keep-alive ones close.
                self.server.stop_accepting()
                if not await self.server.drained(drain_s):
                    self.proxy.cut_off()  # what comes up from here is answered 503
                    self.server.cut_off()  # what runs is cancelled, and logged as cut off
                    await self.server.drained(1.0)
                self.server.close()
                await asyncio.sleep(0)  # the connections' ends run, and log what they held
            if grpc_stopped is not None:
                await grpc_stopped
            # Shadow copies get what is left of drain_s, then are cancelled (and logged).
            await self.proxy.shadows.drain(deadline - asyncio.get_running_loop().time())
            await self._lifecycles.aclose()
            if self.admin is not None:
                await self.admin.cleanup()
        finally:
            if self.proxy.tracer is not None:  # the spans queued so far, for up to CLOSE_S
                await asyncio.to_thread(self.proxy.tracer.close)
            self.sink.close()  # every record queued so far is on disk after this


class ServeError(Exception):
    """The router cannot start: a port is taken, the log cannot be opened."""


def start_tracer(settings: Tracing | None, metrics: Metrics) -> Tracer | None:
    """Span export (contract section 15), with OpenTelemetry's SDK: the `otel` extra; None
    without a `tracing` section."""
    if settings is None:
        return None
    try:
        from router.observe.otlp import exporter
    except ImportError as exc:
        message = f"server.tracing needs the extra: {TRACING_EXTRA} ({exc.name} is missing)"
        raise ServeError(message) from None
    export = exporter(settings.otlp_endpoint)
    return Tracer(settings, export, metrics.spans_lost, metrics.spans_sent)


def grpc_said(address: Address | None, port: int) -> str:
    """`gRPC HOST:PORT, ` for the start-up line, when the router serves gRPC."""
    return f"gRPC {host_port(address.host, port or address.port)}, " if address else ""


async def listen_on(start: Callable[[], Awaitable[None]], what: str, address: Address) -> None:
    try:
        await start()
    except OSError as exc:
        flag = {"public": "--listen", "admin": "--admin-listen"}.get(what, "server.grpc_listen")
        raise ServeError(
            f"cannot listen on {address} ({what}): {exc.strerror or exc}; "
            f"free it or choose another with {flag}"
        ) from exc


class _QuietBadRequests(logging.Filter):
    """Drop aiohttp's traceback for a malformed request on the admin port: a client's
    fault, answered with 400, and a flood on stderr under a scanner."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], HttpProcessingError))


def configure_logging() -> None:
    logging.basicConfig(level=logging.WARNING, format="model-router: %(levelname)s %(message)s")
    logging.getLogger("aiohttp.server").addFilter(_QuietBadRequests())


async def serve(table: Table, source: str, overrides: Callable[[Table], Table]) -> int:
    """Run until SIGTERM or SIGINT; then drain, flush the log and return 0."""
    configure_logging()
    router = Router(table, source, overrides)
    open_files = raise_open_files()
    try:
        await router.start()
        print(
            f"model-router: serving on {router.url} (admin {router.admin_url}), "
            f"{grpc_said(router.tables.current.server.grpc_listen, router.grpc_port)}"
            f"config {table.digest}, log {table.log.path}, open files {open_files}",
            file=sys.stderr,
            flush=True,
        )
        await until_stopped(lambda: router.tables.reload("SIGHUP"), router.reopen_log)
        print("model-router: stopping; letting requests in flight finish", file=sys.stderr)
    finally:
        await router.stop()
    return 0


async def until_stopped(
    on_hup: Callable[[], Awaitable[object]], on_usr1: Callable[[], None]
) -> None:
    """Wait for SIGTERM or SIGINT; meanwhile SIGHUP reloads and SIGUSR1 reopens the log."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reloads: set[asyncio.Task[Any]] = set()

    async def hup() -> None:
        try:
            await on_hup()
        except Exception:  # said now, not kept for a gather at exit that would discard it
            logging.getLogger(__name__).exception("the reload on SIGHUP failed")

    def reload() -> None:
        task = loop.create_task(hup())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    handlers: dict[int, Callable[[], None]] = {
        signal.SIGTERM: stop.set,
        signal.SIGINT: stop.set,
        signal.SIGHUP: reload,
        signal.SIGUSR1: on_usr1,
    }
    for signum, handler in handlers.items():
        loop.add_signal_handler(signum, handler)
    try:
        await stop.wait()
    finally:
        for signum in handlers:
            loop.remove_signal_handler(signum)
        await asyncio.gather(*reloads, return_exceptions=True)


def run_loop(main: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop where it is installed: a faster event loop for the same code."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def _url(addresses: list[Any]) -> str:
    host, port = addresses[0][:2]
    return f"http://{host_port(host, port)}"

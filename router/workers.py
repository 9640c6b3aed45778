"""`serve --workers N`: N worker processes sharing the public port, and a supervisor.

Each worker is a whole router (its own event loop, client pool, table holder, file watcher
and log writer) bound to the same port with SO_REUSEPORT, so the kernel spreads connections
over them. The supervisor (this process) holds no public socket; it serves the admin port,
forwards signals (SIGHUP reloads, SIGUSR1 reopens logs, SIGTERM and SIGINT drain every
worker), restarts a worker that dies (with a growing pause when it keeps dying, and on the
table in force, never on a file it refused), and aggregates metrics with prometheus-client's
multiprocess mode. Log lines of all workers stay whole: each appends whole lines with one
`write` per batch to the same O_APPEND file.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import os
import pickle
import queue
import shutil
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest, multiprocess

from router.admin import create_admin_app
from router.app import (
    Router,
    ServeError,
    configure_logging,
    grpc_said,
    listen_on,
    run_loop,
    until_stopped,
)
from router.config.apart import load_apart_now
from router.config.holder import ReloadResult, TableHolder
from router.config.model import Address, Overrides, Table
from router.http.limits import raise_open_files
from router.http.text import host_port
from router.observe.pooled import InForce, versions_down

START_TIMEOUT_S = 60.0
WATCH_S = 0.1  # how often the supervisor looks for a worker that died
_CTX = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited loop or threads


def worker_main(config: str, overrides: Overrides, ready: Any, table: bytes | None = None) -> None:
    """A worker's process: a router on the shared port until SIGTERM or SIGINT.

    `table` is the supervisor's table in force, pickled: a worker started in place of one
    that died serves it rather than the file, which may hold an edit the supervisor refused
    (issue 21: the replacement died on it, and was started again every 0.5 s for ever). The
    file's state is taken as read, so the worker's watcher leaves a refused file alone.
    """

    async def main() -> int:
        configure_logging()
        start = pickle.loads(table) if table is not None else load_apart_now(Path(config))
        router = Router(overrides(start), config, overrides, admin=False, reuse_port=True)
        orphan_watch = asyncio.create_task(_stop_when_orphaned(os.getppid()))
        try:
            await router.start()
            ready.put(os.getpid())
            await until_stopped(lambda: router.tables.reload("SIGHUP"), router.reopen_log)
        finally:
            orphan_watch.cancel()
            await router.stop()
        return 0

    try:
        sys.exit(run_loop(main()))
    except ServeError as exc:
        print(f"model-router: worker {os.getpid()}: {exc}", file=sys.stderr)
        sys.exit(1)


async def _stop_when_orphaned(parent: int) -> None:
    """A worker whose supervisor died (SIGKILL, OOM) drains and exits instead of lingering."""
    while os.getppid() == parent:  # noqa: ASYNC110 (polls the OS: no event to wait on)
        await asyncio.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)


@dataclasses.dataclass(slots=True)
class Backoff:
    """The pause before a dead worker's replacement starts, as systemd's `RestartSec` with
    steps or Kubernetes' CrashLoopBackOff: `first_s`, doubled each time the replacement
    dies young, up to `max_s`; a worker that lived `steady_s` was well, and the next
    pause starts from `first_s` again. Pure: the caller says how long the worker lived."""

    first_s: float = 0.5
    max_s: float = 30.0
    steady_s: float = 10.0
    next_s: float = 0.5

    def after(self, lived_s: float) -> float:
        """The pause before replacing a worker that died after `lived_s` seconds."""
        if lived_s >= self.steady_s:
            self.next_s = self.first_s
        pause = self.next_s
        self.next_s = min(pause * 2, self.max_s)
        return pause


@dataclasses.dataclass(slots=True)
class _Slot:
    """One of the N workers: its process, when it started, and its restart pauses."""

    proc: BaseProcess
    started: float
    backoff: Backoff = dataclasses.field(default_factory=Backoff)
    due: float | None = None  # monotonic time its replacement starts, once it died


class Supervisor:
    def __init__(self, table: Table, source: str, overrides: Overrides, workers: int) -> None:
        self.source = source
        self.overrides = overrides
        self.count = workers
        self.slots: list[_Slot] = []
        self._pickled: tuple[str, bytes] = ("", b"")  # the table in force: digest, pickle
        self.ready: Any = _CTX.Queue()
        self.stopping = False
        quiet = structlog.wrap_logger(
            None, wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL)
        )
        # The supervisor's own view of the table: for /admin/config and to answer a reload
        # with its result. The workers log the events; this one stays quiet.
        self.tables = TableHolder(table, source, quiet, None, overrides)
        registry = CollectorRegistry()
        # The workers' values; each version's series only for the versions in force.
        registry.register(InForce(lambda: self.tables.current))

        async def metrics() -> AsyncIterator[bytes]:
            # Summing the workers' files is seconds of Python on a table of thousands of
            # versions: in a thread, so that signals and reloads are not held up meanwhile.
            yield await asyncio.to_thread(generate_latest, registry)

        async def down(table: Table) -> list[str]:
            return await asyncio.to_thread(versions_down, table)  # the workers' view

        app = create_admin_app(self.tables, metrics, down, self._not_ready, self.reload)
        self.admin = web.AppRunner(app, handle_signals=False, access_log=None)
        self._placeholders: list[socket.socket] = []
        self.listen = self._reserve(table.server.listen, "public", "--listen")
        grpc = table.server.grpc_listen
        self.grpc_listen = self._reserve(grpc, "gRPC", "server.grpc_listen") if grpc else None
        # Workers bind the ports resolved here (port 0 becomes a real one), on every reload.
        self.worker_overrides = dataclasses.replace(
            overrides, listen=self.listen, grpc_listen=self.grpc_listen
        )

    def _reserve(self, address: Address, what: str, flag: str) -> Address:
        """Resolve port 0 to a real port the workers can all bind with SO_REUSEPORT.

        The supervisor binds without listening (a socket that does not listen gets no
        connections) and keeps it until the workers are up, so nobody else takes the port.
        """
        family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
        placeholder = socket.socket(family, socket.SOCK_STREAM)
        placeholder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        placeholder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            placeholder.bind((address.host, address.port))
        except OSError as exc:
            placeholder.close()
            for held in self._placeholders:
                held.close()
            raise ServeError(
                f"cannot listen on {address} ({what}): {exc.strerror}; "
                f"free it or choose another with {flag}"
            ) from exc
        self._placeholders.append(placeholder)
        return Address(address.host, placeholder.getsockname()[1])

    @property
    def procs(self) -> list[BaseProcess]:
        return [slot.proc for slot in self.slots]

    def _spawn(self) -> BaseProcess:
        """A worker on the table in force here (see worker_main)."""
        proc = _CTX.Process(
            target=worker_main,
            args=(self.source, self.worker_overrides, self.ready, self._pickled_table()),
            name="model-router-worker",
        )
        proc.start()
        return proc

    def _pickled_table(self) -> bytes:
        """The table in force, pickled once per table, not per worker: on 10,000 models a
        pickling holds this loop 0.4 s (5.7 MiB)."""
        table = self.tables.current
        if self._pickled[0] != table.digest:
            self._pickled = (table.digest, pickle.dumps(table, 5))
        return self._pickled[1]

    def _not_ready(self) -> str | None:
        if self.stopping:
            return "draining"
        dead = sum(not p.is_alive() for p in self.procs)
        return f"{dead} of {self.count} workers down" if dead else None

    async def reload_on_signal(self) -> None:
        await self.tables.reload("SIGHUP")
        self.signal_all(signal.SIGHUP)

    async def reload(self) -> ReloadResult:
        """Validate here (to answer with the result), then have every worker reload."""
        result = await self.tables.reload("admin")
        self.signal_all(signal.SIGHUP)
        return result

    def signal_all(self, signum: int) -> None:
        for proc in self.procs:
            if proc.pid is not None and proc.is_alive():
                os.kill(proc.pid, signum)

    async def start(self) -> None:
        self.slots = [_Slot(self._spawn(), time.monotonic()) for _ in range(self.count)]
        deadline = time.monotonic() + START_TIMEOUT_S
        started = 0
        while started < self.count:
            try:
                await asyncio.to_thread(self.ready.get, True, 0.5)
                started += 1
            except queue.Empty:
                if dead := [p for p in self.procs if not p.is_alive()]:
                    raise ServeError(
                        f"a worker exited with code {dead[0].exitcode} before serving"
                    ) from None
                if time.monotonic() > deadline:
                    raise ServeError(f"workers did not start in {START_TIMEOUT_S:g} s") from None
        for placeholder in self._placeholders:
            placeholder.close()
        await self.admin.setup()
        admin = self.tables.current.server.admin_listen
        await listen_on(web.TCPSite(self.admin, admin.host, admin.port).start, "admin", admin)

    async def watch_workers(self) -> None:
        """Replace a worker that exits on its own, as nginx's master does, after its slot's
        pause (Backoff): a worker that keeps dying is not restarted in a tight loop."""
        while not self.stopping:
            await asyncio.sleep(WATCH_S)
            self._forget_ready()
            now = time.monotonic()
            for slot in self.slots:
                if self.stopping:
                    return
                if slot.due is None and not slot.proc.is_alive():
                    self._died(slot, now)
                elif slot.due is not None and now >= slot.due:
                    slot.proc, slot.started, slot.due = self._spawn(), now, None

    def _died(self, slot: _Slot, now: float) -> None:
        lived = now - slot.started
        pause = slot.backoff.after(lived)
        slot.due = now + pause
        proc = slot.proc
        print(
            f"model-router: worker {proc.pid} exited with {proc.exitcode} after {lived:.1f} s; "
            f"starting another in {pause:g} s",
            file=sys.stderr,
        )
        if proc.pid is not None:
            multiprocess.mark_process_dead(proc.pid)  # type: ignore[no-untyped-call]  # untyped upstream

    def _forget_ready(self) -> None:
        """Empty the queue a replacement says it is ready on: nobody waits for it, and a
        full pipe would hold a worker's exit (its queue's feeder thread is joined then)."""
        with contextlib.suppress(queue.Empty):
            while True:
                self.ready.get_nowait()

    async def stop(self) -> None:
        self.stopping = True
        self.signal_all(signal.SIGTERM)
        deadline = self.tables.current.server.drain_s + 10
        for proc in self.procs:
            await asyncio.to_thread(proc.join, deadline)
            if proc.is_alive():
                proc.kill()
                await asyncio.to_thread(proc.join)
        await self.admin.cleanup()

    @property
    def url(self) -> str:
        return f"http://{self.listen}"

    @property
    def admin_url(self) -> str:
        host, port = self.admin.addresses[0][:2]
        return f"http://{host_port(host, port)}"


async def supervise(
    table: Table, source: str, overrides: Overrides, workers: int, metrics_dir: str | None
) -> int:
    """Run `workers` workers until SIGTERM or SIGINT. `metrics_dir` is the directory this
    run made for the workers' metrics (removed at the end); None when the operator chose
    one with PROMETHEUS_MULTIPROC_DIR, which is never removed."""
    configure_logging()
    supervisor = Supervisor(table, source, overrides, workers)
    open_files = raise_open_files()  # before the workers start: they inherit it
    watchers: list[asyncio.Task[None]] = []
    try:
        await supervisor.start()
        # Restart dead workers; and follow the table file, as the workers do, so that the
        # admin view and a reload's answer describe the table in force.
        watchers = [
            asyncio.create_task(_kept_running("the worker watcher", supervisor.watch_workers)),
            asyncio.create_task(_kept_running("the table watcher", supervisor.tables.watch)),
        ]
        print(
            f"model-router: serving on {supervisor.url} (admin {supervisor.admin_url}), "
            f"{grpc_said(supervisor.grpc_listen, 0)}"
            f"config {table.digest}, log {table.log.path}, {workers} workers, "
            f"open files {open_files}",
            file=sys.stderr,
            flush=True,
        )
        await until_stopped(
            supervisor.reload_on_signal, lambda: supervisor.signal_all(signal.SIGUSR1)
        )
        print("model-router: stopping; workers let requests in flight finish", file=sys.stderr)
    finally:
        for task in watchers:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await supervisor.stop()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


async def _kept_running(name: str, watch: Callable[[], Awaitable[None]]) -> None:
    """Run `watch` for as long as the supervisor runs: one that fails is said on stderr
    with its traceback and started again, never left dead, its exception never kept for a
    gather at exit that would discard it (issue 21)."""
    while True:
        try:
            await watch()
        except Exception:
            logging.getLogger(__name__).exception("%s failed; starting it again", name)
            await asyncio.sleep(1.0)

"""Start real servers on loopback for tests: backends and routers, in-process or not."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Any

import orjson
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpServer

from router.app import Router
from router.config.validate import load_table, parse_table
from router.http.limits import ServerLimits

LOOPBACK = "127.0.0.1"


# How a test backend runs: no access log; on stop, a second for handlers still running.
BACKEND_RUNNER: dict[str, Any] = {"access_log": None, "shutdown_timeout": 1}


async def serve(aiohttp_server: AiohttpServer, app: web.Application, port: int = 0) -> str:
    """Run `app` on a loopback port (a free one unless given) through pytest-aiohttp's
    `aiohttp_server` fixture, which stops it when the test ends; returns its base URL."""
    return base_url(await aiohttp_server(app, host=LOOPBACK, port=port, **BACKEND_RUNNER))


def base_url(server: TestServer) -> str:
    """`http://host:port` of a started test server."""
    return f"http://{server.host}:{server.port}"


def dead_url() -> str:
    """A loopback URL where nothing listens (the port was free a moment ago)."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        port = s.getsockname()[1]
    return f"http://{LOOPBACK}:{port}"


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line]


def requests_in(path: Path) -> list[dict[str, Any]]:
    return [r for r in read_log(path) if r["event"] == "request"]


def table_data(
    models: dict[str, Any], log_path: Path, log: dict[str, Any] | None = None, **server: Any
) -> dict[str, Any]:
    """A routing table on free loopback ports; `log` adds keys to the `log` section."""
    return {
        "server": {"listen": f"{LOOPBACK}:0", "admin_listen": f"{LOOPBACK}:0", **server},
        "log": {"path": str(log_path), **(log or {})},
        "models": models,
    }


class RunningRouter:
    def __init__(self, router: Router, log_path: Path) -> None:
        self.router = router
        self.url = router.url
        self.log_path = log_path

    def records(self) -> list[dict[str, Any]]:
        """The `request` records; complete once the router has stopped."""
        return requests_in(self.log_path)


@asynccontextmanager
async def router_running(
    models: dict[str, Any],
    tmp_path: Path,
    log: dict[str, Any] | None = None,
    limits: ServerLimits | None = None,
    **server: Any,
) -> AsyncIterator[RunningRouter]:
    """The real router, in this process, on a free port, logging to tmp_path.

    `log` adds keys to the table's `log` section (`{"user_ids": "raw"}`); `server` to its
    `server` section; `limits` are the public port's (nginx's defaults if not given).
    """
    log_path = tmp_path / "routing.jsonl"
    table = parse_table(table_data(models, log_path, log, **server))
    router = Router(table, "test", limits=limits)
    await router.start()
    try:
        yield RunningRouter(router, log_path)
    finally:
        await router.stop()


@asynccontextmanager
async def router_from_file(config: Path) -> AsyncIterator[Router]:
    """The real router, in this process, reading its table from the file `config`.

    Unlike `router_running`, it knows its file, so the watcher, SIGHUP-style reloads and
    `POST /admin/reload` all work. The table should listen on port 0 (see `table_data`).
    """
    router = Router(load_table(config), str(config))
    await router.start()
    try:
        yield router
    finally:
        await router.stop()


class RouterProcess:
    """`model-router serve` as a real child process, on free ports."""

    def __init__(
        self,
        config: Path,
        log_path: Path,
        *extra: str,
        capture_stdout: bool = False,
        launcher: tuple[str, ...] = (sys.executable, "-m", "router"),
    ) -> None:
        """`capture_stdout`: pipe the child's stdout into `.stdout` (for `--log -`);
        `launcher`: the command line before `serve`."""
        self.log_path = log_path
        self.proc = subprocess.Popen(
            [*launcher, "serve", "--config", str(config),
             "--listen", f"{LOOPBACK}:0", "--admin-listen", f"{LOOPBACK}:0",
             "--log", str(log_path), *extra],
            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE if capture_stdout else None,
        )  # fmt: skip
        self.stdout: list[str] = []
        self._readers: list[threading.Thread] = []
        if capture_stdout:
            # Read stdout from the start, so the router never blocks on a full pipe.
            self._follow(self.proc.stdout, self.stdout)
        self.stderr: list[str] = []
        self.banner = ""  # the start-up line
        try:
            self.url, self.admin_url = self._wait_for_banner()
        except BaseException:
            self.stop()  # no child, thread or pipe outlives a router that failed to start
            raise
        # Keep reading stderr so a chatty router never blocks on a full pipe.
        self._follow(self.proc.stderr, self.stderr)

    def _follow(self, stream: IO[str] | None, lines: list[str]) -> None:
        assert stream is not None
        reader = threading.Thread(target=_collect, args=(stream, lines), daemon=True)
        reader.start()
        self._readers.append(reader)

    def _wait_for_banner(self) -> tuple[str, str]:
        assert self.proc.stderr is not None
        seen = []
        for line in self.proc.stderr:
            seen.append(line)
            found = re.search(r"serving on (\S+) \(admin (\S+)\)", line)
            if found:
                self.banner = line
                return found.group(1), found.group(2).rstrip(",)")
        raise RuntimeError("router exited before serving:\n" + "".join(seen))

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.proc.send_signal(signum)

    # A blocking wait in a thread: asyncio.timeout could not interrupt it, so it takes its own.
    async def wait(self, timeout: float = 30) -> int:  # noqa: ASYNC109
        return await asyncio.to_thread(self.proc.wait, timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for reader in self._readers:
            reader.join(timeout=5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@asynccontextmanager
async def router_process(
    models: dict[str, Any],
    tmp_path: Path,
    *extra: str,
    capture_stdout: bool = False,
    launcher: tuple[str, ...] = (sys.executable, "-m", "router"),
    **server: Any,
) -> AsyncIterator[RouterProcess]:
    """`model-router serve` as a child process on a table written to tmp_path.

    It logs to `tmp_path / "routing.jsonl"` unless `extra` says otherwise, and is killed on
    the way out if a test left it running. Started in a thread: the wait for its banner
    must not hold up the backends serving in this event loop.
    """
    log_path = tmp_path / "routing.jsonl"
    config = tmp_path / "routes.yaml"
    config.write_text(yaml.safe_dump(table_data(models, log_path, **server)))
    proc = await asyncio.to_thread(
        RouterProcess, config, log_path, *extra, capture_stdout=capture_stdout, launcher=launcher
    )
    try:
        yield proc
    finally:
        proc.stop()


def _collect(stream: IO[str], lines: list[str]) -> None:
    for line in stream:
        lines.append(line)

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
from typing import Any

import orjson
from aiohttp import web

from router.app import Router
from router.config import parse_table

LOOPBACK = "127.0.0.1"


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """Run `app` on a free loopback port; yields its base URL."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, LOOPBACK, 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


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


def table_data(models: dict[str, Any], log_path: Path, **server: Any) -> dict[str, Any]:
    return {
        "server": {"listen": f"{LOOPBACK}:0", "admin_listen": f"{LOOPBACK}:0", **server},
        "log": {"path": str(log_path)},
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
    models: dict[str, Any], tmp_path: Path, **server: Any
) -> AsyncIterator[RunningRouter]:
    """The real router, in this process, on a free port, logging to tmp_path."""
    log_path = tmp_path / "routing.jsonl"
    router = Router(parse_table(table_data(models, log_path, **server)), "test")
    await router.start()
    try:
        yield RunningRouter(router, log_path)
    finally:
        await router.stop()


class RouterProcess:
    """`model-router serve` as a real child process, on free ports."""

    def __init__(self, config: Path, log_path: Path, *extra: str) -> None:
        self.log_path = log_path
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "router", "serve", "--config", str(config),
             "--listen", f"{LOOPBACK}:0", "--admin-listen", f"{LOOPBACK}:0",
             "--log", str(log_path), *extra],
            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        self.url, self.admin_url = self._wait_for_banner()
        self.stderr: list[str] = []
        # Keep reading stderr so a chatty router never blocks on a full pipe.
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def _wait_for_banner(self) -> tuple[str, str]:
        assert self.proc.stderr is not None
        seen = []
        for line in self.proc.stderr:
            seen.append(line)
            found = re.search(r"serving on (\S+) \(admin (\S+)\)", line)
            if found:
                return found.group(1), found.group(2).rstrip(",)")
        raise RuntimeError("router exited before serving:\n" + "".join(seen))

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.proc.send_signal(signum)

    async def wait(self, timeout: float = 30) -> int:
        return await asyncio.to_thread(self.proc.wait, timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=5)

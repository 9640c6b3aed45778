"""What a SIGKILL can take from the routing log: records of answered requests never written.

    python bench/log_kill.py [--trials 20] [--connections 32]

Runs `model-router serve` on an in-process aiohttp backend, drives requests with unique
request ids over `--connections` connections, SIGKILLs the router at a random moment
between 1 and 2 s in, and counts the requests answered 200 whose record is not in the log.
Records are written off the request path (contract section 5): a record reaches the file
up to FLUSH_S (50 ms) after its answer, so that is the window a SIGKILL can lose.
Prints each trial and the worst, as records and as milliseconds of traffic.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson
import yaml
from aiohttp import web

LOOPBACK = "127.0.0.1"


async def backend() -> tuple[web.AppRunner, str]:
    async def echo(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, LOOPBACK, 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://{LOOPBACK}:{port}"


def start_router(tmp: Path, url: str) -> tuple[subprocess.Popen[str], str]:
    config = tmp / "routes.yaml"
    table = {
        "server": {"listen": f"{LOOPBACK}:0", "admin_listen": f"{LOOPBACK}:0"},
        "log": {"path": str(tmp / "routing.jsonl")},
        "models": {"m": {"versions": {"v1": {"url": url}}, "split": {"v1": 100}}},
    }
    config.write_text(yaml.safe_dump(table))
    command = [sys.executable, "-m", "router", "serve", "--config", str(config)]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        found = re.search(r"serving on (\S+)", line)
        if found:
            return proc, found.group(1)
    raise RuntimeError("the router did not start")


async def trial(tmp: Path, url: str, connections: int, rng: random.Random) -> tuple[int, float]:
    """One run: (records of answered requests missing from the log, requests per second)."""
    proc, router = await asyncio.to_thread(start_router, tmp, url)
    answered: list[str] = []
    stop = asyncio.Event()

    async def client(n: int, session: aiohttp.ClientSession) -> None:
        i = 0
        while not stop.is_set():
            rid = f"c{n}-{i}"
            i += 1
            try:
                headers = {"X-Request-ID": rid}
                async with session.get(f"{router}/models/m/x", headers=headers) as resp:
                    await resp.read()
                    if resp.status == 200:
                        answered.append(rid)
            except aiohttp.ClientError:
                return  # the router was killed

    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.monotonic()
        tasks = [asyncio.create_task(client(n, session)) for n in range(connections)]
        await asyncio.sleep(rng.uniform(1.0, 2.0))
        proc.send_signal(signal.SIGKILL)
        elapsed = time.monotonic() - started
        stop.set()
        await asyncio.gather(*tasks)
    await asyncio.to_thread(proc.wait)
    if proc.stderr is not None:
        proc.stderr.close()
    log = tmp / "routing.jsonl"
    logged = {orjson.loads(line).get("request_id") for line in log.read_bytes().splitlines()}
    log.unlink()
    return len(set(answered) - logged), len(answered) / elapsed


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args(argv)
    rng = random.Random(1)
    runner, url = await backend()
    worst_records, worst_ms = 0, 0.0
    try:
        with tempfile.TemporaryDirectory(prefix="model-router-kill-") as name:
            for i in range(args.trials):
                lost, rate = await trial(Path(name), url, args.connections, rng)
                ms = 1000 * lost / rate
                worst_records, worst_ms = max(worst_records, lost), max(worst_ms, ms)
                print(f"trial {i + 1}: {rate:.0f} req/s, lost {lost} records ({ms:.1f} ms)")
    finally:
        await runner.cleanup()
    print(f"worst: {worst_records} records, {worst_ms:.1f} ms of traffic")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

"""The baseline of issue 5: a bare aiohttp proxy with no features.

    python bench/bare_proxy.py PORT V1_URL V2_URL

One pooled ClientSession, MurmurHash3 on X-User-ID for a 90/10 split, bodies buffered, no
log, no metrics, no header handling: what aiohttp itself costs, to compare model-router with.
"""

from __future__ import annotations

import asyncio
import sys

import aiohttp
import mmh3
import uvloop
from aiohttp import web


async def main(port: int, v1: str, v2: str) -> None:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def handle(request: web.Request) -> web.Response:
        user = request.headers.get("X-User-ID", "")
        bucket = (mmh3.hash(user + "salt", seed=1, signed=False) * 10000) >> 32
        url = v1 if bucket < 9000 else v2
        body = await request.read()
        async with session.request(request.method, url + "/predict", data=body) as upstream:
            data = await upstream.read()
            return web.Response(body=data, status=upstream.status, content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await asyncio.Event().wait()
    finally:
        await session.close()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3]))

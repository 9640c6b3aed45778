"""A test backend: answers with what it received, or misbehaves on request.

Real aiohttp servers on loopback stand in for model versions; each path exercises one
thing the proxy must get right.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
from collections.abc import Awaitable, Callable

from aiohttp import web

NAME = web.AppKey("name", str)
# The raw target of every request the backend received, in order: lets a test show that
# the proxy never forwarded something.
SEEN = web.AppKey("seen", list[str])

# What /gzip answers: compressed once (mtime 0, so the bytes are always the same).
GZIP_PLAIN = b'{"compressed": true}\n' * 64
GZIP_BODY = gzip.compress(GZIP_PLAIN, mtime=0)


@web.middleware
async def remember(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    request.app[SEEN].append(request.raw_path)
    return await handler(request)


async def echo(request: web.Request) -> web.Response:
    """What arrived: method, raw target, headers (in order, repeats kept) and body digest."""
    body = await request.read()
    return web.json_response(
        {
            "version": request.app[NAME],
            "method": request.method,
            "target": request.raw_path,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body_bytes": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
        }
    )


async def upload(request: web.Request) -> web.Response:
    """Consume a body of any size without holding it."""
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.content.iter_chunked(1 << 16):
        digest.update(chunk)
        size += len(chunk)
    return web.json_response({"body_bytes": size, "body_sha256": digest.hexdigest()})


async def download(request: web.Request) -> web.StreamResponse:
    """`?mb=N`: N MiB of zeros, streamed with a Content-Length."""
    size = int(request.query.get("mb", "1")) << 20
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = size
    await response.prepare(request)
    block = b"\0" * (1 << 16)
    for _ in range(size // len(block)):
        await response.write(block)
    await response.write_eof()
    return response


async def status(request: web.Request) -> web.Response:
    code = int(request.match_info["code"])
    return web.json_response({"status": code, "version": request.app[NAME]}, status=code)


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("s", "1")))
    return web.json_response({"version": request.app[NAME], "slept": True})


async def stall(request: web.Request) -> web.StreamResponse:
    """Start a chunked answer, then go quiet: a timeout after the status line is out."""
    response = web.StreamResponse()
    await response.prepare(request)
    await response.write(b'{"partial": ')
    await asyncio.sleep(float(request.query.get("s", "5")))
    await response.write(b"true}")
    await response.write_eof()
    return response


async def prediction(request: web.Request) -> web.Response:
    return web.json_response({"prediction": 1, "probability": 0.75, "version": request.app[NAME]})


async def prediction_chunked(request: web.Request) -> web.StreamResponse:
    """A JSON answer in pieces, without a Content-Length: the proxy streams it."""
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    await response.write(b'{"prediction": 0, ')
    await asyncio.sleep(0.01)
    await response.write(b'"version": "' + request.app[NAME].encode() + b'"}')
    await response.write_eof()
    return response


async def cookies(request: web.Request) -> web.Response:
    response = web.json_response({"cookies": dict(request.cookies)})
    response.set_cookie("session", "from-" + request.app[NAME])
    response.headers.add("Set-Cookie", "second=2; Path=/")
    return response


async def hop(request: web.Request) -> web.Response:
    """Sends hop-by-hop headers that the proxy must not pass on."""
    return web.json_response(
        {"ok": True},
        headers={"Connection": "X-Secret", "X-Secret": "1", "Keep-Alive": "timeout=5",
                 "Proxy-Authenticate": "Basic", "Upgrade": "h2c", "X-Kept": "yes"},
    )  # fmt: skip


async def gzipped(request: web.Request) -> web.Response:
    """An answer already gzip-encoded by the backend: the proxy must pass it as it is."""
    return web.Response(
        body=GZIP_BODY, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}
    )


def create_echo_app(name: str) -> web.Application:
    app = web.Application(client_max_size=1 << 30, middlewares=[remember])
    app[NAME] = name
    app[SEEN] = []
    app.router.add_route("POST", "/upload", upload)
    app.router.add_get("/download", download)
    app.router.add_route("*", "/status/{code}", status)
    app.router.add_get("/slow", slow)
    app.router.add_get("/stall", stall)
    app.router.add_route("*", "/predict", prediction)
    app.router.add_route("*", "/predict-chunked", prediction_chunked)
    app.router.add_get("/cookies", cookies)
    app.router.add_get("/hop", hop)
    app.router.add_get("/gzip", gzipped)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app

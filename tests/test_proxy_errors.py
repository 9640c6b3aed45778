"""What goes wrong, and what the client and the log are told (contract sections 3 to 5).

Router-made errors must have the contract's JSON shape; backend errors must pass through
untouched; timeouts, unreachable backends and oversized bodies map to their codes.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from yarl import URL

from tests.support.echo import SEEN
from tests.support.errors import router_error
from tests.support.running import dead_url, router_running
from tests.support.tables import model, one_model

MIB = 1024 * 1024


# --- choosing ---


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/models/m/versions/v9/echo", {}),
        ("/models/m/echo", {"X-Model-Version": "v9"}),
    ],
)
async def test_unknown_version_is_404_listing_the_versions(
    backends: dict[str, str], tmp_path: Path, path: str, headers: dict[str, str]
) -> None:
    async with (
        router_running(model(backends, {"v1": 50, "v2": 50}), tmp_path) as r,
        aiohttp.ClientSession() as client,
        client.get(r.url + path, headers=headers) as resp,
    ):
        message = await router_error(resp, 404, "unknown_version")
    assert "v9" in message
    assert "v1" in message
    assert "v2" in message
    (record,) = r.records()
    assert (record["status"], record["outcome"]) == (404, "rejected")


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/models/m/versions/old/echo", {}),
        ("/models/m/echo", {"X-Model-Version": "old"}),
    ],
)
async def test_retired_version_is_410_naming_the_successor(
    backends: dict[str, str], tmp_path: Path, path: str, headers: dict[str, str]
) -> None:
    models = model(backends, {"v1": 50, "v2": 50})
    models["m"]["versions"]["old"] = {"url": dead_url(), "state": "retired", "successor": "v2"}
    async with (
        router_running(models, tmp_path) as r,
        aiohttp.ClientSession() as client,
        client.get(r.url + path, headers=headers) as resp,
    ):
        message = await router_error(resp, 410, "version_retired")
    assert "v2" in message
    (record,) = r.records()
    assert (record["status"], record["outcome"]) == (410, "rejected")


async def test_unknown_model_is_404_listing_the_models(
    backends: dict[str, str], tmp_path: Path
) -> None:
    versions = {"v1": {"url": backends["v1"]}}
    models = {name: {"versions": versions, "split": {"v1": 100}} for name in ("cancer", "books")}
    async with (
        router_running(models, tmp_path) as r,
        aiohttp.ClientSession() as client,
        client.get(f"{r.url}/models/nope/echo") as resp,
    ):
        message = await router_error(resp, 404, "unknown_model")
    assert "nope" in message
    assert "cancer" in message
    assert "books" in message
    (record,) = r.records()
    assert (record["model"], record["status"], record["outcome"]) == (None, 404, "rejected")


@pytest.mark.parametrize("path", ["/", "/healthz", "/model/m/echo", "/modelsx/m/echo", "/m/echo"])
async def test_other_paths_are_404_not_found(
    backends: dict[str, str], tmp_path: Path, path: str
) -> None:
    async with (
        router_running(model(backends, {"v1": 50, "v2": 50}), tmp_path) as r,
        aiohttp.ClientSession() as client,
        client.get(r.url + path) as resp,
    ):
        await router_error(resp, 404, "not_found")
    (record,) = r.records()
    assert (record["model"], record["status"], record["outcome"]) == (None, 404, "rejected")


async def test_missing_user_id_is_400_when_the_model_rejects(
    backends: dict[str, str], tmp_path: Path
) -> None:
    models = model(backends, {"v1": 50, "v2": 50}, when_no_user_id="reject")
    async with router_running(models, tmp_path) as r, aiohttp.ClientSession() as client:
        async with client.get(f"{r.url}/models/m/echo") as resp:
            await router_error(resp, 400, "missing_user_id")
        # Steps 1 to 4 come before step 5: an id is needed only to bucket the request.
        for path, headers in [
            ("/models/m/echo", {"X-User-ID": "u"}),
            ("/models/m/versions/v2/echo", {}),
            ("/models/m/echo", {"X-Model-Version": "v2"}),
        ]:
            async with client.get(r.url + path, headers=headers) as resp:
                assert resp.status == 200
    rejected, *accepted = r.records()
    assert (rejected["status"], rejected["outcome"]) == (400, "rejected")
    assert [(rec["assigned_by"], rec["outcome"]) for rec in accepted] == [
        ("split", "ok"),
        ("pinned", "ok"),
        ("header", "ok"),
    ]


@pytest.mark.parametrize(
    "path",
    [
        "/models/m/../x",
        "/models/m/%2e%2e/x",
        "/models/m/%2E%2E/x",
        "/models/m/.%2e/x",
        "/models/m/./x",
        "/models/m/%2e/x",
        "/models/m/echo/..",
        "/models/m/versions/v1/../x",
        "/models/m/a/../../x?q=1",
    ],
)
async def test_dot_segments_are_400_bad_path_and_never_forwarded(
    backends: dict[str, str], backend_servers: dict[str, TestServer], tmp_path: Path, path: str
) -> None:
    async with (
        router_running(one_model(backends), tmp_path) as r,
        aiohttp.ClientSession() as client,
        # encoded=True: send the path as written; the client would resolve `..` itself
        client.get(URL(r.url + path, encoded=True), headers={"X-User-ID": "u"}) as resp,
    ):
        await router_error(resp, 400, "bad_path")
    assert backend_servers["v1"].app[SEEN] == []
    (record,) = r.records()
    assert (record["status"], record["outcome"]) == (400, "rejected")
    assert record["path"] == path.partition("?")[0]
    assert record["upstream_ms"] is None


# --- the backend's own errors ---


@pytest.mark.parametrize(
    ("code", "outcome"),
    [(404, "client_error"), (418, "client_error"), (500, "server_error"), (503, "server_error")],
)
async def test_backend_errors_pass_through_with_their_bodies(
    backends: dict[str, str], tmp_path: Path, code: int, outcome: str
) -> None:
    async with (
        router_running(model(backends, {"v1": 100, "v2": 0}), tmp_path) as r,
        aiohttp.ClientSession() as client,
        client.get(f"{r.url}/models/m/status/{code}", headers={"X-User-ID": "u"}) as resp,
    ):
        assert resp.status == code
        assert await resp.json() == {"status": code, "version": "v1"}
        assert resp.headers["X-Model-Version"] == "v1"
    (record,) = r.records()
    assert (record["status"], record["outcome"], record["version"]) == (code, outcome, "v1")


# --- the backend does not answer ---


async def test_slow_backend_is_504_upstream_timeout(
    backends: dict[str, str], tmp_path: Path
) -> None:
    models = model(backends, {"v1": 100, "v2": 0}, timeout_s=0.3)
    async with router_running(models, tmp_path) as r, aiohttp.ClientSession() as client:
        started = time.monotonic()
        async with client.get(f"{r.url}/models/m/slow?s=2") as resp:
            await router_error(resp, 504, "upstream_timeout")
        assert time.monotonic() - started < 1.5  # the router gave up, not the backend
    (record,) = r.records()
    assert (record["status"], record["outcome"]) == (504, "timeout")
    assert record["assigned_version"] == "v1"


async def test_per_version_timeout_overrides_the_model_one(
    backends: dict[str, str], tmp_path: Path
) -> None:
    models = model(backends, {"v1": 100, "v2": 0}, timeout_s=0.3)
    models["m"]["versions"]["v2"]["timeout_s"] = 5
    async with (
        router_running(models, tmp_path) as r,
        aiohttp.ClientSession() as client,
        client.get(f"{r.url}/models/m/versions/v2/slow?s=0.5") as resp,
    ):
        assert resp.status == 200
        assert await resp.json() == {"version": "v2", "slept": True}
    (record,) = r.records()
    assert record["outcome"] == "ok"


async def test_unreachable_backend_is_502_upstream_unavailable(tmp_path: Path) -> None:
    models = {"m": {"versions": {"v1": {"url": dead_url()}}, "split": {"v1": 100}}}
    async with (
        router_running(models, tmp_path) as r,
        aiohttp.ClientSession() as client,
        client.get(f"{r.url}/models/m/echo", headers={"X-User-ID": "u"}) as resp,
    ):
        await router_error(resp, 502, "upstream_unavailable")
    (record,) = r.records()
    assert (record["status"], record["outcome"]) == (502, "unavailable")
    assert record["assigned_version"] == "v1"


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_fallback_answers_when_the_assigned_version_is_unreachable(
    backends: dict[str, str], tmp_path: Path, method: str
) -> None:
    models = {
        "m": {
            "versions": {"v1": {"url": backends["v1"]}, "v2": {"url": dead_url()}},
            "split": {"v1": 0, "v2": 100},
            "fallback": "v1",
        }
    }
    data = os.urandom(50_000) if method == "POST" else None
    async with (
        router_running(models, tmp_path) as r,
        aiohttp.ClientSession() as client,
        client.request(
            method, f"{r.url}/models/m/echo", data=data, headers={"X-User-ID": "u"}
        ) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["X-Model-Version"] == "v1"
        body = await resp.json()
    assert body["version"] == "v1"
    assert ["X-Model-Version", "v1"] in body["headers"]
    assert body["body_bytes"] == len(data or b"")
    (record,) = r.records()
    assert record["assigned_by"] == "split"
    assert (record["assigned_version"], record["version"]) == ("v2", "v1")
    assert (record["status"], record["outcome"]) == (200, "ok")


async def test_fallback_takes_a_streamed_body_the_dead_version_never_got(
    backends: dict[str, str], tmp_path: Path
) -> None:
    models = {
        "m": {
            "versions": {"v1": {"url": backends["v1"]}, "v2": {"url": dead_url()}},
            "split": {"v1": 0, "v2": 100},
            "fallback": "v1",
        }
    }
    data = os.urandom(3 * MIB)  # over the size the router would hold whole
    async with (
        router_running(models, tmp_path) as r,
        aiohttp.ClientSession() as client,
        client.post(f"{r.url}/models/m/upload", data=io.BytesIO(data)) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["X-Model-Version"] == "v1"
        assert await resp.json() == {
            "body_bytes": len(data),
            "body_sha256": hashlib.sha256(data).hexdigest(),
        }
    (record,) = r.records()
    assert (record["assigned_version"], record["version"], record["outcome"]) == ("v2", "v1", "ok")


async def test_stall_after_the_headers_truncates_the_answer(
    backends: dict[str, str], tmp_path: Path
) -> None:
    models = model(backends, {"v1": 100, "v2": 0}, timeout_s=0.3)
    async with (
        router_running(models, tmp_path) as r,
        aiohttp.ClientSession() as client,
        client.get(f"{r.url}/models/m/stall?s=2") as resp,
    ):
        assert resp.status == 200  # the status line was out before the backend stalled
        with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ClientConnectionError)):
            await resp.read()
    (record,) = r.records()
    assert record["outcome"] == "timeout"


# --- request bodies over max_body_mb ---


async def test_body_over_the_limit_with_content_length_is_413(
    backends: dict[str, str], backend_servers: dict[str, TestServer], tmp_path: Path
) -> None:
    # drain_s: on stop the router may spend up to min(drain_s, 2 s) in the lingering
    # read of the body it never took, though nothing is in flight; kept short here.
    async with (
        router_running(one_model(backends), tmp_path, max_body_mb=1, drain_s=0.2) as r,
        aiohttp.ClientSession() as client,
        # a BytesIO has a size: aiohttp sends it with a Content-Length
        client.post(f"{r.url}/models/m/upload", data=io.BytesIO(b"x" * (2 * MIB))) as resp,
    ):
        assert resp.request_info.headers["Content-Length"] == str(2 * MIB)
        await router_error(resp, 413, "body_too_large")
    assert backend_servers["v1"].app[SEEN] == []
    (record,) = r.records()
    assert (record["status"], record["outcome"]) == (413, "rejected")


async def chunks(total: int, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    """`total` bytes in `size` pieces: aiohttp sends an async generator chunked."""
    for _ in range(total // size):
        yield b"y" * size


async def test_chunked_body_over_the_limit_is_413(backends: dict[str, str], tmp_path: Path) -> None:
    models = model(backends, {"v1": 100, "v2": 0})
    async with (
        router_running(models, tmp_path, max_body_mb=1) as r,
        aiohttp.ClientSession() as client,
        client.post(f"{r.url}/models/m/upload", data=chunks(2 * MIB)) as resp,
    ):
        assert resp.request_info.headers["Transfer-Encoding"] == "chunked"
        await router_error(resp, 413, "body_too_large")
    (record,) = r.records()
    assert (record["status"], record["outcome"]) == (413, "rejected")


async def test_chunked_body_under_the_limit_arrives_whole(
    backends: dict[str, str], tmp_path: Path
) -> None:
    models = model(backends, {"v1": 100, "v2": 0})
    async with (
        router_running(models, tmp_path, max_body_mb=1) as r,
        aiohttp.ClientSession() as client,
        client.post(f"{r.url}/models/m/upload", data=chunks(MIB // 2)) as resp,
    ):
        assert resp.status == 200
        assert (await resp.json())["body_bytes"] == MIB // 2


# --- a slow client is not a slow backend ---


async def paced(
    pieces: int, size: int, pause: float, digest: hashlib._Hash
) -> AsyncIterator[bytes]:
    """`pieces` distinct pieces of `size` bytes, `pause` seconds apart: a slow but steady
    client. `digest` sees each piece as it is sent."""
    block = os.urandom(size)
    for i in range(pieces):
        if i:
            await asyncio.sleep(pause)  # pacing the upload, not waiting for a state
        piece = i.to_bytes(8, "big") + block[8:]
        digest.update(piece)
        yield piece


@pytest.mark.parametrize("with_length", [True, False], ids=["content-length", "chunked"])
async def test_a_slow_streamed_upload_longer_than_timeout_s_is_forwarded_whole(
    backends: dict[str, str], tmp_path: Path, with_length: bool
) -> None:
    """1.5 MiB (over the 1 MiB the router holds whole, so it is streamed) in six pieces,
    0.5 s apart: 2.5 s of the client's pauses, over twice the model's timeout_s (1 s, ample
    for the backend's own part on loopback), each pause well under server.body_timeout_s.
    timeout_s is the backend's time, never the client's: the upload arrives whole, the
    record is ok, and the version is not marked down (one failure would do it here, and
    there is no fallback)."""
    pieces, size, pause, timeout_s = 6, 256 * 1024, 0.5, 1.0
    assert (pieces - 1) * pause > 2 * timeout_s
    assert pieces * size > MIB
    models = model(
        backends, {"v1": 100, "v2": 0}, timeout_s=timeout_s,
        outlier={"failures": 1, "cooloff_s": 60},
    )  # fmt: skip
    sent = hashlib.sha256()
    headers = {"Content-Length": str(pieces * size)} if with_length else {}
    async with (
        router_running(models, tmp_path, body_timeout_s=5) as r,
        aiohttp.ClientSession() as client,
    ):
        async with client.post(
            f"{r.url}/models/m/upload", data=paced(pieces, size, pause, sent), headers=headers
        ) as resp:
            assert resp.request_info.headers.get("Transfer-Encoding") == (
                None if with_length else "chunked"
            )
            assert resp.status == 200, await resp.text()
            assert resp.headers["X-Model-Version"] == "v1"
            assert await resp.json() == {
                "body_bytes": pieces * size,
                "body_sha256": sent.hexdigest(),
            }
        async with client.get(f"{r.url}/models/m/echo?n=2") as resp:
            assert resp.status == 200  # v1 is still up: 502 if the upload had counted against it
            assert (await resp.json())["version"] == "v1"
    upload, after = r.records()
    assert (upload["path"], upload["status"], upload["outcome"]) == ("/models/m/upload", 200, "ok")
    assert upload["version"] == "v1"
    assert (after["status"], after["outcome"], after["version"]) == (200, "ok", "v1")

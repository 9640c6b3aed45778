"""`POST /feedback/<m>` under the faults of contract section 13: the bearer token
(`server.feedback_token_env`) and bodies read within `body_timeout_s` and the size limit.

A refused feedback is a `request` record with outcome `rejected` (section 4).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.support import tables
from tests.support.errors import router_error
from tests.support.running import read_log, router_running
from tests.support.sockets import address, send_raw

LABEL = orjson.dumps({"request_id": "abc", "label": 1})
TOKEN_ENV = "MODEL_ROUTER_TEST_FEEDBACK_TOKEN"


def head(length: int, extra: str = "") -> bytes:
    return (
        f"POST /feedback/m HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n{extra}\r\n"
    ).encode()


def refusals(log_path: Path) -> list[tuple[int, str, str | None]]:
    return [
        (e["status"], e["outcome"], e["model"])
        for e in read_log(log_path)
        if e["event"] == "request"
    ]


def feedback_events(log_path: Path) -> list[dict[str, Any]]:
    return [e for e in read_log(log_path) if e["event"] == "feedback"]


# --- the bearer token ---


@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong", "Basic s3cret", "Bearer ", "s3cret"]
)
async def test_feedback_without_the_token_is_401_and_a_rejected_request(
    backends: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    authorization: str | None,
) -> None:  # fmt: skip
    monkeypatch.setenv(TOKEN_ENV, "s3cret")
    headers = {"Authorization": authorization} if authorization is not None else {}
    models = tables.one_model(backends)
    async with (
        router_running(models, tmp_path, feedback_token_env=TOKEN_ENV) as r,
        aiohttp.ClientSession() as client,
        client.post(f"{r.url}/feedback/m", data=LABEL, headers=headers) as resp,
    ):
        await router_error(resp, 401, "unauthorized")
    assert refusals(r.log_path) == [(401, "rejected", "m")]
    assert feedback_events(r.log_path) == []


@pytest.mark.parametrize("scheme", ["Bearer", "bearer"])
async def test_feedback_with_the_token_is_accepted(
    backends: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scheme: str
) -> None:
    monkeypatch.setenv(TOKEN_ENV, "s3cret")
    headers = {"Authorization": f"{scheme} s3cret"}
    models = tables.one_model(backends)
    async with (
        router_running(models, tmp_path, feedback_token_env=TOKEN_ENV) as r,
        aiohttp.ClientSession() as client,
        client.post(f"{r.url}/feedback/m", data=LABEL, headers=headers) as resp,
    ):
        assert resp.status == 202
    assert refusals(r.log_path) == []
    assert [e["request_id"] for e in feedback_events(r.log_path)] == ["abc"]


async def test_a_token_variable_that_is_not_set_leaves_feedback_open(
    backends: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    models = tables.one_model(backends)
    async with (
        router_running(models, tmp_path, feedback_token_env=TOKEN_ENV) as r,
        aiohttp.ClientSession() as client,
        client.post(f"{r.url}/feedback/m", data=LABEL) as resp,
    ):
        assert resp.status == 202


# --- the body: each piece within body_timeout_s, the whole within the size limit ---


async def test_a_feedback_body_that_stalls_is_408_and_closes(
    backends: dict[str, str], tmp_path: Path
) -> None:
    models = tables.one_model(backends)
    async with router_running(models, tmp_path, body_timeout_s=0.3) as r:
        # send_raw fails the test if no answer and no close come within 5 s.
        answer = await send_raw(r.url, head(len(LABEL)) + LABEL[:5])
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b'"body_timeout"' in answer
    assert refusals(r.log_path) == [(408, "rejected", "m")]
    assert feedback_events(r.log_path) == []


async def test_a_chunked_feedback_body_over_the_limit_is_413(
    backends: dict[str, str], tmp_path: Path
) -> None:
    big = b"x" * (1024 * 1024 + 10)

    async def chunks() -> Any:
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]

    models = tables.one_model(backends)
    async with (
        router_running(models, tmp_path) as r,
        aiohttp.ClientSession() as client,
        client.post(f"{r.url}/feedback/m", data=chunks()) as resp,
    ):
        await router_error(resp, 413, "body_too_large")
    assert refusals(r.log_path) == [(413, "rejected", "m")]


async def test_slow_feedback_posts_cannot_hold_every_connection(
    backends: dict[str, str], tmp_path: Path
) -> None:
    """With max_connections 2 held by two stalled feedback posts, a third client is served
    once body_timeout_s frees them; before, it waited for ever."""
    models = tables.one_model(backends)
    async with router_running(models, tmp_path, body_timeout_s=0.3, max_connections=2) as r:
        slow = [await asyncio.open_connection(*address(r.url)) for _ in range(2)]
        try:
            for _, writer in slow:
                writer.write(head(len(LABEL)) + LABEL[:5])
                await writer.drain()
            answer = await send_raw(r.url, head(len(LABEL), "Connection: close\r\n") + LABEL)
            assert answer.startswith(b"HTTP/1.1 202 "), answer
            for reader, _ in slow:
                async with asyncio.timeout(5):
                    assert (await reader.read()).startswith(b"HTTP/1.1 408 ")
        finally:
            for _, writer in slow:
                writer.close()
    assert sorted(refusals(r.log_path)) == [(408, "rejected", "m")] * 2

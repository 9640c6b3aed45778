"""OpenAI-compatible APIs on the stable URL (contract section 11): the body's `"model"`
picks the model and may pin a version, the version's server gets its own model name in
that one string and every other byte as sent, a body field may be the user id, and the
router's errors come in the shape OpenAI's SDKs parse. Echo backends show what arrived."""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from openai import AsyncOpenAI, NotFoundError
from pytest_aiohttp import AiohttpServer

from backends.llm import create_app as create_llm_app
from router.routing.choose import bucket
from tests.support.running import RunningRouter, base_url, read_log, router_running

SALT = "llm-salt"
CHAT = "/v1/chat/completions"


def llm(backends: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {
        "llm": {
            "salt": SALT,
            "user_id": [{"body": "user"}, {"header": "X-User-ID"}],
            "versions": {
                "v1": {"url": backends["v1"], "upstream_model": "org/llama-3-8b"},
                "v2": {"url": backends["v2"], "upstream_model": "llama-3.1-8b"},
            },
            "split": {"v1": 50, "v2": 50},
            **extra,
        }
    }


@pytest.fixture
async def router(backends: dict[str, str], tmp_path: Path) -> AsyncIterator[RunningRouter]:
    async with router_running(llm(backends), tmp_path) as running:
        yield running


UPSTREAM = {"v1": b'"org/llama-3-8b"', "v2": b'"llama-3.1-8b"'}


async def post(
    url: str, body: bytes, path: str = CHAT, **headers: str
) -> tuple[int, Any, dict[str, str]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            url + path,
            data=io.BytesIO(body),
            headers={"Content-Type": "application/json", **headers},
        ) as resp,
    ):
        return resp.status, await resp.json(), dict(resp.headers)


def body_with(model: str, user: str = "alice", padding: str = "") -> bytes:
    """A body as a client may write it: odd spacing, escapes, a float spelled its way."""
    return (
        b'{ "messages" :[ {"role":"user", "content":"the \\"model\\": is not this one%s"}],\n'
        b'  "model" :  "%s", "temperature":0.70, "user":"%s"}'
        % (padding.encode(), model.encode(), user.encode())
    )


async def test_the_body_model_is_rewritten_to_the_versions_name_and_nothing_else(
    router: RunningRouter,
) -> None:
    for user in ("alice", "bob", "carol", "dave", "erin", "frank"):
        body = body_with("llm", user)
        status, echoed, headers = await post(router.url, body)
        assert status == 200
        version = "v1" if bucket(user, SALT) < 5000 else "v2"
        assert echoed["version"] == headers["X-Model-Version"] == version
        assert echoed["target"] == CHAT
        sent = body.replace(b'"llm"', UPSTREAM[version])
        assert echoed["body_sha256"] == hashlib.sha256(sent).hexdigest()
        assert echoed["body_bytes"] == len(sent)
    await router.router.stop()
    records = router.records()
    assert {r["assigned_by"] for r in records} == {"split"}
    assert all(r["protocol"] == "openai" and r["model"] == "llm" for r in records)
    assert [r["bucket"] for r in records] == [
        bucket(u, SALT) for u in ("alice", "bob", "carol", "dave", "erin", "frank")
    ]


@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_model_colon_version_pins(router: RunningRouter, version: str) -> None:
    body = body_with(f"llm:{version}")
    status, echoed, _ = await post(router.url, body, "/v1/completions")
    assert (status, echoed["version"], echoed["target"]) == (200, version, "/v1/completions")
    sent = body.replace(f'"llm:{version}"'.encode(), UPSTREAM[version])
    assert echoed["body_sha256"] == hashlib.sha256(sent).hexdigest()
    await router.router.stop()
    assert [r["assigned_by"] for r in router.records()] == ["pinned"]


async def test_x_model_version_pins_too(router: RunningRouter) -> None:
    status, echoed, _ = await post(
        router.url, body_with("llm"), "/v1/embeddings", **{"X-Model-Version": "v2"}
    )
    assert (status, echoed["version"]) == (200, "v2")


async def test_a_body_user_id_is_read_only_from_a_json_object_held_whole(
    backends: dict[str, str], tmp_path: Path
) -> None:
    async with router_running(llm(backends), tmp_path, max_body_mb=4) as running:
        big = body_with("llm", "alice", padding="x" * (1 << 20))  # over 1 MiB: no body id
        status, echoed, _ = await post(running.url, big, **{"X-User-ID": "from-header"})
        assert status == 200
        assert (
            echoed["body_sha256"]
            == hashlib.sha256(big.replace(b'"llm"', UPSTREAM[echoed["version"]])).hexdigest()
        )
        await post(running.url, body_with("llm", "alice"), **{"X-User-ID": "from-header"})
        await running.router.stop()
    first, second = running.records()
    assert first["bucket"] == bucket("from-header", SALT)
    assert second["bucket"] == bucket("alice", SALT)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b'{"messages": []}', 400, "bad_request"),
        (b'{"model": 7}', 400, "bad_request"),
        (b"not json", 400, "bad_request"),
        (b'{"model": "nope"}', 404, "unknown_model"),
        (b'{"model": "llm:v9"}', 404, "unknown_version"),
    ],
)
async def test_errors_come_in_openais_shape(
    router: RunningRouter, body: bytes, status: int, code: str
) -> None:
    got, error, headers = await post(router.url, body)
    assert got == status
    assert headers["X-Router-Error"] == code
    assert list(error) == ["error"]
    assert set(error["error"]) == {"message", "type", "code", "param"}
    assert (error["error"]["type"], error["error"]["code"], error["error"]["param"]) == (
        code,
        code,
        None,
    )
    assert error["error"]["message"]
    await router.router.stop()
    (record,) = router.records()
    assert (record["status"], record["outcome"], record["protocol"]) == (
        status,
        "rejected",
        "openai",
    )


async def test_the_model_list_is_the_tables(router: RunningRouter) -> None:
    async with aiohttp.ClientSession() as session, session.get(f"{router.url}/v1/models") as resp:
        assert resp.status == 200
        listed = await resp.json()
    assert listed == {
        "object": "list",
        "data": [{"id": "llm", "object": "model", "owned_by": "model-router"}],
    }


# --- the OpenAI SDK against OpenAI-compatible servers that each serve one model name ---


@pytest.fixture
async def llm_servers(aiohttp_server: AiohttpServer) -> dict[str, str]:
    """Two example LLM servers (backends/llm.py), each refusing any model but its own."""
    return {
        "v1": base_url(await aiohttp_server(create_llm_app("org/llama-3-8b"))),
        "v2": base_url(await aiohttp_server(create_llm_app("llama-3.1-8b"))),
    }


@pytest.fixture
async def llm_router(llm_servers: dict[str, str], tmp_path: Path) -> AsyncIterator[RunningRouter]:
    models = llm(llm_servers, prediction="/choices/0/message/content")
    async with router_running(models, tmp_path) as running:
        yield running


def sdk(router: RunningRouter) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=0)


async def test_the_sdk_chats_with_the_version_its_user_is_assigned(
    llm_router: RunningRouter,
) -> None:
    async with sdk(llm_router) as client:
        for user in ("alice", "bob", "carol", "dave"):
            answer = await client.chat.completions.create(
                model="llm", messages=[{"role": "user", "content": "hello"}], user=user
            )
            served = "org/llama-3-8b" if bucket(user, SALT) < 5000 else "llama-3.1-8b"
            assert answer.model == served
            assert answer.choices[0].message.content == f"{served}: olleh"
        pinned = await client.completions.create(model="llm:v2", prompt="abc")
        assert pinned.choices[0].text == "llama-3.1-8b: cba"
        embedded = await client.embeddings.create(model="llm", input="x", user="alice")
        assert embedded.model in ("org/llama-3-8b", "llama-3.1-8b")
        listed = [m.id async for m in client.models.list()]
        assert listed == ["llm"]
    await llm_router.router.stop()
    chats = [r for r in llm_router.records() if r["path"] == CHAT]
    assert [r["response"]["prediction"].endswith(": olleh") for r in chats] == [True] * 4


async def test_the_sdk_streams_through_the_router(llm_router: RunningRouter) -> None:
    async with sdk(llm_router) as client:
        stream = await client.chat.completions.create(
            model="llm:v1",
            messages=[{"role": "user", "content": "one two three"}],
            stream=True,
        )
        pieces = [chunk.choices[0].delta.content async for chunk in stream if chunk.choices]
    assert "".join(p or "" for p in pieces) == "org/llama-3-8b: eerht owt eno"
    assert len(pieces) > 3  # one event per token, not one block
    await llm_router.router.stop()
    (record,) = llm_router.records()
    assert record["outcome"] == "ok"
    assert 0 < record["first_byte_ms"] <= record["latency_ms"]


async def test_unknown_models_raise_the_sdks_own_errors_with_the_routers_message(
    llm_router: RunningRouter,
) -> None:
    async with sdk(llm_router) as client:
        with pytest.raises(NotFoundError) as caught:
            await client.chat.completions.create(model="gpt-9", messages=[])
    assert caught.value.status_code == 404
    assert caught.value.code == "unknown_model"
    assert "no model 'gpt-9'" in caught.value.message


GATE = web.AppKey("gate", asyncio.Event)


async def gated_stream(request: web.Request) -> web.StreamResponse:
    """One event, then nothing until the test has seen it through the router."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(b'data: {"choices": [{"index": 0, "delta": {"content": "first"}}]}\n\n')
    await request.app[GATE].wait()
    await response.write(b'data: {"choices": [{"index": 0, "delta": {"content": "last"}}]}\n\n')
    await response.write(b"data: [DONE]\n\n")
    return response


async def test_each_event_reaches_the_client_before_the_next_is_written(
    aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    app = web.Application()
    app[GATE] = asyncio.Event()
    app.router.add_post(CHAT, gated_stream)
    url = base_url(await aiohttp_server(app))
    async with (
        router_running(llm({"v1": url, "v2": url}), tmp_path) as running,
        sdk(running) as client,
    ):
        stream = await client.chat.completions.create(model="llm", messages=[], stream=True)
        seen = []
        async for chunk in stream:
            seen.append(chunk.choices[0].delta.content)
            app[GATE].set()  # only now does the backend write the second event
    assert seen == ["first", "last"]


async def test_a_shadow_copy_carries_the_shadows_own_model_name(
    backends: dict[str, str], tmp_path: Path
) -> None:
    # The echo backends answer with the digest of the body they got: a pointer logs it.
    models = llm(backends, shadow={"version": "v2"}, log_response=["/body_sha256"])
    models["llm"]["split"] = {"v1": 100, "v2": 0}
    body = body_with("llm", "alice")
    async with router_running(models, tmp_path) as running:
        status, echoed, _ = await post(running.url, body)
        assert (status, echoed["version"]) == (200, "v1")
    records = read_log(running.log_path)
    (primary,) = [r for r in records if r["event"] == "request"]
    (copy,) = [r for r in records if r["event"] == "shadow"]
    digest = {v: hashlib.sha256(body.replace(b'"llm"', UPSTREAM[v])).hexdigest() for v in UPSTREAM}
    assert primary["response"] == {"/body_sha256": digest["v1"]}
    assert (copy["version"], copy["outcome"]) == ("v2", "ok")
    assert copy["response"] == {"/body_sha256": digest["v2"]}
    assert copy["agree"] is False  # the two versions got different bodies

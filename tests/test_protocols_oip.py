"""The Open Inference Protocol v2 and TF Serving's REST API on the stable URL (contract
section 11), with the clients users run: `tritonclient.http` against the real router in
front of two OIP backends whose versions serve different model names."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import tritonclient.http as triton
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpServer
from tritonclient.utils import InferenceServerException
from yarl import URL

from router.report import make_report
from router.routing.choose import bucket
from tests.support.oip import TARGETS, create_oip_app
from tests.support.running import RunningRouter, base_url, router_running

SALT = "oip-salt"


@pytest.fixture
async def oip_servers(aiohttp_server: AiohttpServer) -> dict[str, TestServer]:
    """v1 serves `cancer` (answers 1); v2 serves `cancer-v2` (answers 2)."""
    return {
        "v1": await aiohttp_server(create_oip_app("cancer", 1)),
        "v2": await aiohttp_server(create_oip_app("cancer-v2", 2)),
    }


def cancer(servers: dict[str, TestServer], **extra: Any) -> dict[str, Any]:
    return {
        "cancer": {
            "salt": SALT,
            "versions": {
                "v1": {"url": base_url(servers["v1"])},
                "v2": {
                    "url": base_url(servers["v2"]),
                    "upstream_model": "cancer-v2",
                    "upstream_version": 7,
                },
            },
            "split": {"v1": 50, "v2": 50},
            "prediction": "/outputs/0/data/0",
            **extra,
        }
    }


@pytest.fixture
async def router(
    oip_servers: dict[str, TestServer], tmp_path: Path
) -> AsyncIterator[RunningRouter]:
    async with router_running(cancer(oip_servers), tmp_path) as running:
        yield running


def host_port(url: str) -> str:
    return url.removeprefix("http://")


def infer(
    url: str,
    model: str,
    version: str = "",
    user: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """One tritonclient.http inference (JSON tensors): the prediction and the response."""
    client = triton.InferenceServerClient(url=host_port(url))
    try:
        x = triton.InferInput("x", [1, 2], "FP64")
        x.set_data_from_numpy(np.array([[0.5, 1.5]]), binary_data=False)
        wanted = triton.InferRequestedOutput("predict", binary_data=False)
        headers = {**(headers or {}), **({"X-User-ID": user} if user is not None else {})}
        result = client.infer(model, [x], model_version=version, outputs=[wanted], headers=headers)
        return int(result.as_numpy("predict")[0]), result.get_response()
    finally:
        client.close()


def expected_label(user: str) -> int:
    return 1 if bucket(user, SALT) < 5000 else 2


async def test_tritonclient_infers_through_the_split_and_each_user_sticks(
    router: RunningRouter, oip_servers: dict[str, TestServer]
) -> None:
    users = [f"user-{i}" for i in range(24)]
    for user in users:
        label, answer = await asyncio.to_thread(infer, router.url, "cancer", user=user)
        assert label == expected_label(user), user
        again, _ = await asyncio.to_thread(infer, router.url, "cancer", user=user)
        assert again == label
        # Each version's server got its own model name (and version) in the path.
        wanted = (
            "/v2/models/cancer/infer" if label == 1 else "/v2/models/cancer-v2/versions/7/infer"
        )
        assert answer["parameters"]["target"] == wanted
    assert {expected_label(u) for u in users} == {1, 2}
    await router.router.stop()
    records = router.records()
    assert len(records) == 2 * len(users)
    for record in records:
        assert record["protocol"] == "oip"
        assert record["assigned_by"] == "split"
        assert record["path"] == "/v2/models/cancer/infer"
        assert record["response"] == {"prediction": int(record["version"][1])}
        assert 0 <= record["first_byte_ms"] <= record["latency_ms"]


async def test_a_version_in_the_path_pins_it(router: RunningRouter) -> None:
    for user in ("a", "b", "c", "d"):
        label, answer = await asyncio.to_thread(infer, router.url, "cancer", "v2", user)
        assert label == 2
        assert answer["parameters"]["target"] == "/v2/models/cancer-v2/versions/7/infer"
        label, answer = await asyncio.to_thread(infer, router.url, "cancer", "v1", user)
        assert (label, answer["parameters"]["target"]) == (1, "/v2/models/cancer/infer")
    await router.router.stop()
    assert {r["assigned_by"] for r in router.records()} == {"pinned"}


def server_calls(url: str) -> dict[str, Any]:
    client = triton.InferenceServerClient(url=host_port(url))
    try:
        return {
            "live": client.is_server_live(),
            "ready": client.is_server_ready(),
            "server": client.get_server_metadata(),
            "model_ready": client.is_model_ready("cancer", "v2"),
            "metadata": client.get_model_metadata("cancer", "v1"),
        }
    finally:
        client.close()


async def test_server_health_and_metadata_are_the_routers_and_model_calls_are_forwarded(
    router: RunningRouter, oip_servers: dict[str, TestServer]
) -> None:
    calls = await asyncio.to_thread(server_calls, router.url)
    assert calls["live"] is True
    assert calls["ready"] is True
    assert calls["server"]["name"] == "model-router"
    assert calls["server"]["extensions"] == []
    assert isinstance(calls["server"]["version"], str)
    assert calls["model_ready"] is True
    assert "/v2/models/cancer-v2/versions/7/ready" in oip_servers["v2"].app[TARGETS]
    assert calls["metadata"]["name"] == "cancer"
    assert "/v2/models/cancer" in oip_servers["v1"].app[TARGETS]
    await router.router.stop()
    local = [
        r for r in router.records() if r["path"].startswith("/v2/health") or r["path"] == "/v2"
    ]
    assert len(local) == 3
    assert all(r["protocol"] == "oip" and r["model"] is None and r["status"] == 200 for r in local)


def infer_error(url: str, model: str, version: str = "") -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        infer(url, model, version, user="u")
    return caught.value


async def test_tritonclient_shows_the_routers_own_errors(router: RunningRouter) -> None:
    unknown = await asyncio.to_thread(infer_error, router.url, "nope")
    assert "no model 'nope'" in unknown.message()
    assert unknown.status() == "404"
    version = await asyncio.to_thread(infer_error, router.url, "cancer", "v9")
    assert "no version 'v9'" in version.message()
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{router.url}/v2/models/nope/infer", json={"inputs": []}) as resp,
    ):
        assert resp.status == 404
        assert resp.headers["X-Router-Error"] == "unknown_model"
        body = await resp.json()
        assert list(body) == ["error"]
        assert isinstance(body["error"], str)
    await router.router.stop()
    assert {r["protocol"] for r in router.records()} == {"oip"}


async def test_health_ready_says_503_while_draining(
    oip_servers: dict[str, TestServer], tmp_path: Path
) -> None:
    async with router_running(cancer(oip_servers), tmp_path, drain_s=5) as running:
        # Start a slow request on a kept-alive connection, so the router drains, then ask
        # it on that connection whether it is ready.
        reader, writer = await asyncio.open_connection(*host_port(running.url).split(":"))
        writer.write(b"GET /v2/health/ready HTTP/1.1\r\nHost: r\r\n\r\n")
        await writer.drain()
        assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200")
        await reader.readuntil(b'{"ready":true}')
        running.router.proxy.serving = False  # what Router.stop() does first
        writer.write(b"GET /v2/health/ready HTTP/1.1\r\nHost: r\r\n\r\n")
        await writer.drain()
        assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 503")
        writer.close()
        await writer.wait_closed()


async def test_feedback_labels_join_the_prediction_the_pointer_found(router: RunningRouter) -> None:
    async with aiohttp.ClientSession() as session:
        for i in range(30):
            ids = {"X-Request-ID": f"req-{i}"}
            await asyncio.to_thread(infer, router.url, "cancer", user=f"fb-{i}", headers=ids)
            # Every true label is 1: v1 (which answers 1) is always right, v2 never.
            label = {"request_id": f"req-{i}", "label": 1}
            async with session.post(f"{router.url}/feedback/cancer", json=label) as resp:
                assert resp.status == 202
    await router.router.stop()
    versions = make_report([str(router.log_path)])["models"]["cancer"]["versions"]
    assert versions["v1"]["accuracy"] == 1.0
    assert versions["v2"]["accuracy"] == 0.0
    assert versions["v1"]["labelled"] + versions["v2"]["labelled"] == 30


async def tf_call(
    session: aiohttp.ClientSession, method: str, url: str, user: str = "u"
) -> tuple[int, Any, aiohttp.ClientResponse]:
    async with session.request(
        method, url, json={"instances": [[1.0]]}, headers={"X-User-ID": user}
    ) as resp:
        return resp.status, await resp.json(), resp


V2 = "/v1/models/cancer-v2/versions/7"


@pytest.mark.parametrize(
    ("path", "method", "label", "target"),
    [
        ("/v1/models/cancer/versions/v2:predict", "POST", 2, f"{V2}:predict"),
        ("/v1/models/cancer/labels/v2:classify", "POST", 2, f"{V2}:classify"),
        ("/v1/models/cancer/versions/v1:regress", "POST", 1, "/v1/models/cancer:regress"),
        ("/v1/models/cancer/versions/v2", "GET", 2, "/v1/models/cancer-v2/versions/7"),
        ("/v1/models/cancer/versions/v1/metadata", "GET", 1, "/v1/models/cancer/metadata"),
        ("/v1/models/cancer/labels/v2/metadata?x=1", "GET", 2, f"{V2}/metadata?x=1"),
    ],
)  # fmt: skip
async def test_tf_serving_paths_pin_and_reach_the_versions_own_names(
    router: RunningRouter, path: str, method: str, label: int, target: str
) -> None:
    async with aiohttp.ClientSession() as session:
        status, body, resp = await tf_call(session, method, router.url + path)
    assert status == 200
    assert body == {"predictions": [label], "target": target, "method": method}
    assert resp.headers["X-Model-Version"] == f"v{label}"
    await router.router.stop()
    (record,) = router.records()
    assert (record["protocol"], record["assigned_by"]) == ("tfserving", "pinned")


async def test_tf_serving_predict_follows_the_split(router: RunningRouter) -> None:
    async with aiohttp.ClientSession() as session:
        for i in range(16):
            user = f"tf-{i}"
            _, body, _ = await tf_call(
                session, "POST", f"{router.url}/v1/models/cancer:predict", user
            )
            label = expected_label(user)
            assert body["predictions"] == [label]
            wanted = (
                "/v1/models/cancer:predict"
                if label == 1
                else "/v1/models/cancer-v2/versions/7:predict"
            )
            assert body["target"] == wanted


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/v1/models/nope:predict", 404, "unknown_model"),
        ("/v1/models/cancer/versions/v9:predict", 404, "unknown_version"),
        ("/v1/models/cancer:unheard", 404, "not_found"),
        ("/v1/models/cancer/../x:predict", 400, "bad_path"),
        ("/v2/models/cancer/versions/v9/infer", 404, "unknown_version"),
        ("/v2/models/cancer/../x/infer", 400, "bad_path"),
        ("/v2/repository/index", 404, "not_found"),
    ],
)
async def test_errors_on_these_paths_come_in_the_protocols_shape(
    router: RunningRouter, path: str, status: int, code: str
) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(URL(router.url + path, encoded=True), json={}) as resp,
    ):
        assert resp.status == status
        assert resp.headers["X-Router-Error"] == code
        body = await resp.json()
    assert list(body) == ["error"]
    assert isinstance(body["error"], str)
    assert body["error"]


async def test_a_retired_version_and_a_missing_user_id_in_the_oip_shape(
    oip_servers: dict[str, TestServer], tmp_path: Path
) -> None:
    models = cancer(oip_servers, when_no_user_id="reject")
    models["cancer"]["versions"]["v0"] = {
        "url": "http://127.0.0.1:9",
        "state": "retired",
        "successor": "v1",
    }
    async with (
        router_running(models, tmp_path) as running,
        aiohttp.ClientSession() as session,
    ):
        async with session.post(
            f"{running.url}/v2/models/cancer/versions/v0/infer", json={}
        ) as resp:
            assert (resp.status, resp.headers["X-Router-Error"]) == (410, "version_retired")
            assert "use 'v1'" in (await resp.json())["error"]
        async with session.post(f"{running.url}/v2/models/cancer/infer", json={}) as resp:
            assert (resp.status, resp.headers["X-Router-Error"]) == (400, "missing_user_id")

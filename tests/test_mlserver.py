"""A real model server behind the router: Seldon's MLServer with its scikit-learn runtime,
serving two versions of a model under different names, called with tritonclient.http
through the router (contract section 11).

MLServer lives in a virtualenv of its own (`.venv-mlserver`, made by `make test`): it pins
libraries of its own (FastAPI, uvicorn, its protobuf) that the router's environment must not
be bound to. It serves over JSON tensors only (`binary_data=False`): it does not take
tritonclient's binary-tensor extension.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton

from router.routing.choose import bucket
from tests.support.running import LOOPBACK, RunningRouter, router_running

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-mlserver"
START_S = 90.0

pytestmark = pytest.mark.skipif(
    not (VENV / "bin" / "mlserver").exists(),
    reason=f"MLServer is not installed in {VENV}: `make test` (or `make .venv-mlserver`) makes it",
)

# Two versions of an iris classifier, trained by MLServer's own Python (the pickles must be
# read by the scikit-learn that wrote them): v1 on the sepals only, v2 on all four features.
TRAIN = """
import joblib, sys
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier
x, y = load_iris(return_X_y=True)
joblib.dump(LogisticRegression(max_iter=500).fit(x, y), sys.argv[1])
joblib.dump(DecisionTreeClassifier(max_depth=1, random_state=0).fit(x, y), sys.argv[2])
"""
ROW = [6.7, 3.1, 5.6, 2.4]  # a virginica (2): the depth-1 tree cannot tell it, answers 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v2/models/iris-tree/ready", timeout=1) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture(scope="module")
def mlserver_ports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """MLServer on free loopback ports, serving `iris-linear` (v1) and `iris-tree` (7):
    its REST url and its gRPC address."""
    home = tmp_path_factory.mktemp("mlserver")
    python = str(VENV / "bin" / "python")
    subprocess.run([python, "-c", TRAIN, home / "linear.joblib", home / "tree.joblib"], check=True)
    for name, version, pickle in (("iris-linear", "v1", "linear"), ("iris-tree", "7", "tree")):
        (home / name).mkdir()
        settings = {
            "name": name,
            "implementation": "mlserver_sklearn.SKLearnModel",
            "parameters": {"uri": str(home / f"{pickle}.joblib"), "version": version},
        }
        (home / name / "model-settings.json").write_text(json.dumps(settings))
    http_port, grpc_port = _free_port(), _free_port()
    server = {
        "host": LOOPBACK,
        "http_port": http_port,
        "grpc_port": grpc_port,
        "metrics_port": _free_port(),
        "parallel_workers": 0,
    }
    (home / "settings.json").write_text(json.dumps(server))
    log = (home / "mlserver.log").open("w")
    env = {**os.environ, "PATH": f"{VENV / 'bin'}:{os.environ['PATH']}"}
    process = subprocess.Popen(
        [str(VENV / "bin" / "mlserver"), "start", str(home)], stdout=log, stderr=log, env=env
    )
    url = f"http://{LOOPBACK}:{http_port}"
    try:
        deadline = time.monotonic() + START_S
        while not _ready(url):
            assert process.poll() is None, (home / "mlserver.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "MLServer did not get ready"
            time.sleep(0.2)
        yield url, f"{LOOPBACK}:{grpc_port}"
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture(scope="module")
def mlserver(mlserver_ports: tuple[str, str]) -> str:
    return mlserver_ports[0]


def iris(rest: str, grpc: str) -> dict[str, Any]:
    """Model `iris` over both of MLServer's models, by REST and by gRPC."""
    v1 = {"upstream_model": "iris-linear", "upstream_version": "v1"}
    return {
        "iris": {
            "salt": "iris",
            "versions": {
                "v1": {"url": rest, "grpc_url": grpc, **v1},
                "v2": {"url": rest, "grpc_url": grpc, "upstream_model": "iris-tree"},
            },
            "split": {"v1": 50, "v2": 50},
            "prediction": "/outputs/0/data/0",
        }
    }


@pytest.fixture
async def router(mlserver_ports: tuple[str, str], tmp_path: Path) -> AsyncIterator[RunningRouter]:
    async with router_running(
        iris(*mlserver_ports), tmp_path, grpc_listen=f"{LOOPBACK}:0"
    ) as running:
        yield running


def infer(url: str, version: str = "", user: str = "u") -> tuple[int, dict[str, Any]]:
    client = triton.InferenceServerClient(url=url.removeprefix("http://"))
    try:
        x = triton.InferInput("x", [1, 4], "FP64")
        x.set_data_from_numpy(np.array([ROW]), binary_data=False)
        out = triton.InferRequestedOutput("predict", binary_data=False)
        headers = {"X-User-ID": user}
        result = client.infer("iris", [x], model_version=version, outputs=[out], headers=headers)
        return int(result.as_numpy("predict").ravel()[0]), result.get_response()
    finally:
        client.close()


def answer_of(protocol: str, router: RunningRouter, version: str = "", user: str = "u") -> Any:
    """(prediction, MLServer's model name) by tritonclient.http or tritonclient.grpc."""
    if protocol == "rest":
        label, answer = infer(router.url, version, user)
        return label, answer["model_name"]
    return grpc_infer(grpc_address(router), version, user)


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
async def test_tritonclient_reaches_mlserver_through_the_split_and_the_pins(
    router: RunningRouter, protocol: str
) -> None:
    expected = {"v1": (2, "iris-linear"), "v2": (1, "iris-tree")}
    users = [f"user-{i}" for i in range(12)]
    for user in users:
        version = "v1" if bucket(user, "iris") < 5000 else "v2"
        got = await asyncio.to_thread(answer_of, protocol, router, user=user)
        assert got == expected[version], user
    for version in ("v1", "v2"):
        got = await asyncio.to_thread(answer_of, protocol, router, version)
        assert got == expected[version]
    await router.router.stop()
    records = router.records()
    assert len(records) == len(users) + 2
    assert {r["version"] for r in records[: len(users)]} == {"v1", "v2"}
    assert [r["assigned_by"] for r in records[-2:]] == ["pinned", "pinned"]
    for record in records:
        assert (record["status"], record["protocol"]) == (
            200,
            "oip" if protocol == "rest" else protocol,
        )
        if protocol == "rest":
            assert record["response"] == {"prediction": expected[record["version"]][0]}
        else:
            assert record["grpc_status"] == "OK"
            assert record["path"] == "/inference.GRPCInferenceService/ModelInfer"


async def test_mlservers_own_errors_pass_through(router: RunningRouter) -> None:
    client = triton.InferenceServerClient(url=router.url.removeprefix("http://"))
    try:
        bad = triton.InferInput("x", [1, 3], "FP64")  # three features: the model needs four
        bad.set_data_from_numpy(np.array([[1.0, 2.0, 3.0]]), binary_data=False)
        with pytest.raises(triton.InferenceServerException) as caught:
            await asyncio.to_thread(client.infer, "iris", [bad], model_version="v1")
    finally:
        client.close()
    # scikit-learn refuses the shape, and MLServer answers 500 with its message: as it is.
    assert caught.value.status() == "500"
    assert "features" in caught.value.message()
    await router.router.stop()
    (record,) = router.records()
    assert (record["status"], record["outcome"], record["version"]) == (500, "server_error", "v1")


# --- the Open Inference Protocol over gRPC: tritonclient.grpc, through the router ---


def grpc_infer(address: str, version: str = "", user: str = "u") -> tuple[int, str]:
    client = triton_grpc.InferenceServerClient(url=address)
    try:
        x = triton_grpc.InferInput("x", [1, 4], "FP64")
        x.set_data_from_numpy(np.array([ROW]))
        result = client.infer("iris", [x], model_version=version, headers={"x-user-id": user})
        response = result.get_response()
        return int(result.as_numpy("predict").ravel()[0]), response.model_name
    finally:
        client.close()


def grpc_address(router: RunningRouter) -> str:
    return f"{LOOPBACK}:{router.router.grpc_port}"


def server_calls(address: str) -> dict[str, Any]:
    client = triton_grpc.InferenceServerClient(url=address)
    try:
        return {
            "live": client.is_server_live(),
            "ready": client.is_server_ready(),
            "name": client.get_server_metadata().name,
            "model_ready": client.is_model_ready("iris", "v2"),
            "metadata": client.get_model_metadata("iris", "v1").name,
        }
    finally:
        client.close()


async def test_server_calls_are_the_routers_and_model_calls_reach_mlserver(
    router: RunningRouter,
) -> None:
    calls = await asyncio.to_thread(server_calls, grpc_address(router))
    assert calls == {
        "live": True,
        "ready": True,
        "name": "model-router",
        "model_ready": True,
        "metadata": "iris-linear",  # MLServer's own name for v1's model
    }


def grpc_error(address: str, model: str, version: str = "") -> Any:
    client = triton_grpc.InferenceServerClient(url=address)
    try:
        x = triton_grpc.InferInput("x", [1, 4], "FP64")
        x.set_data_from_numpy(np.array([ROW]))
        with pytest.raises(triton_grpc.InferenceServerException) as caught:
            client.infer(model, [x], model_version=version)
        return caught.value
    finally:
        client.close()


async def test_tritonclient_grpc_shows_the_routers_errors(router: RunningRouter) -> None:
    unknown = await asyncio.to_thread(grpc_error, grpc_address(router), "nope")
    assert unknown.status() == "StatusCode.NOT_FOUND"
    assert "no model 'nope'" in unknown.message()
    version = await asyncio.to_thread(grpc_error, grpc_address(router), "iris", "v9")
    assert "no version 'v9'" in version.message()

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
def mlserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """MLServer on free loopback ports, serving `iris-linear` (v1) and `iris-tree` (7)."""
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
    http_port = _free_port()
    server = {
        "host": LOOPBACK,
        "http_port": http_port,
        "grpc_port": _free_port(),
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
        yield url
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture
async def router(mlserver: str, tmp_path: Path) -> AsyncIterator[RunningRouter]:
    models = {
        "iris": {
            "salt": "iris",
            "versions": {
                "v1": {"url": mlserver, "upstream_model": "iris-linear", "upstream_version": "v1"},
                "v2": {"url": mlserver, "upstream_model": "iris-tree"},
            },
            "split": {"v1": 50, "v2": 50},
            "prediction": "/outputs/0/data/0",
        }
    }
    async with router_running(models, tmp_path) as running:
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


async def test_tritonclient_reaches_mlserver_through_the_split_and_the_pins(
    router: RunningRouter,
) -> None:
    expected = {"v1": (2, "iris-linear"), "v2": (1, "iris-tree")}
    users = [f"user-{i}" for i in range(12)]
    for user in users:
        version = "v1" if bucket(user, "iris") < 5000 else "v2"
        label, answer = await asyncio.to_thread(infer, router.url, user=user)
        assert (label, answer["model_name"]) == expected[version], user
    for version in ("v1", "v2"):
        label, answer = await asyncio.to_thread(infer, router.url, version)
        assert (label, answer["model_name"]) == expected[version]
    await router.router.stop()
    records = router.records()
    assert len(records) == len(users) + 2
    for record in records:
        assert record["status"] == 200
        assert record["protocol"] == "oip"
        assert record["response"] == {"prediction": expected[record["version"]][0]}
    assert {r["version"] for r in records[: len(users)]} == {"v1", "v2"}


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

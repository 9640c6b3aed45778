"""The example backends' Open Inference Protocol, called with tritonclient.http on loopback.

tritonclient.http is synchronous (geventhttpclient), so each session runs in a worker
thread while the backend serves on the test's event loop.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, TypeVar

import aiohttp
import numpy as np
import pytest
import tritonclient.http as httpclient
from pytest_aiohttp import AiohttpServer
from tritonclient.utils import InferenceServerException

from backends.app import VERSION_HEADER, Faults, create_app
from backends.model import VERSIONS, Classifier, predict, sample_rows, train
from backends.stack import tritonclient_example
from tests.support.running import serve
from tests.support.triton import session as triton_session

T = TypeVar("T")
ROWS = sample_rows(20)
FEATURES = np.array([features for features, _label in ROWS], dtype=np.float64)


@pytest.fixture(scope="module")
def models() -> dict[str, Classifier]:
    return {version: train(version) for version in VERSIONS}


async def session(address: str, calls: Callable[[Any], T]) -> T:
    return await triton_session(httpclient, address, calls)


def infer_input(rows: Any, datatype: str = "FP64") -> Any:
    tensor = httpclient.InferInput("input-0", list(rows.shape), datatype)
    tensor.set_data_from_numpy(rows, binary_data=False)
    return tensor


def json_outputs(*names: str) -> list[Any]:
    return [httpclient.InferRequestedOutput(name, binary_data=False) for name in names]


@pytest.mark.parametrize("version", VERSIONS)
async def test_infer_agrees_with_predict(
    version: str, models: dict[str, Classifier], aiohttp_server: AiohttpServer
) -> None:
    url = await serve(aiohttp_server, create_app(version, models[version]))

    def infer(client: Any) -> Any:
        outputs = json_outputs("predict", "probability")
        return client.infer("cancer", [infer_input(FEATURES)], outputs=outputs, request_id="r-1")

    result = await session(url, infer)
    answer = result.get_response()
    assert answer["model_name"] == "cancer"
    assert answer["model_version"] == version
    assert answer["id"] == "r-1"
    assert [o["name"] for o in answer["outputs"]] == ["predict", "probability"]
    assert [o["datatype"] for o in answer["outputs"]] == ["INT64", "FP64"]
    assert [o["shape"] for o in answer["outputs"]] == [[20], [20]]
    labels, probabilities = result.as_numpy("predict"), result.as_numpy("probability")
    assert labels.dtype == np.int64
    for i, (features, _label) in enumerate(ROWS):
        single = predict(models[version], version, features)
        assert labels[i] == single["prediction"]
        if "probability" in single:
            assert probabilities[i] == single["probability"]
    # The router's `prediction: /outputs/0/data/0` finds the first row's label.
    assert answer["outputs"][0]["data"][0] == labels[0]


async def test_fp32_and_no_requested_outputs(
    models: dict[str, Classifier], aiohttp_server: AiohttpServer
) -> None:
    url = await serve(aiohttp_server, create_app("v1", models["v1"]))

    def infer(client: Any) -> Any:
        # No outputs named: tritonclient asks for binary outputs; they come as JSON.
        return client.infer("cancer", [infer_input(FEATURES[:3].astype(np.float32), "FP32")])

    result = await session(url, infer)
    answer = result.get_response()
    assert "id" not in answer
    assert [o["name"] for o in answer["outputs"]] == ["predict", "probability"]
    expected = [predict(models["v1"], "v1", f)["prediction"] for f, _ in ROWS[:3]]
    assert result.as_numpy("predict").tolist() == expected


async def test_health_metadata_and_ready_through_tritonclient(
    models: dict[str, Classifier], aiohttp_server: AiohttpServer
) -> None:
    url = await serve(aiohttp_server, create_app("v2", models["v2"], name="breast-cancer"))

    def calls(client: Any) -> tuple[Any, ...]:
        return (
            client.is_server_live(),
            client.is_server_ready(),
            client.is_model_ready("breast-cancer"),
            client.is_model_ready("breast-cancer", "v2"),
            client.is_model_ready("cancer"),
            client.is_model_ready("breast-cancer", "v1"),
            client.get_model_metadata("breast-cancer", "v2"),
        )

    live, ready, model_ready, pinned_ready, other, other_version, metadata = await session(
        url, calls
    )
    assert (live, ready, model_ready, pinned_ready) == (True, True, True, True)
    assert (other, other_version) == (False, False)
    assert metadata == {
        "name": "breast-cancer",
        "versions": ["v2"],
        "platform": "scikit-learn",
        "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [-1, 30]}],
        "outputs": [
            {"name": "predict", "datatype": "INT64", "shape": [-1]},
            {"name": "probability", "datatype": "FP64", "shape": [-1]},
        ],
    }


async def test_a_pinned_version_is_served_only_if_it_is_this_one(
    models: dict[str, Classifier], aiohttp_server: AiohttpServer
) -> None:
    url = await serve(aiohttp_server, create_app("v3", models["v3"]))

    def calls(client: Any) -> tuple[Any, str]:
        pinned = client.infer("cancer", [infer_input(FEATURES[:1])], model_version="v3")
        with pytest.raises(InferenceServerException) as refused:
            client.infer("cancer", [infer_input(FEATURES[:1])], model_version="v1")
        return pinned.get_response(), str(refused.value)

    pinned, refused = await session(url, calls)
    assert pinned["model_version"] == "v3"
    assert refused.startswith("[404]")
    assert "has no version 'v1': this backend serves 'v3'" in refused


async def test_unknown_model_and_binary_data_show_the_backends_message(
    models: dict[str, Classifier], aiohttp_server: AiohttpServer
) -> None:
    url = await serve(aiohttp_server, create_app("v1", models["v1"]))

    def calls(client: Any) -> tuple[str, str]:
        with pytest.raises(InferenceServerException) as unknown:
            client.infer("llama", [infer_input(FEATURES[:1])])
        binary = httpclient.InferInput("input-0", [1, 30], "FP64")
        binary.set_data_from_numpy(FEATURES[:1], binary_data=True)
        with pytest.raises(InferenceServerException) as refused:
            client.infer("cancer", [binary])
        return str(unknown.value), str(refused.value)

    unknown, refused = await session(url, calls)
    assert unknown == "[404] model 'llama' not found: this backend serves 'cancer'"
    assert refused.startswith("[400] binary tensor data is not supported")
    assert "binary_data=False" in refused


def _body(data: Any = None, shape: Any = None, datatype: Any = "FP64", **extra: Any) -> Any:
    tensor = {"name": "input-0", "datatype": datatype, "shape": shape or [1, 30]}
    tensor["data"] = FEATURES[0].tolist() if data is None else data
    return {"inputs": [tensor], **extra}


async def test_nested_data_is_read_row_major(
    models: dict[str, Classifier], aiohttp_server: AiohttpServer
) -> None:
    url = await serve(aiohttp_server, create_app("v2", models["v2"])) + "/v2/models/cancer/infer"
    nested = FEATURES[:4].tolist()
    flat = FEATURES[:4].reshape(-1).tolist()
    answers = []
    async with aiohttp.ClientSession() as http:
        for data in (nested, flat):
            async with http.post(url, json=_body(data, [4, 30])) as response:
                assert response.status == 200
                answers.append(await response.json())
    assert answers[0] == answers[1]
    assert answers[0]["outputs"][0]["shape"] == [4]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"not json", "the request body must be JSON"),
        (b"[1]", "must be a JSON object"),
        (b"{}", '"inputs" must be a list of one input'),
        (_body(datatype="INT64"), "datatype must be FP32 or FP64, got 'INT64'"),
        (_body(shape=[1, 29]), "shape must be [n, 30], got [1, 29]"),
        (_body(shape=[30]), "shape must be [n, 30], got [30]"),
        (_body(shape=[True, 30]), "shape must be [n, 30]"),
        (_body(data=[1.0] * 29), "data holds 29 numbers; shape [1, 30] needs 30"),
        (_body(data="1,2"), "data must be a list of numbers"),
        (_body(data=[None] * 30), "data[0] must be a finite number, got None"),
        (_body(data=[1.0] * 29 + [True]), "data[29] must be a finite number, got True"),
        (_body(data=[1.0] * 29 + [10**400]), "data[29] must be a finite number"),
        (_body(outputs=[{"name": "logits"}]), '"outputs" must name some of predict, probability'),
        (_body(outputs=7), '"outputs" must name some of'),
        (_body(outputs=[]), '"outputs" must name some of'),
    ],
    ids=[
        "not-json",
        "array",
        "no-inputs",
        "int64",
        "29-columns",
        "one-dimension",
        "bool-in-shape",
        "too-few-numbers",
        "data-string",
        "null",
        "true",
        "too-large",
        "unknown-output",
        "outputs-number",
        "no-outputs",
    ],
)
async def test_malformed_infer_requests_get_400_with_a_string_error(
    body: Any, expected: str, models: dict[str, Classifier], aiohttp_server: AiohttpServer
) -> None:
    url = await serve(aiohttp_server, create_app("v1", models["v1"])) + "/v2/models/cancer/infer"
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with aiohttp.ClientSession() as http, http.post(url, data=data) as response:
        assert response.status == 400
        assert response.headers[VERSION_HEADER] == "v1"
        answer = await response.json()
    assert set(answer) == {"error"}
    assert isinstance(answer["error"], str)
    assert expected in answer["error"]


async def test_faults_apply_to_infer(
    models: dict[str, Classifier], aiohttp_server: AiohttpServer
) -> None:
    url = await serve(aiohttp_server, create_app("v2", models["v2"], Faults(fail_rate=1.0)))

    def calls(client: Any) -> str:
        with pytest.raises(InferenceServerException) as failed:
            client.infer("cancer", [infer_input(FEATURES[:1])])
        return str(failed.value)

    assert await session(url, calls) == "[500] v2: fails 100% of predictions with a 500"


async def test_the_snippet_make_run_prints_works(
    models: dict[str, Classifier], aiohttp_server: AiohttpServer, capsys: pytest.CaptureFixture[str]
) -> None:
    url = await serve(aiohttp_server, create_app("v2", models["v2"]))
    code = "\n".join(tritonclient_example(url))
    await asyncio.to_thread(exec, code, {})
    expected = predict(models["v2"], "v2", ROWS[0][0])["prediction"]
    assert capsys.readouterr().out == f"v2 [{expected}]\n"

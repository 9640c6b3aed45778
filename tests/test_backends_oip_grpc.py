"""The example backends' Open Inference Protocol over gRPC (backends/oip_grpc.py), called
with tritonclient.grpc and with grpcio's own stubs on loopback.

tritonclient.grpc is synchronous, so each session runs in a worker thread while the backend
serves on the test's event loop.
"""

from __future__ import annotations

import asyncio
import queue
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeVar

import grpc
import grpc.aio
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from backends import oip_grpc
from backends.__main__ import parse_args
from backends.app import Faults, create_app
from backends.model import VERSIONS, Classifier, predict, sample_rows, train
from backends.stack import tritonclient_grpc_example
from tests.support.running import LOOPBACK
from tests.support.triton import session as triton_session
from tests.support.triton import triton

T = TypeVar("T")
ROWS = sample_rows(20)
FEATURES = np.array([features for features, _label in ROWS], dtype=np.float64)


@pytest.fixture(scope="module")
def models() -> dict[str, Classifier]:
    return {version: train(version) for version in VERSIONS}


@asynccontextmanager
async def backend(
    version: str, models: dict[str, Classifier], faults: Faults | None = None, name: str = "cancer"
) -> AsyncIterator[str]:
    """The backend's gRPC face on a free loopback port: its ``HOST:PORT``."""
    app = create_app(version, models[version], faults, name=name)
    async with oip_grpc.serving(app, LOOPBACK, 0) as port:
        yield f"{LOOPBACK}:{port}"


async def session(address: str, calls: Callable[[Any], T]) -> T:
    return await triton_session(grpcclient, address, calls)


def infer_input(rows: Any, datatype: str = "FP64") -> Any:
    tensor = grpcclient.InferInput("input-0", list(rows.shape), datatype)
    tensor.set_data_from_numpy(rows)  # raw_input_contents, as tritonclient.grpc sends
    return tensor


@pytest.mark.parametrize("version", VERSIONS)
async def test_infer_agrees_with_predict(version: str, models: dict[str, Classifier]) -> None:
    def infer(client: Any) -> Any:
        outputs = [grpcclient.InferRequestedOutput(n) for n in ("predict", "probability")]
        return client.infer("cancer", [infer_input(FEATURES)], outputs=outputs, request_id="r-1")

    async with backend(version, models) as address:
        result = await session(address, infer)
    answer = result.get_response()
    assert (answer.model_name, answer.model_version, answer.id) == ("cancer", version, "r-1")
    assert [(o.name, o.datatype, list(o.shape)) for o in answer.outputs] == [
        ("predict", "INT64", [20]),
        ("probability", "FP64", [20]),
    ]
    labels, probabilities = result.as_numpy("predict"), result.as_numpy("probability")
    assert labels.dtype == np.int64
    for i, (features, _label) in enumerate(ROWS):
        single = predict(models[version], version, features)
        assert labels[i] == single["prediction"]
        if "probability" in single:
            assert probabilities[i] == single["probability"]


async def test_fp32_raw_and_typed_contents_give_the_same_answer(
    models: dict[str, Classifier],
) -> None:
    rows = FEATURES[:3].astype(np.float32)
    tensor = service_pb2.ModelInferRequest.InferInputTensor
    raw = service_pb2.ModelInferRequest(
        model_name="cancer",
        inputs=[tensor(name="input-0", datatype="FP32", shape=[3, 30])],
        raw_input_contents=[rows.tobytes()],
    )
    typed = service_pb2.ModelInferRequest(
        model_name="cancer",
        inputs=[
            tensor(
                name="input-0",
                datatype="FP32",
                shape=[3, 30],
                contents=service_pb2.InferTensorContents(fp32_contents=rows.ravel().tolist()),
            )
        ],
        outputs=[service_pb2.ModelInferRequest.InferRequestedOutputTensor(name="predict")],
    )
    async with backend("v1", models) as address, grpc.aio.insecure_channel(address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        both = await stub.ModelInfer(raw)
        one = await stub.ModelInfer(typed)
    assert [o.name for o in both.outputs] == ["predict", "probability"]
    assert [o.name for o in one.outputs] == ["predict"]
    assert one.raw_output_contents[0] == both.raw_output_contents[0]
    labels = np.frombuffer(one.raw_output_contents[0], dtype="<i8").tolist()
    assert labels == [predict(models["v1"], "v1", f)["prediction"] for f, _ in ROWS[:3]]


async def test_server_and_model_calls(models: dict[str, Classifier]) -> None:
    def calls(client: Any) -> tuple[Any, ...]:
        return (
            client.is_server_live(),
            client.is_server_ready(),
            client.get_server_metadata().name,
            client.is_model_ready("breast-cancer"),
            client.is_model_ready("breast-cancer", "v2"),
            client.get_model_metadata("breast-cancer", "v2", as_json=True),
        )

    async with backend("v2", models, name="breast-cancer") as address:
        live, ready, server, model_ready, pinned, metadata = await session(address, calls)
    assert (live, ready, server, model_ready, pinned) == (
        True,
        True,
        "model-router-example-backend",
        True,
        True,
    )
    assert metadata == {
        "name": "breast-cancer",
        "versions": ["v2"],
        "platform": "scikit-learn",
        "inputs": [{"name": "input-0", "datatype": "FP64", "shape": ["-1", "30"]}],
        "outputs": [
            {"name": "predict", "datatype": "INT64", "shape": ["-1"]},
            {"name": "probability", "datatype": "FP64", "shape": ["-1"]},
        ],
    }


def _refusal(call: Callable[[], Any]) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value.status(), caught.value.message()


async def test_unknown_models_and_versions_are_not_found(models: dict[str, Classifier]) -> None:
    def calls(client: Any) -> list[tuple[str, str]]:
        row = [infer_input(FEATURES[:1])]
        return [
            _refusal(lambda: client.infer("llama", row)),
            _refusal(lambda: client.infer("cancer", row, model_version="v1")),
            _refusal(lambda: client.get_model_metadata("llama")),
            _refusal(lambda: client.is_model_ready("cancer", "v9")),
        ]

    async with backend("v3", models) as address:
        refusals = await session(address, calls)
    not_found = "StatusCode.NOT_FOUND"
    assert refusals[:3] == [
        (not_found, "model 'llama' not found: this backend serves 'cancer'"),
        (not_found, "model 'cancer' has no version 'v1': this backend serves 'v3'"),
        (not_found, "model 'llama' not found: this backend serves 'cancer'"),
    ]
    assert refusals[3][0] == not_found


def _request(**fields: Any) -> Any:
    tensor = {"name": "input-0", "datatype": "FP64", "shape": [1, 30], **fields.pop("tensor", {})}
    raw = fields.pop("raw", [FEATURES[0].tobytes()])
    return service_pb2.ModelInferRequest(
        model_name="cancer",
        inputs=[service_pb2.ModelInferRequest.InferInputTensor(**tensor)],
        raw_input_contents=raw,
        **fields,
    )


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (_request(tensor={"datatype": "INT64"}), "datatype must be FP32 or FP64, got 'INT64'"),
        (_request(tensor={"shape": [1, 29]}), "shape must be [n, 30], got [1, 29]"),
        (_request(tensor={"shape": [30]}), "shape must be [n, 30], got [30]"),
        (_request(raw=[b"\0" * 8 * 29]), "holds 29 numbers; shape [1, 30] needs 30"),
        (_request(raw=[b"\0" * 7]), "not a whole number of FP64 values"),
        (_request(raw=[], tensor={"shape": [1, 30]}), "holds 0 numbers"),
        (_request(raw=[np.full(30, np.nan).tobytes()]), "inputs[0][0] must be a finite number"),
        (
            _request(outputs=[{"name": "logits"}]),
            "outputs must name some of predict, probability, got ['logits']",
        ),
    ],
    ids=[
        "int64",
        "29-columns",
        "one-dimension",
        "too-few",
        "ragged-bytes",
        "no-data",
        "nan",
        "unknown-output",
    ],
)
async def test_malformed_infer_requests_are_invalid_argument(
    request_: Any, expected: str, models: dict[str, Classifier]
) -> None:
    async with backend("v1", models) as address, grpc.aio.insecure_channel(address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ModelInfer(request_)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in (caught.value.details() or "")


def stream(client: Any, requests: list[tuple[str, Any]]) -> list[tuple[Any, Any]]:
    """Send ``(model, rows)`` on one ModelStreamInfer call; the (result, error) of each."""
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for i, (model, rows) in enumerate(requests):
            client.async_stream_infer(model, [infer_input(rows)], request_id=str(i))
        return [answers.get(timeout=30) for _ in requests]
    finally:
        client.stop_stream()


async def test_model_stream_infer_answers_each_request_in_order(
    models: dict[str, Classifier],
) -> None:
    requests = [("cancer", FEATURES[i : i + 1]) for i in range(5)]
    requests.insert(2, ("llama", FEATURES[:1]))  # an error in the middle: the stream goes on

    async with backend("v2", models) as address:
        answers = await session(address, lambda client: stream(client, requests))
    errors = [str(error) if error else None for _, error in answers]
    assert (
        errors == [None, None, "model 'llama' not found: this backend serves 'cancer'"] + [None] * 3
    )
    results = [result for result, error in answers if error is None]
    assert [r.get_response().id for r in results] == ["0", "1", "3", "4", "5"]
    labels = [int(r.as_numpy("predict")[0]) for r in results]
    assert labels == [predict(models["v2"], "v2", f)["prediction"] for f, _ in ROWS[:5]]


async def test_faults_apply_to_grpc_infer(
    models: dict[str, Classifier],
) -> None:
    app = create_app("v2", models["v2"], Faults(fail_rate=1.0))
    async with oip_grpc.serving(app, LOOPBACK, 0) as port:
        refusal = await session(
            f"{LOOPBACK}:{port}",
            lambda c: _refusal(lambda: c.infer("cancer", [infer_input(FEATURES[:1])])),
        )
    assert refusal == ("StatusCode.INTERNAL", "v2: fails 100% of predictions with a 500")


def test_the_command_line_takes_a_grpc_port() -> None:
    assert parse_args(["--version", "v1", "--port", "9001"]).grpc_port == 0
    assert (
        parse_args(["--version", "v1", "--port", "9001", "--grpc-port", "9011"]).grpc_port == 9011
    )
    for bad in ("-1", "65536", "x"):
        with pytest.raises(SystemExit):
            parse_args(["--version", "v1", "--port", "9001", "--grpc-port", bad])


def _run_backend(*argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "backends", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _infer_first_row(address: str) -> Any:
    with triton(grpcclient, address) as client:
        return client.infer("cancer", [infer_input(FEATURES[:1])]).get_response()


async def test_python_m_backends_serves_grpc_beside_http(models: dict[str, Classifier]) -> None:
    http_port, grpc_port = free_port(), free_port()
    proc = _run_backend("--version", "v1", "--port", str(http_port), "--grpc-port", str(grpc_port))
    try:
        assert proc.stdout is not None
        line = await asyncio.to_thread(proc.stdout.readline)
        assert line == (
            f"backend v1 listening on http://{LOOPBACK}:{http_port} "
            f"and grpc {LOOPBACK}:{grpc_port}\n"
        )
        answer = await asyncio.to_thread(_infer_first_row, f"{LOOPBACK}:{grpc_port}")
        assert (answer.model_name, answer.model_version) == ("cancer", "v1")
        proc.terminate()
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        _, stderr = await asyncio.to_thread(proc.communicate)
    assert "Traceback" not in stderr


async def test_a_taken_grpc_port_is_said_and_exits_1() -> None:
    with grpc_port_taken() as taken:
        proc = _run_backend(
            "--version", "v1", "--port", str(free_port()), "--grpc-port", str(taken)
        )
        _, stderr = await asyncio.to_thread(proc.communicate, timeout=60)
    assert proc.returncode == 1
    assert f"backend v1 cannot listen on gRPC on {LOOPBACK}:{taken}" in stderr
    assert "pass another --grpc-port" in stderr
    assert "Traceback" not in stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def grpc_port_taken() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind((LOOPBACK, 0))
        holder.listen()
        port: int = holder.getsockname()[1]
        yield port


async def test_the_grpc_snippet_make_run_prints_works(
    models: dict[str, Classifier], capsys: pytest.CaptureFixture[str]
) -> None:
    async with backend("v2", models) as address:
        code = "\n".join(tritonclient_grpc_example(address))
        await asyncio.to_thread(exec, code, {})
    expected = predict(models["v2"], "v2", ROWS[0][0])["prediction"]
    assert capsys.readouterr().out == f"v2 [{expected}]\n"

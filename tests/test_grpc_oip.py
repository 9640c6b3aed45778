"""tritonclient.grpc through the router (contract section 12) in front of two example
backends serving the Open Inference Protocol over gRPC (backends/oip_grpc.py) under
different model names: the split by `x-user-id`, sticky users, pins by model_version,
rules on metadata, ModelStreamInfer routed once and rewritten message by message, the
fallback of a unary ModelInfer, and one record per call.

tritonclient.grpc is synchronous: each session runs in a worker thread while the backends
and the router serve on the test's event loop.
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from backends import oip_grpc
from backends.app import create_app
from backends.model import Classifier, predict, sample_rows, train
from router.routing.choose import bucket
from tests.support.running import LOOPBACK, RunningRouter, dead_url, router_running
from tests.support.triton import triton

T = TypeVar("T")
SALT = "grpc-oip"
UPSTREAM = {"v1": "cancer-linear", "v2": "cancer-boosted"}  # each backend's model name
ROWS = sample_rows(8)
FEATURES = np.array([features for features, _label in ROWS], dtype=np.float64)
INFER = "/inference.GRPCInferenceService/ModelInfer"
STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"


@pytest.fixture(scope="module")
def models() -> dict[str, Classifier]:
    return {version: train(version) for version in UPSTREAM}


def assigned(user: str) -> str:
    return "v1" if bucket(user, SALT) < 5000 else "v2"


def users_of(version: str, n: int) -> list[str]:
    """The first ``n`` users the split gives ``version``."""
    found = (f"user-{i}" for i in range(10_000))
    return [user for user in found if assigned(user) == version][:n]


def cancer(addresses: dict[str, str], **extra: Any) -> dict[str, Any]:
    """Model `cancer` over the two backends, half the users each."""
    return {
        "cancer": {
            "salt": SALT,
            "versions": {
                name: {"grpc_url": address, "upstream_model": UPSTREAM[name]}
                for name, address in addresses.items()
            },
            "split": {"v1": 50, "v2": 50},
            **extra,
        }
    }


class Stack:
    def __init__(self, running: RunningRouter, models: dict[str, Classifier]) -> None:
        self.running = running
        self.address = f"{LOOPBACK}:{running.router.grpc_port}"
        self.models = models

    async def session(self, calls: Callable[[Any], T]) -> T:
        """Run ``calls(client)`` with a tritonclient.grpc client of the router, in a thread."""

        def run() -> T:
            with triton(grpcclient, self.address) as client:
                return calls(client)

        return await asyncio.to_thread(run)

    async def records(self) -> list[dict[str, Any]]:
        """The `request` records, once the router has stopped (and flushed its log)."""
        await self.running.router.stop()
        return self.running.records()

    def labels(self, version: str, rows: Any) -> list[int]:
        return [predict(self.models[version], version, list(row))["prediction"] for row in rows]


async def start(
    exits: AsyncExitStack, models: dict[str, Classifier], tmp_path: Path, **extra: Any
) -> Stack:
    """Both backends on free ports, the router in front; `extra` goes into the model."""
    addresses = {}
    for version, name in UPSTREAM.items():
        app = create_app(version, models[version], name=name)
        port = await exits.enter_async_context(oip_grpc.serving(app, LOOPBACK, 0))
        addresses[version] = f"{LOOPBACK}:{port}"
    addresses.update(extra.pop("addresses", {}))
    running = await exits.enter_async_context(
        router_running(cancer(addresses, **extra), tmp_path, grpc_listen=f"{LOOPBACK}:0")
    )
    return Stack(running, models)


@pytest.fixture
async def stack(models: dict[str, Classifier], tmp_path: Path) -> AsyncIterator[Stack]:
    async with AsyncExitStack() as exits:
        yield await start(exits, models, tmp_path)


def row_input(rows: Any) -> list[Any]:
    tensor = grpcclient.InferInput("input-0", list(rows.shape), "FP64")
    tensor.set_data_from_numpy(rows)
    return [tensor]


def infer(
    client: Any, rows: Any, version: str = "", headers: dict[str, str] | None = None
) -> tuple[str, str, list[int]]:
    """(model_name, model_version, labels) of one ModelInfer through the router."""
    result = client.infer("cancer", row_input(rows), model_version=version, headers=headers)
    answer = result.get_response()
    return answer.model_name, answer.model_version, result.as_numpy("predict").tolist()


def expected(stack: Stack, version: str, rows: Any) -> tuple[str, str, list[int]]:
    return UPSTREAM[version], version, stack.labels(version, rows)


async def test_the_split_by_user_id_holds_and_users_stick(stack: Stack) -> None:
    users = users_of("v1", 4) + users_of("v2", 4)

    def calls(client: Any) -> list[tuple[str, str, list[int]]]:
        return [
            infer(client, FEATURES[i : i + 2], headers={"x-user-id": user})
            for i, user in enumerate(users)
            for _ in range(3)  # the same user, three times: the same version every time
        ]

    answers = await stack.session(calls)
    for i, user in enumerate(users):
        version = assigned(user)
        want = expected(stack, version, FEATURES[i : i + 2])
        assert answers[3 * i : 3 * i + 3] == [want] * 3, user
    records = await stack.records()
    assert len(records) == 3 * len(users)
    for record, user in zip(records, (u for u in users for _ in range(3)), strict=True):
        assert record["protocol"] == "grpc"
        assert (record["path"], record["method"]) == (INFER, "POST")
        assert (record["grpc_status"], record["status"], record["outcome"]) == ("OK", 200, "ok")
        assert (record["version"], record["assigned_by"]) == (assigned(user), "split")
        assert record["bucket"] == bucket(user, SALT)


async def test_model_version_pins_and_an_unknown_one_is_not_found(stack: Stack) -> None:
    user = users_of("v1", 1)[0]

    def calls(client: Any) -> tuple[Any, ...]:
        pinned = infer(client, FEATURES[:1], "v2", headers={"x-user-id": user})
        with pytest.raises(InferenceServerException) as unknown:
            infer(client, FEATURES[:1], "v9")
        ready = client.is_model_ready("cancer", "v2")
        metadata = client.get_model_metadata("cancer", "v1")
        return pinned, unknown.value, ready, metadata.name, metadata.versions

    pinned, unknown, ready, name, versions = await stack.session(calls)
    assert pinned == expected(stack, "v2", FEATURES[:1])
    assert unknown.status() == "StatusCode.NOT_FOUND"
    assert "no version 'v9'" in unknown.message()
    # Model calls reach the version's backend, under its own name.
    assert (ready, name, list(versions)) == (True, "cancer-linear", ["v1"])
    records = await stack.records()
    by_path = [(r["path"].rpartition("/")[2], r["version"], r["grpc_status"]) for r in records]
    assert by_path == [
        ("ModelInfer", "v2", "OK"),
        ("ModelInfer", None, "NOT_FOUND"),
        ("ModelReady", "v2", "OK"),
        ("ModelMetadata", "v1", "OK"),
    ]
    assert [r["assigned_by"] for r in (records[0], records[2], records[3])] == ["pinned"] * 3
    assert records[1]["outcome"] == "rejected"  # the router refused it (section 5)


def stream(client: Any, user: str, rows: Any, first_version: str = "") -> list[Any]:
    """ModelStreamInfer: one request per row on one call (the first pinned to
    ``first_version`` if given); the answers, in order."""
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(
        lambda result, error: answers.put((result, error)), headers={"x-user-id": user}
    )
    try:
        for i in range(len(rows)):
            version = first_version if i == 0 else ""
            client.async_stream_infer(
                "cancer", row_input(rows[i : i + 1]), model_version=version, request_id=str(i)
            )
        got = [answers.get(timeout=30) for _ in range(len(rows))]
    finally:
        client.stop_stream()
    assert [error for _, error in got] == [None] * len(rows)
    return [result for result, _ in got]


async def test_model_stream_infer_is_routed_once_and_every_message_rewritten(
    stack: Stack,
) -> None:
    one, two = users_of("v1", 1)[0], users_of("v2", 1)[0]

    def calls(client: Any) -> list[list[Any]]:
        return [
            stream(client, one, FEATURES[:4]),
            stream(client, two, FEATURES[4:8]),
            stream(client, one, FEATURES[:3], first_version="v2"),  # pinned by its first message
        ]

    streams = await stack.session(calls)
    for results, version, rows in zip(
        streams, ("v1", "v2", "v2"), (FEATURES[:4], FEATURES[4:8], FEATURES[:3]), strict=True
    ):
        answers = [r.get_response() for r in results]
        # Every message, not only the first, reached the version's backend under its name.
        assert [a.model_name for a in answers] == [UPSTREAM[version]] * len(rows)
        assert [a.model_version for a in answers] == [version] * len(rows)
        assert [a.id for a in answers] == [str(i) for i in range(len(rows))]
        labels = [int(r.as_numpy("predict")[0]) for r in results]
        assert labels == stack.labels(version, rows)
    records = await stack.records()
    assert [(r["path"], r["version"], r["assigned_by"]) for r in records] == [
        (STREAM, "v1", "split"),
        (STREAM, "v2", "split"),
        (STREAM, "v2", "pinned"),
    ]
    assert {(r["protocol"], r["grpc_status"], r["outcome"]) for r in records} == {
        ("grpc", "OK", "ok")
    }


async def test_a_unary_infer_falls_back_when_the_versions_grpc_backend_is_down(
    models: dict[str, Classifier], tmp_path: Path
) -> None:
    dead = dead_url().removeprefix("http://")
    async with AsyncExitStack() as exits:
        stack = await start(exits, models, tmp_path, addresses={"v1": dead}, fallback="v2")
        user = users_of("v1", 1)[0]

        def calls(client: Any) -> tuple[Any, Any]:
            answer = infer(client, FEATURES[:2], headers={"x-user-id": user})
            with pytest.raises(InferenceServerException) as pinned:  # pinned: no fallback
                infer(client, FEATURES[:2], "v1")
            return answer, pinned.value

        answer, pinned = await stack.session(calls)
        assert answer == expected(stack, "v2", FEATURES[:2])
        assert pinned.status() == "StatusCode.UNAVAILABLE"
        fallen, refused = await stack.records()
    assert (fallen["assigned_version"], fallen["version"]) == ("v1", "v2")
    assert (fallen["grpc_status"], fallen["outcome"], fallen["path"]) == ("OK", "ok", INFER)
    assert (refused["grpc_status"], refused["outcome"]) == ("UNAVAILABLE", "unavailable")


async def test_a_rule_on_metadata_sends_its_callers_to_v2(
    models: dict[str, Classifier], tmp_path: Path
) -> None:
    rules = [{"match": {"header": {"x-beta": "yes"}}, "version": "v2"}]
    async with AsyncExitStack() as exits:
        stack = await start(exits, models, tmp_path, rules=rules)
        user = users_of("v1", 1)[0]

        def calls(client: Any) -> list[tuple[str, str, list[int]]]:
            return [
                infer(client, FEATURES[:1], headers={"x-user-id": user, "x-beta": "yes"}),
                infer(client, FEATURES[:1], headers={"x-user-id": user, "x-beta": "no"}),
            ]

        beta, plain = await stack.session(calls)
        assert beta == expected(stack, "v2", FEATURES[:1])
        assert plain == expected(stack, "v1", FEATURES[:1])
        records = await stack.records()
    assert [(r["version"], r["assigned_by"]) for r in records] == [("v2", "rule"), ("v1", "split")]


async def test_the_backends_own_errors_pass_through(stack: Stack) -> None:
    user = users_of("v2", 1)[0]
    narrow = np.zeros((1, 29))  # 29 features: the backend refuses it, not the router

    def calls(client: Any) -> tuple[Any, list[tuple[Any, Any]]]:
        with pytest.raises(InferenceServerException) as refused:
            infer(client, narrow, headers={"x-user-id": user})
        answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
        client.start_stream(
            lambda result, error: answers.put((result, error)), headers={"x-user-id": user}
        )
        try:
            for rows in (FEATURES[:1], narrow, FEATURES[1:2]):
                client.async_stream_infer("cancer", row_input(rows))
            got = [answers.get(timeout=30) for _ in range(3)]
        finally:
            client.stop_stream()
        return refused.value, got

    refused, got = await stack.session(calls)
    assert refused.status() == "StatusCode.INVALID_ARGUMENT"
    assert "inputs[0].shape must be [n, 30], got [1, 29]" in refused.message()
    # In a stream, Triton's shape: the error is a message, and the stream goes on.
    assert [error is None for _, error in got] == [True, False, True]
    assert "got [1, 29]" in str(got[1][1])
    assert [r.get_response().model_name for r, _ in (got[0], got[2])] == ["cancer-boosted"] * 2
    unary, streamed = await stack.records()
    assert (unary["grpc_status"], unary["outcome"], unary["version"]) == (
        "INVALID_ARGUMENT",
        "client_error",
        "v2",
    )
    assert (streamed["path"], streamed["grpc_status"]) == (STREAM, "OK")

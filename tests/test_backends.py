"""The example backends, served for real on loopback ports and called over HTTP."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient
from sklearn.ensemble import RandomForestClassifier

from backends.__main__ import parse_args
from backends.app import VERSION_HEADER, Faults, create_app
from backends.model import FOREST_TREES, VERSIONS, Classifier, sample_rows, train

FIRST_ROW = sample_rows(1)[0][0]

Client = TestClient[web.Request, web.Application]


@pytest.fixture(scope="module")
def models() -> dict[str, Classifier]:
    """Train each version once per module; servers are per test (the loop is per test)."""
    return {version: train(version) for version in VERSIONS}


@pytest.fixture(params=VERSIONS)
async def backend(
    request: pytest.FixtureRequest, models: dict[str, Classifier], aiohttp_client: AiohttpClient
) -> tuple[str, Client]:
    """(version, a client of that version's backend served on loopback) for each in turn."""
    version: str = request.param
    return version, await aiohttp_client(create_app(version, models[version]))


async def post_predict(client: Client, features: Any) -> tuple[int, dict[str, Any], str | None]:
    async with client.post("/predict", json={"features": features}) as response:
        return response.status, await response.json(), response.headers.get(VERSION_HEADER)


async def test_v1_answers_only_a_prediction(
    models: dict[str, Classifier], aiohttp_client: AiohttpClient
) -> None:
    client = await aiohttp_client(create_app("v1", models["v1"]))
    status, body, version = await post_predict(client, FIRST_ROW)
    assert status == 200
    assert version == "v1"
    assert set(body) == {"prediction"}
    assert body["prediction"] in (0, 1)
    assert type(body["prediction"]) is int


@pytest.mark.parametrize("name", ["v2", "v3"])
async def test_v2_and_v3_add_a_probability(
    name: str, models: dict[str, Classifier], aiohttp_client: AiohttpClient
) -> None:
    client = await aiohttp_client(create_app(name, models[name]))
    status, body, version = await post_predict(client, FIRST_ROW)
    assert status == 200
    assert version == name
    assert set(body) == {"prediction", "probability"}
    assert body["prediction"] in (0, 1)
    assert type(body["prediction"]) is int
    assert 0.0 <= body["probability"] <= 1.0
    assert body["probability"] == round(body["probability"], 4)
    # The probability is of class 1, so it sides with the prediction.
    assert (body["probability"] >= 0.5) == (body["prediction"] == 1)


def test_v3_is_a_seeded_random_forest(models: dict[str, Classifier]) -> None:
    forest = models["v3"]
    assert isinstance(forest, RandomForestClassifier)
    assert len(forest.estimators_) == FOREST_TREES
    # Trained again, in the same process, it answers the same to the last digit.
    features = [row for row, _label in sample_rows(50)]
    again = train("v3")
    assert (again.predict_proba(features) == forest.predict_proba(features)).all()


async def test_predictions_agree_with_the_true_labels(backend: tuple[str, Client]) -> None:
    _version, client = backend
    rows = sample_rows(50)
    answers = await asyncio.gather(*(post_predict(client, features) for features, _label in rows))
    assert all(status == 200 for status, _body, _header in answers)
    correct = sum(
        body["prediction"] == label
        for (_status, body, _header), (_features, label) in zip(answers, rows, strict=True)
    )
    assert correct >= 45, f"only {correct} of 50 predictions match the dataset's labels"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"not json", "request body must be JSON"),
        (b"", "request body must be JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b"{}", 'no "features"'),
        (json.dumps({"features": "1, 2, 3"}).encode(), "got a string"),
        (json.dumps({"features": FIRST_ROW[:29]}).encode(), "list of 30 numbers, got 29"),
        (json.dumps({"features": [*FIRST_ROW[:29], "0.1"]}).encode(), "features[29] must be"),
        (json.dumps({"features": [True, *FIRST_ROW[1:]]}).encode(), "features[0] must be"),
        (json.dumps({"features": [None, *FIRST_ROW[1:]]}).encode(), "features[0] must be"),
        (json.dumps({"features": [*FIRST_ROW[:29], float("nan")]}).encode(), "got NaN"),
        (json.dumps({"features": [*FIRST_ROW[:29], 10**400]}).encode(), "features[29] must be"),
    ],
    ids=[
        "not-json",
        "empty",
        "array",
        "no-features",
        "features-string",
        "29-numbers",
        "string-among-numbers",
        "true-as-feature",
        "null-as-feature",
        "nan",
        "too-large",
    ],
)
async def test_malformed_bodies_get_400(
    backend: tuple[str, Client], body: bytes, expected: str
) -> None:
    version, client = backend
    headers = {"Content-Type": "application/json"}
    async with client.post("/predict", data=body, headers=headers) as response:
        assert response.status == 400
        assert response.headers[VERSION_HEADER] == version
        answer = await response.json()
    assert set(answer) == {"error"}
    assert answer["error"]["code"] == "bad_request"
    assert expected in answer["error"]["message"]


async def test_health(backend: tuple[str, Client]) -> None:
    version, client = backend
    async with client.get("/health") as response:
        assert response.status == 200
        assert response.headers[VERSION_HEADER] == version
        assert await response.json() == {"status": "ok", "version": version}


async def test_unknown_paths_carry_the_version_header(backend: tuple[str, Client]) -> None:
    version, client = backend
    async with client.get("/nowhere") as response:
        assert response.status == 404
        assert response.headers[VERSION_HEADER] == version


def test_unknown_versions_are_refused_with_the_accepted_ones() -> None:
    with pytest.raises(ValueError, match="'v1', 'v2', 'v3'"):
        train("v4")
    with pytest.raises(ValueError, match="unknown model version 'latest'"):
        create_app("latest")


def test_sample_rows_start_at_the_first_row_and_mix_labels() -> None:
    rows = sample_rows(50)
    assert len(rows) == 50
    assert rows[0] == sample_rows(1)[0]
    assert all(len(features) == 30 for features, _label in rows)
    assert 10 <= sum(label for _features, label in rows) <= 40
    assert len(sample_rows(1000)) == 1000


async def _statuses(client: Client, n: int) -> list[int]:
    """The statuses of `n` valid predictions sent one after the other."""
    statuses = []
    for _ in range(n):
        async with client.post("/predict", json={"features": FIRST_ROW}) as response:
            statuses.append(response.status)
            await response.read()
    return statuses


async def test_no_faults_by_default(
    models: dict[str, Classifier], aiohttp_client: AiohttpClient
) -> None:
    assert not Faults()
    assert Faults().describe() == "no faults"
    client = await aiohttp_client(create_app("v2", models["v2"]))
    assert await _statuses(client, 50) == [200] * 50


async def test_fail_rate_answers_a_seeded_share_with_a_json_500(
    models: dict[str, Classifier], aiohttp_client: AiohttpClient
) -> None:
    faults = Faults(fail_rate=0.2, seed=3)
    first = await aiohttp_client(create_app("v2", models["v2"], faults))
    statuses = await _statuses(first, 400)
    assert set(statuses) == {200, 500}
    assert 0.12 <= statuses.count(500) / 400 <= 0.28
    # A second server with the same seed fails the same requests: runs repeat.
    again = await aiohttp_client(create_app("v2", models["v2"], faults))
    assert await _statuses(again, 400) == statuses
    other = await aiohttp_client(create_app("v2", models["v2"], Faults(0.2, seed=4)))
    assert await _statuses(other, 400) != statuses

    # The first failure of a fresh server with that seed comes at the same place.
    fresh = await aiohttp_client(create_app("v2", models["v2"], faults))
    await _statuses(fresh, statuses.index(500))
    async with fresh.post("/predict", json={"features": FIRST_ROW}) as response:
        assert response.status == 500
        assert response.headers[VERSION_HEADER] == "v2"
        assert response.content_type == "application/json"
        answer = await response.json()
    assert answer == {
        "error": {"code": "injected_fault", "message": "v2: fails 20% of predictions with a 500"}
    }


async def test_fail_rate_one_fails_every_prediction_but_not_bad_requests_or_health(
    models: dict[str, Classifier], aiohttp_client: AiohttpClient
) -> None:
    client = await aiohttp_client(create_app("v1", models["v1"], Faults(fail_rate=1.0)))
    assert await _statuses(client, 20) == [500] * 20
    async with client.post("/predict", data=b"not json") as response:
        assert response.status == 400
    async with client.get("/health") as response:
        assert response.status == 200


async def test_delay_ms_slows_every_predict_answer(
    models: dict[str, Classifier], aiohttp_client: AiohttpClient
) -> None:
    faults = Faults(delay_ms=150)
    assert faults.describe() == "answers 150 ms late"
    client = await aiohttp_client(create_app("v1", models["v1"], faults))
    loop = asyncio.get_running_loop()
    for body in ({"features": FIRST_ROW}, {"nothing": 1}):
        started = loop.time()
        async with client.post("/predict", json=body) as response:
            await response.read()
        assert loop.time() - started >= 0.15, body
    started = loop.time()
    async with client.get("/health") as response:
        assert response.status == 200
    assert loop.time() - started < 0.15  # /health is never delayed


@pytest.mark.parametrize(
    ("fail_rate", "delay_ms"),
    [(-0.1, 0.0), (1.5, 0.0), (math.nan, 0.0), (0.0, -1.0), (0.0, math.inf)],
)
def test_faults_out_of_range_are_refused(fail_rate: float, delay_ms: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        Faults(fail_rate, delay_ms)


def test_the_command_line_takes_the_fault_flags() -> None:
    args = parse_args(["--version", "v2", "--port", "9002"])
    assert (args.fail_rate, args.delay_ms, args.fault_seed) == (0.0, 0.0, 0)
    argv = ["--version", "v2", "--port", "9002", "--fail-rate", "0.05", "--delay-ms", "250"]
    args = parse_args([*argv, "--fault-seed", "7"])
    assert (args.fail_rate, args.delay_ms, args.fault_seed) == (0.05, 250.0, 7)
    for bad in (["--fail-rate", "5%"], ["--fail-rate", "1.01"], ["--delay-ms", "-3"]):
        with pytest.raises(SystemExit):
            parse_args(["--version", "v2", "--port", "9002", *bad])

"""The example backends, served for real on loopback ports and called over HTTP."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient
from sklearn.ensemble import RandomForestClassifier

from backends.app import VERSION_HEADER, create_app
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

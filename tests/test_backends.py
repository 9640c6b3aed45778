"""The example backends, served for real on loopback ports and called over HTTP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from backends.app import VERSION_HEADER, create_app
from backends.model import VERSIONS, Classifier, sample_rows, train

FIRST_ROW = sample_rows(1)[0][0]


@pytest.fixture(scope="module")
def models() -> dict[str, Classifier]:
    """Train each version once per module; servers are per test (the loop is per test)."""
    return {version: train(version) for version in VERSIONS}


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """Serve ``app`` on a free loopback port and yield its base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture(params=VERSIONS)
async def backend(
    request: pytest.FixtureRequest, models: dict[str, Classifier]
) -> AsyncIterator[tuple[str, str]]:
    """(version, base URL) for each version in turn."""
    version: str = request.param
    async with serving(create_app(version, models[version])) as url:
        yield version, url


async def post_predict(
    session: aiohttp.ClientSession, url: str, features: Any
) -> tuple[int, dict[str, Any], str | None]:
    async with session.post(f"{url}/predict", json={"features": features}) as response:
        return response.status, await response.json(), response.headers.get(VERSION_HEADER)


async def test_v1_answers_only_a_prediction(
    models: dict[str, Classifier], session: aiohttp.ClientSession
) -> None:
    async with serving(create_app("v1", models["v1"])) as url:
        status, body, version = await post_predict(session, url, FIRST_ROW)
    assert status == 200
    assert version == "v1"
    assert set(body) == {"prediction"}
    assert body["prediction"] in (0, 1)
    assert type(body["prediction"]) is int


async def test_v2_adds_a_probability(
    models: dict[str, Classifier], session: aiohttp.ClientSession
) -> None:
    async with serving(create_app("v2", models["v2"])) as url:
        status, body, version = await post_predict(session, url, FIRST_ROW)
    assert status == 200
    assert version == "v2"
    assert set(body) == {"prediction", "probability"}
    assert body["prediction"] in (0, 1)
    assert type(body["prediction"]) is int
    assert 0.0 <= body["probability"] <= 1.0
    assert body["probability"] == round(body["probability"], 4)
    # The probability is of class 1, so it sides with the prediction.
    assert (body["probability"] >= 0.5) == (body["prediction"] == 1)


async def test_predictions_agree_with_the_true_labels(
    backend: tuple[str, str], session: aiohttp.ClientSession
) -> None:
    _version, url = backend
    rows = sample_rows(50)
    answers = await asyncio.gather(
        *(post_predict(session, url, features) for features, _label in rows)
    )
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
    backend: tuple[str, str], session: aiohttp.ClientSession, body: bytes, expected: str
) -> None:
    version, url = backend
    headers = {"Content-Type": "application/json"}
    async with session.post(f"{url}/predict", data=body, headers=headers) as response:
        assert response.status == 400
        assert response.headers[VERSION_HEADER] == version
        answer = await response.json()
    assert set(answer) == {"error"}
    assert answer["error"]["code"] == "bad_request"
    assert expected in answer["error"]["message"]


async def test_health(backend: tuple[str, str], session: aiohttp.ClientSession) -> None:
    version, url = backend
    async with session.get(f"{url}/health") as response:
        assert response.status == 200
        assert response.headers[VERSION_HEADER] == version
        assert await response.json() == {"status": "ok", "version": version}


async def test_unknown_paths_carry_the_version_header(
    backend: tuple[str, str], session: aiohttp.ClientSession
) -> None:
    version, url = backend
    async with session.get(f"{url}/nowhere") as response:
        assert response.status == 404
        assert response.headers[VERSION_HEADER] == version


def test_unknown_versions_are_refused_with_the_accepted_ones() -> None:
    with pytest.raises(ValueError, match="'v1', 'v2'"):
        train("v3")
    with pytest.raises(ValueError, match="unknown model version 'latest'"):
        create_app("latest")


def test_sample_rows_start_at_the_first_row_and_mix_labels() -> None:
    rows = sample_rows(50)
    assert len(rows) == 50
    assert rows[0] == sample_rows(1)[0]
    assert all(len(features) == 30 for features, _label in rows)
    assert 10 <= sum(label for _features, label in rows) <= 40
    assert len(sample_rows(1000)) == 1000

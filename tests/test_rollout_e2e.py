"""The guarded rollout end to end, with real processes: `model-router serve` as a child, two
real backends, a traffic generator, and the controller with short steps deciding on the
router's log and rewriting the router's table file."""

from __future__ import annotations

import asyncio
import itertools
import random
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from router.config.model import Split
from router.config.validate import parse_text
from router.rollout.controller import Controller
from tests.support.running import router_process, serve

INTERVAL_S = 0.5


def candidate_app(failing: float) -> web.Application:
    rng = random.Random(7)

    async def predict(request: web.Request) -> web.Response:
        await request.read()
        if rng.random() < failing:
            return web.json_response({"error": "boom"}, status=500)
        return web.json_response({"prediction": 1})

    app = web.Application()
    app.router.add_post("/predict", predict)
    return app


async def traffic(url: str, stop: asyncio.Event) -> int:
    """Requests from random users until `stop`, a few at a time."""
    sent = 0
    async with aiohttp.ClientSession() as client:
        while not stop.is_set():
            batch = [
                client.post(f"{url}/models/m/predict", json={},
                            headers={"X-User-ID": f"user-{random.randrange(10**9)}"})
                for _ in range(8)
            ]  # fmt: skip
            for response in await asyncio.gather(*batch):
                response.release()
            sent += len(batch)
    return sent


async def roll(
    aiohttp_server: AiohttpServer, tmp_path: Path, failing: float, within_s: float
) -> tuple[list[dict[str, object]], list[str], str, str]:
    """Run a rollout until the controller promotes or rolls back (or `within_s` passes);
    the decision lines, the table texts it wrote, and the first and last table."""
    models = {"m": {
        "versions": {"v1": {"url": await serve(aiohttp_server, candidate_app(0.0))},
                     "v2": {"url": await serve(aiohttp_server, candidate_app(failing))}},
        "split": {"v1": 100, "v2": 0},
        "rollout": {"candidate": "v2", "steps": [20, 50, 100], "step_s": 1, "min_users": 60,
                    "guardrails": {"error_rate": {"max_increase": 0.1}}, "alpha": 0.05},
    }}  # fmt: skip
    async with router_process(models, tmp_path) as router:
        config = tmp_path / "routes.yaml"
        first = config.read_text()
        controller = Controller(config, [str(router.log_path)], INTERVAL_S)
        stop = asyncio.Event()
        sender = asyncio.create_task(traffic(router.url, stop))
        lines: list[dict[str, object]] = []
        written: list[str] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        try:
            while loop.time() < deadline:
                for line in await asyncio.to_thread(controller.evaluate):
                    lines.append(line)
                    if line["applied"]:
                        written.append(config.read_text())
                if lines and lines[-1]["decision"] in ("promote", "rollback"):
                    break
                await asyncio.sleep(INTERVAL_S)
        finally:
            stop.set()
            assert await sender > 0
    return lines, written, first, config.read_text()


def _numbers_only(a: str, b: str) -> bool:
    """The two tables differ only in split numbers and a `state` key."""
    left = [x for x in a.splitlines() if "state:" not in x]
    right = [x for x in b.splitlines() if "state:" not in x]
    assert len(left) == len(right)
    for x, y in zip(left, right, strict=True):
        if x != y:
            key_x, _, value_x = x.partition(":")
            key_y, _, value_y = y.partition(":")
            assert key_x == key_y
            assert key_x.strip() in ("v1", "v2"), (x, y)
            float(value_x), float(value_y)  # numbers, nothing else
    return True


async def test_a_healthy_candidate_is_promoted_through_every_step(
    aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    lines, written, first, last = await roll(aiohttp_server, tmp_path, 0.0, within_s=60)
    decisions = [line["decision"] for line in lines if line["decision"] != "hold"]
    assert decisions == ["advance", "advance", "advance", "promote"], [
        line["reason"] for line in lines
    ]
    splits = [parse_text(text).models["m"].split for text in [first, *written]]
    for before, after in itertools.pairwise(splits):
        for b in range(0, 10_000, 13):  # users only ever move into the candidate
            assert after.version_at(b) in (before.version_at(b), "v2")
    assert _numbers_only(first, last)
    rollout = parse_text(last).models["m"].rollout
    assert rollout is not None
    assert rollout.state == "promoted"
    assert "state: promoted" in last


async def test_a_candidate_failing_a_fifth_of_requests_is_rolled_back(
    aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    lines, _, first, last = await roll(aiohttp_server, tmp_path, 0.2, within_s=60)
    decisions = [line["decision"] for line in lines if line["decision"] != "hold"]
    assert decisions == ["advance", "rollback"], [line["reason"] for line in lines]
    advanced = next(i for i, line in enumerate(lines) if line["decision"] == "advance")
    assert len(lines) - advanced <= 12  # within a few intervals of the first step
    table = parse_text(last).models["m"]
    assert table.split == Split.of(dict(parse_text(first).models["m"].split.shares()))
    assert table.rollout is not None
    assert table.rollout.state == "rolled_back"
    assert _numbers_only(first, last)


@pytest.fixture(autouse=True)
def _quiet_random() -> None:
    random.seed(12)

"""examples/traffic.py against the real router: what it sends is what the routing log shows.

The router runs in this process and event loop, so the test calls the generator's coroutine
``run`` directly rather than ``main`` (which starts an event loop of its own).
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from examples import traffic
from tests.support.running import dead_url, read_log, router_running


def cancer(backends: dict[str, str]) -> dict[str, Any]:
    """Model `cancer` over the echo backends, whose /predict answers {"prediction": 1, ...}."""
    versions = {name: {"url": url} for name, url in backends.items()}
    return {
        "cancer": {
            "versions": versions,
            "split": {"v1": 50, "v2": 50},
            "when_no_user_id": "random",
            "log_response": ["prediction"],
        }
    }


async def test_traffic_shows_in_the_log_with_its_feedback(
    backends: dict[str, str], tmp_path: Path
) -> None:
    async with router_running(cancer(backends), tmp_path, log={"user_ids": "raw"}) as r:
        settings = traffic.Settings(
            url=r.url,
            users=50,
            concurrency=8,
            feedback_delay=0.05,
            pinned_share=0.1,
            anonymous_share=0.1,
        )
        summary = await traffic.run(settings)
    log = read_log(r.log_path)  # complete: the router has stopped

    planned = [p for user in traffic.plan(settings) for p in user.requests]
    assert summary.requests == len(planned)
    assert summary.statuses == {200: len(planned)}
    assert not summary.errors
    assert summary.feedback_sent == summary.feedback_accepted == len(planned)

    requests = [rec for rec in log if rec["event"] == "request"]
    assert len(requests) == len(planned)  # feedback is logged as feedback events only
    by = Counter(rec["assigned_by"] for rec in requests)
    assert set(by) == {"split", "pinned", "no_user_random"}
    kinds = Counter(p.kind for p in planned)
    assert by["split"] == kinds[traffic.Kind.ROUTED]
    assert by["pinned"] == kinds[traffic.Kind.PINNED]
    assert by["no_user_random"] == kinds[traffic.Kind.ANONYMOUS]
    for rec in requests:
        assert rec["outcome"] == "ok"
        assert rec["response"] == {"prediction": 1}
        if rec["assigned_by"] == "pinned":
            assert rec["path"] == "/models/cancer/versions/v2/predict"
            assert rec["version"] == "v2"
        else:
            assert rec["path"] == "/models/cancer/predict"
        if rec["assigned_by"] == "no_user_random":
            assert rec.get("user") is None
        else:
            assert rec["user"].startswith("user-")
    users = {rec["user"] for rec in requests if rec.get("user")}
    assert users <= {f"user-{n}" for n in range(1, 51)}

    feedback = [rec for rec in log if rec["event"] == "feedback"]
    assert len(feedback) == len(requests)
    request_ids = {rec["request_id"] for rec in requests}
    assert {rec["request_id"] for rec in feedback} == request_ids  # one each, all known
    assert {rec["model"] for rec in feedback} == {"cancer"}
    assert {rec["label"] for rec in feedback} <= {0, 1}


def test_plan_is_fixed_by_the_seed() -> None:
    settings = traffic.Settings(users=200, requests_per_user=(1, 3), seed=7)
    first = traffic.plan(settings)
    assert first == traffic.plan(settings)
    assert first != traffic.plan(traffic.Settings(users=200, seed=8))
    assert [user.user_id for user in first[:2]] == ["user-1", "user-2"]
    assert {len(user.requests) for user in first} == {1, 2, 3}
    rows = [p.row for user in first for p in user.requests]
    assert rows[:3] == [0, 1, 2]  # dataset rows in turn


def test_an_unreachable_router_exits_non_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert traffic.main(["--url", dead_url(), "--users", "2"]) == 1
    assert "cannot connect to the router" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "bounds"), [("1..3", (1, 3)), ("2", (2, 2)), ("0..2", None), ("3..1", None)]
)
def test_requests_per_user(text: str, bounds: tuple[int, int] | None) -> None:
    if bounds is None:
        with pytest.raises(argparse.ArgumentTypeError):
            traffic.request_range(text)
    else:
        assert traffic.request_range(text) == bounds

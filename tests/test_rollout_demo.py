"""`make rollout-demo`'s core (examples/rollout_demo.py) on real processes: backends, the
router and the controller, for the rolled-back case, with a candidate failing a fifth of its
predictions so that it takes seconds; and how the controller's lines read."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from examples import rollout_demo
from examples.rollout_demo import Scenario, Settings, describe, ports_taken, roll
from router.config.validate import parse_text

ROLLOUT = parse_text(rollout_demo.TABLE.read_text()).models["cancer"].rollout


@pytest.mark.timeout(60)
async def test_a_failing_candidate_is_rolled_back_and_everything_stops(tmp_path: Path) -> None:
    if taken := await ports_taken():
        pytest.skip(f"the demo's ports {taken} are in use (a rollout demo running?)")
    failing = Scenario("bad", "fails a fifth", ("--fail-rate", "0.2"), "rollback")
    outcome = await asyncio.wait_for(
        roll(failing, Settings(timeout_s=30), runs=tmp_path), timeout=50
    )
    assert outcome.decision == "rollback"
    assert outcome.path == [0, 10, 0]
    run = tmp_path / "bad"
    before, after = rollout_demo.TABLE.read_text(), (run / "routes.yaml").read_text()
    rollout = parse_text(after).models["cancer"].rollout
    assert rollout is not None
    assert rollout.state == "rolled_back"
    # Back where it started: the only change is the state line.
    assert after.replace("      state: rolled_back\n", "") == before
    assert (run / "controller.jsonl").read_text().count('"decision":"rollback"') == 1
    assert "--fail-rate 0.2" not in (run / "backend-v1.out").read_text()
    assert "fails 20% of predictions" in (run / "backend-v2.out").read_text()
    assert await ports_taken() == []  # router and backends stopped


def test_a_controller_line_reads_as_decision_reason_and_guardrails() -> None:
    assert ROLLOUT is not None
    line = {
        "decision": "rollback",
        "candidate": "v2",
        "split_before": {"v1": 90, "v2": 10},
        "split_after": {"v1": 100, "v2": 0},
        "users": {"candidate": 197, "control": 1805},
        "reason": "error_rate: v2 is worse than the control by more than the margin",
        "guardrails": {
            "error_rate": {"diff": 0.0648, "bounds": [0.0206, 0.1091], "violated": True,
                           "within": False},
            "latency_p95": {"diff": 0.1455, "bounds": [None, 0.2339], "violated": False,
                            "within": True},
        },
    }  # fmt: skip
    text = describe(line, ROLLOUT, 11.5)
    assert text[0].split() == [
        "11.5", "s", "ROLLBACK", "v1", "90", "/", "v2", "10", "->", "v1", "100", "/", "v2", "0",
        "(v2", "197", "users,", "others", "1,805)",
    ]  # fmt: skip
    assert text[1].strip() == line["reason"]
    assert text[2].split() == [
        "error_rate", "worse", "by", "+6.48", "pp", "bounds", "[", "+2.06,", "+10.91]", "pp",
        "margin", "+2", "pp", "VIOLATED",
    ]  # fmt: skip
    assert text[3].split() == [
        "latency_p95", "worse", "by", "+14.55", "%", "bounds", "[", "n/a,", "+23.39]", "%",
        "margin", "+50", "%", "within",
    ]  # fmt: skip

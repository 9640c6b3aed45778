"""The rollout controller under faults (contract section 13): it keeps running on a table
that is momentarily invalid and on garbage log lines (it holds, with the reason); a
guardrail with no evidence holds, never passes; logs are read a block at a time; and a
person's edit made while the controller writes is never overwritten: it decides again."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import orjson
import pytest

from router.rollout.controller import Controller
from router.rollout.decide import Arm, decide
from router.rollout.logs import BLOCK, LogFollower
from tests.support import logs
from tests.support.rollout_sim import rollout_of
from tests.test_rollout import NOW, TABLE, arm, log_time, split, step, write_log


def controller(config: Path, log: Path, clock: float) -> Controller:
    return Controller(config, [str(log)], 30.0, clock=lambda: clock)


def evidence_for_a_sound_step(tmp_path: Path) -> tuple[Path, Path, float]:
    """A table at 95/5 and a log whose step, judged an hour later, passes."""
    config, log = tmp_path / "routes.yaml", tmp_path / "routing.jsonl"
    config.write_text(TABLE.format(log=log, v1=95, v2=5))
    write_log(log, "cfg5", {"v1": 95.0, "v2": 5.0}, 3000, errors=0.0)
    return config, log, log_time() + 3000


# --- a table that is momentarily invalid, or missing ---


def test_an_invalid_table_holds_with_the_reason_and_the_next_round_decides(
    tmp_path: Path,
) -> None:
    config, log, now = evidence_for_a_sound_step(tmp_path)
    good = config.read_text()
    config.write_text(good.replace("v1: 95", "v1: 90"))  # adds up to 95: a person mid-edit
    c = controller(config, log, now)
    (line,) = c.evaluate()  # no valid table seen yet: one line that says why
    assert (line["decision"], line["model"], line["applied"]) == ("hold", None, False)
    assert "the table cannot be used" in line["reason"]
    assert "95" in line["reason"]  # the validator's own message, with its line

    config.write_text(good)
    (line,) = c.evaluate()
    assert (line["model"], line["decision"], line["applied"]) == ("cancer", "advance", True)

    advanced = config.read_text()
    config.write_text(advanced.replace("models:", "models: [", 1))  # not even YAML
    (line,) = c.evaluate()
    assert (line["model"], line["decision"], line["applied"]) == ("cancer", "hold", False)
    assert "the table cannot be used" in line["reason"]
    assert line["split_before"] == line["split_after"] == {"v1": 75, "v2": 25}

    config.unlink()  # a save that removes, then writes
    (line,) = c.evaluate()
    assert (line["decision"], line["applied"]) == ("hold", False)
    assert "No such file" in line["reason"]


# --- garbage log lines ---

GARBAGE = [
    b"not json at all",
    b'{"event": "request", "ts": "2026-11-25T00:00:01.000Z", "model": "cancer", "request_id"',
    orjson.dumps(
        {
            **logs.request(0, version="v2", user="zed"),
            "request_id": "typed-garbage",
            "latency_ms": "slow",
            "config": "cfg5",
        }
    ),
    orjson.dumps(
        {
            "event": "config_loaded",
            "ts": "2026-11-25T00:00:02.000Z",
            "config": "bad",
            "models": {"cancer": {"split": [95, 5]}},
        }
    ),
    b"[1, 2, 3]",
]


def test_garbage_log_lines_hold_the_round_they_arrive_in(tmp_path: Path) -> None:
    config, log, now = evidence_for_a_sound_step(tmp_path)
    with log.open("ab") as f:
        f.write(b"\n".join(GARBAGE) + b"\n")
    c = controller(config, log, now)
    (line,) = c.evaluate()
    assert (line["decision"], line["applied"]) == ("hold", False)
    assert f"{len(GARBAGE)} log lines" in line["reason"]
    assert "not json at all" in line["reason"]
    assert line["users"]["candidate"] > 50  # the evidence around the garbage still counts
    (line,) = c.evaluate()  # nothing new, nothing garbage: the step passes
    assert (line["decision"], line["applied"]) == ("advance", True)


# --- a guardrail with no evidence ---


def test_a_guardrail_with_no_evidence_holds_never_passes() -> None:
    """No labels yet: accuracy has shown nothing, so the step cannot pass on it."""
    rollout = rollout_of(guardrails={"error_rate": 0.05, "accuracy": 0.05}, step_s=60.0,
                         min_users=50)  # fmt: skip
    d = decide(rollout, split(95, 5), step(arm(600, 0.0), arm(11400, 0.0)), NOW, 30)
    assert d.decision == "hold"
    assert "no evidence yet for: accuracy" in d.reason
    assert set(d.guardrails) == {"error_rate"}


def test_a_guardrail_with_too_few_users_on_an_arm_holds() -> None:
    rollout = rollout_of(guardrails={"error_rate": 0.05}, step_s=60.0, min_users=5)
    d = decide(rollout, split(95, 5), step(arm(10, 0.0), arm(190, 0.0)), NOW, 30)
    assert d.decision == "hold"
    assert "no evidence yet for: error_rate" in d.reason


def test_the_last_step_still_promotes_with_no_control_left() -> None:
    rollout = rollout_of(guardrails={"accuracy": 0.05}, step_s=60.0, min_users=50)
    d = decide(rollout, split(0, 100), step(arm(600, 0.0), Arm.empty()), NOW, 30)
    assert d.decision == "promote"


# --- logs read a block at a time ---


def test_logs_are_read_a_block_at_a_time(tmp_path: Path) -> None:
    log = tmp_path / "routing.jsonl"
    line = orjson.dumps(logs.request(0, version="v1", user="u")) + b"\n"
    count = 3 * BLOCK // len(line) + 1
    log.write_bytes(line * count)
    follower = LogFollower([str(log)])
    records = iter(follower.read())
    next(records)
    (state,) = follower._files.values()
    assert state.offset <= BLOCK  # the first record came before the rest was read
    assert 1 + sum(1 for _ in records) == count
    assert state.offset == log.stat().st_size
    assert list(follower.read()) == []  # nothing new


# --- a person's edit while the controller writes ---


def test_an_edit_made_while_the_controller_writes_is_kept_and_decided_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The person saves between the controller's read of the file and its rename (here,
    as it opens the file it writes beside it): the edit stays, and the decision is made
    again on the edited table and applied to it."""
    config, log = tmp_path / "routes.yaml", tmp_path / "routing.jsonl"
    config.write_text(TABLE.format(log=log, v1=100, v2=0))
    log.write_text("")
    real_mkstemp = tempfile.mkstemp
    edits: list[str] = []

    def person_saves_meanwhile(*args: Any, **kwargs: Any) -> Any:
        if not edits:
            edits.append("step_s")
            config.write_text(config.read_text().replace("step_s: 60", "step_s: 90"))
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr("router.rollout.controller.tempfile.mkstemp", person_saves_meanwhile)
    (line,) = controller(config, log, log_time()).evaluate()
    text = config.read_text()
    assert "step_s: 90" in text  # the person's edit was not overwritten
    assert "v2: 5" in text  # and the decision, made again on it, was applied
    assert (line["decision"], line["applied"]) == ("advance", True)
    assert "edited meanwhile" in line["reason"]
    assert not list(tmp_path.glob(".routes.yaml.*"))  # no file left beside it

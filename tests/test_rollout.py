"""The guarded-rollout controller (contract section 9): its decisions as a pure function of
the evidence, its table edits (only split numbers and state change), and the controller on
real log files, restarted or not."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.config.model import Split
from router.config.validate import parse_text
from router.rollout.controller import Controller
from router.rollout.decide import Arm, Step, _moved, decide
from router.rollout.edit import edit_table
from tests.support import logs
from tests.support.rollout_sim import rollout_of

NOW = 1_800_000_000.0

TABLE = """\
# The team's table: comments, order and quoting must survive every edit.
log:
  path: {log}
models:
  cancer:
    versions:
      v1: {{url: "http://127.0.0.1:9001"}}   # the incumbent
      v2: {{url: 'http://127.0.0.1:9002'}}
    split:
      v1: {v1}
      v2: {v2}     # the candidate, listed last
    rollout:
      candidate: v2
      steps: [5, 25, 50, 100]
      step_s: 60
      min_users: 50
      guardrails:
        error_rate: {{max_increase: 0.05}}
      alpha: 0.05
"""


def arm(users: int, error_rate: float, seed: int = 0) -> Arm:
    rng = np.random.default_rng(seed)
    n = np.ones(users)
    errors = (rng.random(users) < error_rate).astype(float)
    latency = rng.lognormal(3, 0.3, users)
    return Arm(n, errors, np.zeros(users), np.zeros(users), latency, np.arange(users))


def split(v1: float, v2: float) -> Split:
    return Split.of({"v1": Decimal(str(v1)), "v2": Decimal(str(v2))})


def shares(v1: int, v2: int) -> dict[str, Decimal]:
    return {"v1": Decimal(v1), "v2": Decimal(v2)}


def step(candidate: Arm, control: Arm, started: float = NOW - 120) -> Step:
    return Step(started, candidate, control, NOW - 1)


ROLLOUT = rollout_of(guardrails={"error_rate": 0.05}, step_s=60.0, min_users=50)


# --- decisions ---


def test_a_candidate_at_zero_goes_to_the_first_step() -> None:
    d = decide(ROLLOUT, split(100, 0), Step(None, Arm.empty(), Arm.empty(), None), NOW, 30)
    assert (d.decision, d.split_after) == ("advance", shares(95, 5))


@pytest.mark.parametrize(
    ("the_step", "reason"),
    [
        (Step(None, Arm.empty(), Arm.empty(), NOW), "no router has loaded the split"),
        (Step(NOW - 600, arm(500, 0.0), arm(9500, 0.0), NOW - 3600), "the log has not grown"),
        (Step(NOW - 600, arm(2000, 0.0), arm(8000, 0.0), NOW), "sample ratio mismatch"),
        (Step(NOW - 30, arm(500, 0.0), arm(9500, 0.0), NOW), "the step has run 30 s of 60 s"),
        (Step(NOW - 600, arm(30, 0.0), arm(570, 0.0), NOW), "30 users of the 50 a step needs"),
    ],
    ids=["not-loaded", "log-stopped", "srm", "too-early", "too-few-users"],
)
def test_it_holds_and_says_why(the_step: Step, reason: str) -> None:
    d = decide(ROLLOUT, split(95, 5), the_step, NOW, 30)
    assert d.decision == "hold"
    assert reason in d.reason
    assert d.split_after == {"v1": 95, "v2": 5}


def test_a_failing_candidate_is_rolled_back_without_waiting_for_step_s() -> None:
    d = decide(ROLLOUT, split(95, 5), step(arm(600, 0.3), arm(11400, 0.01), NOW - 10), NOW, 30)
    assert (d.decision, d.state) == ("rollback", "rolled_back")
    assert d.split_after == {"v1": 100, "v2": 0}
    assert d.guardrails["error_rate"].violated


def test_a_sound_step_advances_and_the_last_one_promotes() -> None:
    d = decide(ROLLOUT, split(95, 5), step(arm(600, 0.0), arm(11400, 0.0)), NOW, 30)
    assert (d.decision, d.split_after) == ("advance", shares(75, 25))
    assert d.guardrails["error_rate"].within
    d = decide(ROLLOUT, split(0, 100), step(arm(600, 0.0), Arm.empty()), NOW, 30)
    assert (d.decision, d.state, d.split_after) == ("promote", "promoted", shares(0, 100))


@settings(deadline=None)
@given(
    shares=st.lists(st.integers(0, 10_000), min_size=2, max_size=5).filter(
        lambda s: sum(s[:-1]) > 0
    ),
    raise_to=st.integers(1, 10_000),
)
def test_a_ramp_only_moves_users_into_the_candidate(shares: list[int], raise_to: int) -> None:
    """Whatever the split, raising the candidate (listed last) takes buckets only from the
    versions before it, so no user moves between two other versions."""
    total = sum(shares)
    hundredths = [s * 10_000 // total for s in shares]
    hundredths[0] += 10_000 - sum(hundredths)
    names = [f"v{i}" for i in range(len(shares))]
    before = {n: Decimal(h) / 100 for n, h in zip(names, hundredths, strict=True)}
    target = max(before[names[-1]], Decimal(raise_to) / 100)
    after = _moved(before, names[-1], target)
    assert sum(after.values()) == 100
    assert all(v >= 0 for v in after.values())
    old, new = Split.of(before), Split.of(after)
    for b in range(0, 10_000, 7):
        assert new.version_at(b) in (old.version_at(b), names[-1])


# --- the table edit ---


def test_an_edit_changes_only_split_numbers_and_state(tmp_path: Path) -> None:
    text = TABLE.format(log=tmp_path / "log.jsonl", v1=95, v2=5)
    new, table = edit_table(text, "cancer", {"v1": Decimal(75), "v2": Decimal(25)}, None, "t")
    assert new == text.replace("v1: 95", "v1: 75").replace("v2: 5 ", "v2: 25 ")
    assert dict(table.models["cancer"].split.shares()) == {"v1": 75, "v2": 25}
    new, table = edit_table(text, "cancer", {"v1": Decimal(100), "v2": Decimal(0)},
                            "rolled_back", "t")  # fmt: skip
    rollout = table.models["cancer"].rollout
    assert rollout is not None
    assert rollout.state == "rolled_back"
    added = [line for line in new.splitlines() if line not in text.splitlines()]
    assert added == ["      v1: 100", "      v2: 0     # the candidate, listed last",
                     "      state: rolled_back"]  # fmt: skip


def test_an_edit_of_a_flow_style_block() -> None:
    text = (
        "models:\n  m:\n    versions: {a: {url: 'http://h:1'}, b: {url: 'http://h:2'}}\n"
        "    split: {a: 50, b: 50}\n"
        "    rollout: {candidate: b, steps: [50, 100], guardrails: {error_rate: "
        "{max_increase: 0.01}}}\n"
    )
    new, _table = edit_table(text, "m", {"a": Decimal(0), "b": Decimal(100)}, "promoted", "t")
    assert "split: {a: 0, b: 100}" in new
    assert "rollout: {state: promoted, candidate: b" in new
    assert parse_text(new).models["m"].rollout is not None


# --- the controller on real files ---


def write_log(path: Path, digest: str, shares: dict[str, float], users: int, errors: float,
              start: int = 0) -> None:  # fmt: skip
    """A config_loaded event for `shares`, then one request per user by the real bucketing."""
    loaded = logs.config_loaded(digest, shares)
    records = [loaded, *logs.split_traffic(users, shares, error_rates={"v1": 0.0, "v2": errors},
                                           users=users, seed=start)]  # fmt: skip
    for i, r in enumerate(records[1:]):
        r["config"] = digest
        r["request_id"] = f"{digest}-{i}"
    with path.open("ab") as f:
        for r in records:
            f.write(json.dumps(r).encode() + b"\n")


def controller(config: Path, log: Path, clock: float) -> Controller:
    return Controller(config, [str(log)], 30.0, clock=lambda: clock)


def log_time() -> float:
    """The time of the records logs.request writes (2026-11-25), as the controller reads it."""
    from router.rollout.logs import epoch

    at = epoch("2026-11-25T00:00:00.000Z")
    assert at is not None
    return at


def test_the_controller_advances_then_rolls_back_and_rewrites_the_file(tmp_path: Path) -> None:
    config, log = tmp_path / "routes.yaml", tmp_path / "routing.jsonl"
    config.write_text(TABLE.format(log=log, v1=100, v2=0))
    t0 = log_time()
    (line,) = controller(config, log, t0).evaluate()
    assert (line["decision"], line["applied"], line["split_after"]) == (
        "advance", True, {"v1": 95, "v2": 5})  # fmt: skip
    write_log(log, "cfg5", {"v1": 95.0, "v2": 5.0}, 4000, errors=0.5)
    (line,) = controller(config, log, t0 + 3000).evaluate()
    assert line["decision"] == "rollback"
    assert line["guardrails"]["error_rate"]["violated"] is True
    assert line["users"]["candidate"] > 100
    table = parse_text(config.read_text())
    rollout = table.models["cancer"].rollout
    assert rollout is not None
    assert rollout.state == "rolled_back"
    assert dict(table.models["cancer"].split.shares()) == {"v1": 100, "v2": 0}
    (line,) = controller(config, log, t0 + 3100).evaluate()  # left alone from then on
    assert (line["decision"], line["applied"]) == ("hold", False)


def test_a_restarted_controller_decides_as_one_that_never_stopped(tmp_path: Path) -> None:
    config, log = tmp_path / "routes.yaml", tmp_path / "routing.jsonl"
    config.write_text(TABLE.format(log=log, v1=95, v2=5))
    t0 = log_time()
    running = controller(config, log, t0)
    seen = []
    for k in range(3):
        write_log(log, "cfg5", {"v1": 95.0, "v2": 5.0}, 1500, errors=0.0, start=k)
        running.clock = lambda k=k: t0 + 1000 * (k + 1)  # type: ignore[misc]
        running.dry_run = True
        seen.append(running.evaluate()[0])
    fresh = Controller(config, [str(log)], 30.0, dry_run=True, clock=lambda: t0 + 3000)
    again = fresh.evaluate()[0]
    assert {k: v for k, v in again.items() if k != "ts"} == {
        k: v for k, v in seen[-1].items() if k != "ts"
    }


def test_a_person_s_edit_meanwhile_is_never_overwritten(tmp_path: Path) -> None:
    config, log = tmp_path / "routes.yaml", tmp_path / "routing.jsonl"
    config.write_text(TABLE.format(log=log, v1=100, v2=0))
    log.write_text("")
    c = controller(config, log, log_time())
    original = c._apply

    def edit_meanwhile(model: str, decision: Any, read: str) -> Any:
        config.write_text(read.replace("step_s: 60", "step_s: 90"))  # a person, just now
        return original(model, decision, read)

    c._apply = edit_meanwhile  # type: ignore[method-assign]
    (line,) = c.evaluate()
    assert "edited meanwhile" in line["reason"]
    assert "step_s: 90" in config.read_text()  # kept; and the decision, made again on it:
    assert line["applied"] is True
    assert "v2: 5" in config.read_text()


def test_once_dry_run_prints_a_line_and_writes_nothing(tmp_path: Path) -> None:
    config, log = tmp_path / "routes.yaml", tmp_path / "routing.jsonl"
    text = TABLE.format(log=log, v1=100, v2=0)
    config.write_text(text)
    log.write_text("")
    done = subprocess.run(
        [sys.executable, "-m", "router", "rollout", "--config", str(config), "--once",
         "--dry-run"], capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (line,) = [json.loads(x) for x in done.stdout.splitlines()]
    assert (line["event"], line["decision"], line["dry_run"]) == ("rollout", "advance", True)
    assert config.read_text() == text


def test_records_keep_only_what_the_current_steps_can_use() -> None:
    from router.rollout.logs import Records

    records = Records()
    for i, ts in enumerate(["2026-11-25T00:00:00.000Z", "2026-11-25T01:00:00.000Z"]):
        for model in ("cancer", "books"):
            r = {**logs.request(i, version="v1", user="u", model=model), "ts": ts,
                 "request_id": f"{model}-{i}"}  # fmt: skip
            records.add(r, {"cancer", "books"})
        records.add({**logs.feedback(f"cancer-{i}", 1), "ts": ts}, {"cancer"})
    step = log_time() + 1800  # cancer's step began between the two; books is finished
    records.forget_before({"cancer": step})
    assert list(records.requests) == ["cancer"]
    assert list(records.requests["cancer"]) == ["cancer-1"]
    assert list(records.labels) == ["cancer-1"]

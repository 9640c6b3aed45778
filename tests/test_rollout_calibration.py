"""The rollout controller's decisions on simulated rollouts with a known truth, fixed seeds
(tests/support/rollout_sim.py: 200 req/s on average swinging 3x over the day, an
evaluation every 30 s of simulated time, the decision function the controller runs).

The suite runs a few rollouts per scenario; `make calibration-rollout` runs 500 A/A rollouts and
100 of each other scenario and prints the table that docs/rollout.md shows:

    .venv/bin/python -m tests.test_rollout_calibration
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass

from router.config.model import Rollout
from tests.support.rollout_sim import Result, Traffic, Truth, rollout_of, simulate

HEAVY = Traffic()  # 1% of users send about 60% of the requests
LIGHT = Traffic(users=300_000, heavy_share=0.0)  # about one or two requests per user


@dataclass(frozen=True)
class Scenario:
    name: str
    rollout: Rollout
    truth: Truth
    traffic: Traffic
    seed: int


SCENARIOS = {
    # The A/A runs use a 1 pp error margin: with heavy users, a 5% step holds about 100 of
    # them, and their propensities alone keep a 0.5 pp bound out of reach for hours.
    "aa": Scenario("A/A, heavy users", rollout_of(
        guardrails={"error_rate": 0.01, "latency_p95": 0.2}), Truth(), HEAVY, 1_000),
    "errors": Scenario("error rate 1% -> 3%", rollout_of(), Truth(error=0.03), LIGHT, 2_000),
    "latency": Scenario("p95 latency +30%", rollout_of(), Truth(latency_factor=1.3), LIGHT,
                        3_000),
    "better": Scenario("error rate 1 pp better", rollout_of(),
                       Truth(base_error=0.02, error=0.01), LIGHT, 4_000),
}  # fmt: skip


def run(key: str, runs: int) -> list[Result]:
    s = SCENARIOS[key]
    return [simulate(s.rollout, s.truth, s.traffic, seed=s.seed + i) for i in range(runs)]


def share(results: list[Result], decision: str) -> float:
    return sum(r.final == decision for r in results) / len(results)


def median_rollback_s(results: list[Result]) -> float:
    times = [t for r in results if (t := r.rolled_back_after()) is not None]
    return statistics.median(times) if times else float("inf")


# --- the claims, on a few seeded rollouts each ---


def test_aa_rollouts_are_promoted_and_never_rolled_back() -> None:
    results = run("aa", 6)
    assert share(results, "rollback") == 0
    assert share(results, "promote") == 1  # through every step


def test_a_candidate_going_from_1_to_3_percent_errors_is_rolled_back() -> None:
    results = run("errors", 10)
    assert share(results, "rollback") == 1
    assert median_rollback_s(results) <= 120  # the goal: 2 minutes


def test_a_p95_latency_regression_of_30_percent_is_rolled_back() -> None:
    assert share(run("latency", 10), "rollback") == 1


def test_a_better_candidate_is_promoted_through_every_step() -> None:
    results = run("better", 6)
    assert share(results, "promote") == 1
    assert all(sum(d == "advance" for _, d, _ in r.decisions) == 4 for r in results)


def table(runs: dict[str, int], say: Callable[[str], None] = print) -> None:
    """The calibration table (markdown)."""
    say("| scenario | rollouts | rolled back | promoted | median time to rollback |")
    say("| --- | ---: | ---: | ---: | ---: |")
    for key, n in runs.items():
        results = run(key, n)
        back = median_rollback_s(results)
        when = f"{back:.0f} s" if back != float("inf") else "-"
        say(f"| {SCENARIOS[key].name} | {n} | {share(results, 'rollback'):.1%} | "
            f"{share(results, 'promote'):.1%} | {when} |")  # fmt: skip


if __name__ == "__main__":
    aa = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    others = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    table({"aa": aa, "errors": others, "latency": others, "better": others},
          lambda line: print(line, flush=True))  # fmt: skip

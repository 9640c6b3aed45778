"""Simulated rollouts: synthetic traffic with a known truth fed to the controller's pure
decision function (router/rollout/decide.py) exactly as the controller feeds it, one
evaluation every `interval_s` of simulated time.

Traffic: requests arrive at `rate` per second on average, swinging 3x over a simulated day
(a sine from 0.5x to 1.5x of the mean); users are drawn from a pool where 1% are heavy
(about 60% of requests); each user has an error propensity and a latency level of their
own. Users are bucketed into the candidate by the split, as the router does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal

import numpy as np

from router.config.model import Rollout, Split
from router.rollout.decide import Arm, Step, decide

DAY_S = 86_400.0


@dataclass(frozen=True)
class Truth:
    """The candidate's difference from the control: error rate (absolute) and latency
    (a factor on the whole distribution)."""

    base_error: float = 0.01
    error: float = 0.01  # the candidate's mean error propensity
    latency_factor: float = 1.0


@dataclass(frozen=True)
class Traffic:
    rate: float = 200.0  # requests per second, mean over the day
    users: int = 200_000
    heavy_share: float = 0.01
    heavy_weight: float = 0.6  # share of requests from heavy users


@dataclass
class Result:
    decisions: list[tuple[float, str, Decimal]]  # (time, decision, percent before)

    @property
    def final(self) -> str:
        return self.decisions[-1][1] if self.decisions else "hold"

    def rolled_back_after(self) -> float | None:
        """Seconds from the first request at the candidate's first step to the rollback."""
        starts = [t for t, d, p in self.decisions if d == "advance" and p == 0]
        backs = [t for t, d, _ in self.decisions if d == "rollback"]
        return backs[0] - starts[0] if starts and backs else None


def simulate(
    rollout: Rollout,
    truth: Truth,
    traffic: Traffic,
    seed: int,
    interval_s: float = 30.0,
    max_s: float = 6 * 3600.0,
) -> Result:
    """Run one rollout from a candidate at 0 until it is promoted, rolled back, or `max_s`
    of simulated time has passed."""
    rng = np.random.default_rng(seed)
    people = _people(rng, traffic, truth)
    shares = {"v1": Decimal(100), rollout.candidate: Decimal(0)}
    now, started = rng.uniform(0, DAY_S), None  # a random hour of the day
    out = Result([])
    log = _Log(traffic.users)
    t_end = now + max_s
    while now < t_end:
        split = Split.of(shares)
        step = log.step(started, now)
        d = decide(rollout, split, step, now, interval_s)
        out.decisions.append((now, d.decision, shares[rollout.candidate]))
        if d.decision in ("rollback", "promote"):
            return out
        if d.decision == "advance":
            shares, started = d.split_after, now  # routers load it at once
            log.clear()
        log.add(rng, people, traffic, truth, now, interval_s, shares, rollout.candidate)
        now += interval_s
    return out


@dataclass
class _People:
    weight: np.ndarray  # each user's share of requests
    propensity: np.ndarray  # as control; the candidate's is shifted by the truth
    level: np.ndarray  # log-latency level
    bucket: np.ndarray  # 0..9999


def _people(rng: np.random.Generator, traffic: Traffic, truth: Truth) -> _People:
    n = traffic.users
    heavy = rng.random(n) < traffic.heavy_share
    weight = np.where(heavy, traffic.heavy_weight / max(heavy.sum(), 1),
                      (1 - traffic.heavy_weight) / max((~heavy).sum(), 1))  # fmt: skip
    spread = 20.0
    base = truth.base_error
    propensity = rng.beta(base * spread, (1 - base) * spread, n)
    return _People(weight / weight.sum(), propensity, rng.normal(math.log(20), 0.1, n),
                   rng.integers(0, 10_000, n))  # fmt: skip


class _Log:
    """The current step's requests, summed per user as they come (users are indices into
    the population, which the statistics take as user codes as they are)."""

    def __init__(self, users: int) -> None:
        self.users = users
        self.clear()

    def clear(self) -> None:
        self.n = [np.zeros(self.users), np.zeros(self.users)]  # control, candidate
        self.errors = [np.zeros(self.users), np.zeros(self.users)]
        self.latency: list[list[np.ndarray]] = [[], []]
        self.latency_user: list[list[np.ndarray]] = [[], []]

    def add(
        self,
        rng: np.random.Generator,
        people: _People,
        traffic: Traffic,
        truth: Truth,
        now: float,
        interval_s: float,
        shares: dict[str, Decimal],
        candidate: str,
    ) -> None:
        swing = 1 + 0.5 * math.sin(2 * math.pi * now / DAY_S)  # 0.5x to 1.5x
        count = rng.poisson(traffic.rate * swing * interval_s)
        user = rng.choice(people.weight.size, size=count, p=people.weight)
        edge = 10_000 - int(shares[candidate] * 100)  # the candidate is listed last
        mine = people.bucket[user] >= edge
        p = people.propensity[user] + np.where(mine, truth.error - truth.base_error, 0.0)
        error = rng.random(count) < np.clip(p, 0, 1)
        factor = np.where(mine, truth.latency_factor, 1.0)
        latency = np.exp(people.level[user] + rng.normal(0, 0.3, count)) * factor
        for arm, rows in ((0, ~mine), (1, mine)):
            self.n[arm] += np.bincount(user[rows], minlength=self.users)
            self.errors[arm] += np.bincount(user[rows], weights=error[rows], minlength=self.users)
            self.latency[arm].append(latency[rows])
            self.latency_user[arm].append(user[rows])

    def step(self, started: float | None, now: float) -> Step:
        if started is None:
            return Step(None, Arm.empty(), Arm.empty(), now)
        control, candidate = (self._arm(i) for i in (0, 1))
        return Step(started, candidate, control, now)

    def _arm(self, i: int) -> Arm:
        seen = self.n[i] > 0
        if not seen.any():
            return Arm.empty()
        nothing = np.zeros(int(seen.sum()))
        return Arm(
            self.n[i][seen],
            self.errors[i][seen],
            nothing,
            nothing,
            np.concatenate(self.latency[i]),
            np.concatenate(self.latency_user[i]),
        )


def rollout_of(**kw: object) -> Rollout:
    """A rollout block as a team would write it (contract section 9's example, shorter
    steps)."""
    defaults: dict[str, object] = {
        "candidate": "v2",
        "steps": tuple(Decimal(s) for s in (5, 25, 50, 100)),
        "guardrails": {"error_rate": 0.005, "latency_p95": 0.20},
        "step_s": 600.0,
        "min_users": 500,
        "alpha": 0.05,
    }
    defaults.update(kw)
    return Rollout(**defaults)  # type: ignore[arg-type]

"""The controller's decision for one model: a pure function of the step's per-user evidence
(contract section 9), so simulations call it exactly as the controller does."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import numpy as np

from router.config.model import Rollout, Split
from router.config.reader import fmt
from router.stats.guard import Guard, guard, proportions_apart, relative, sample_ratio_p
from router.stats.quantile import quantile
from router.stats.ratio import Estimate, proportion

# Below this many users in an arm a guardrail says nothing: the intervals are asymptotic.
MIN_ARM_USERS = 20
SRM_P = 0.001  # a sample-ratio p-value below this holds the step (as the report's check)


@dataclass(frozen=True)
class Arm:
    """One arm of a step, per user: requests, errors, labelled and correct requests; and
    every timed request's latency with the index of its user."""

    n: np.ndarray
    errors: np.ndarray
    labelled: np.ndarray
    correct: np.ndarray
    latency: np.ndarray
    latency_user: np.ndarray

    @property
    def users(self) -> int:
        return int(self.n.size)

    @classmethod
    def empty(cls) -> Arm:
        nothing = np.zeros(0)
        return cls(nothing, nothing, nothing, nothing, nothing, np.zeros(0, dtype=np.int64))


@dataclass(frozen=True)
class Step:
    """What the logs say of the current step: when it began (the first `config_loaded` of
    its split; None before any router has loaded it), both arms since then, and the time
    of the newest record of any kind."""

    started: float | None
    candidate: Arm
    control: Arm
    newest: float | None


@dataclass(frozen=True)
class Decision:
    decision: str  # advance, promote, rollback, hold
    split_after: dict[str, Decimal]
    state: str | None  # written into the rollout block, if any
    reason: str
    guardrails: dict[str, Guard] = field(default_factory=dict)

    def changes(self, split: Split) -> bool:
        return self.state is not None or self.split_after != dict(split.shares())


def decide(rollout: Rollout, split: Split, step: Step, now: float, interval_s: float) -> Decision:
    """Hold, advance, promote or roll back (contract section 9), with the reason."""
    shares = dict(split.shares())
    current = shares[rollout.candidate]
    name = rollout.candidate

    def hold(reason: str, guards: dict[str, Guard] | None = None) -> Decision:
        return Decision("hold", shares, None, reason, guards or {})

    if rollout.state is not None:
        return hold(f"the rollout is {rollout.state.replace('_', ' ')}; nothing left to do")
    if current == 0:
        first = rollout.steps[0]
        return Decision("advance", _moved(shares, name, first), None,
                        f"not started: {name} goes to the first step, {fmt(first)}%")  # fmt: skip
    if step.started is None:
        return hold(f"no router has loaded the split with {name} at {fmt(current)}% yet")
    stale_s = max(3 * interval_s, 60.0)
    if step.newest is None or now - step.newest > stale_s:
        return hold(f"the log has not grown for over {stale_s:g} s: routers or log shipping "
                    "may be down; never advancing on a log that stopped")  # fmt: skip
    c, k = step.candidate, step.control
    if current < 100:
        p = sample_ratio_p(c.users, k.users, float(current) / 100)
        if p < SRM_P:
            return hold(f"sample ratio mismatch: {name} has {c.users:,} of {c.users + k.users:,} "
                        f"users where the split gives it {fmt(current)}% (p = {p:.2g}); no "
                        "decision until it is explained")  # fmt: skip
    guards = guardrails(rollout, step, current) if current < 100 else {}
    if violated := [g for g, v in guards.items() if v.violated]:
        back = _moved(shares, name, Decimal(0))
        return Decision("rollback", back, "rolled_back",
                        f"{', '.join(violated)}: {name} is worse than the control by more "
                        "than the margin, with confidence", guards)  # fmt: skip
    elapsed = now - step.started
    if elapsed < rollout.step_s:
        return hold(f"the step has run {int(elapsed)} s of {rollout.step_s:g} s", guards)
    if c.users < rollout.min_users:
        return hold(f"{name} has {c.users:,} users of the {rollout.min_users:,} a step needs",
                    guards)  # fmt: skip
    if current < 100 and (unseen := [g for g in rollout.guardrails if g not in guards]):
        return hold(f"no evidence yet for: {', '.join(_unseen(g) for g in unseen)}", guards)
    if waiting := [g for g, v in guards.items() if not v.within]:
        return hold(f"not yet shown within the margin: {', '.join(waiting)}", guards)
    later = [s for s in rollout.steps if s > current]
    if not later:
        return Decision("promote", shares, "promoted",
                        f"the last step, {fmt(current)}%, has passed", guards)  # fmt: skip
    return Decision("advance", _moved(shares, name, later[0]), None,
                    f"the step passed: {name} goes to {fmt(later[0])}%", guards)  # fmt: skip


def _unseen(name: str) -> str:
    """A guardrail that cannot be computed yet (too few users on an arm, no labels yet for
    accuracy) has shown nothing: it holds the step, never lets it pass; this says why."""
    need = "labelled users" if name == "accuracy" else "users"
    return f"{name} (each arm needs {MIN_ARM_USERS} {need})"


def guardrails(rollout: Rollout, step: Step, current: Decimal) -> dict[str, Guard]:
    """Each configured guardrail on the step's evidence; the family shares `alpha`. A
    guardrail without evidence (too few users, no labels yet) is left out (and `decide`
    holds the step until it has some)."""
    alpha = rollout.alpha / len(rollout.guardrails)
    # Tightest when the candidate reaches min_users at its share of the traffic.
    t_opt = rollout.min_users * 100 / float(current)
    c, k = step.candidate, step.control
    out: dict[str, Guard] = {}
    for name, margin in rollout.guardrails.items():
        if (worse := _worse(name, c, k)) is not None:
            estimate, variance_at = worse
            out[name] = guard(estimate, margin, alpha, t_opt, variance_at)
    return out


Worse = tuple[Estimate, Callable[[float], float] | None]


def _worse(name: str, c: Arm, k: Arm) -> Worse | None:
    """How much worse the candidate is on guardrail `name`, and for a proportion the
    variance under a given gap (the score test's, router/stats/guard.py)."""
    if c.users < MIN_ARM_USERS or k.users < MIN_ARM_USERS:
        return None
    if name == "error_rate":
        return proportions_apart(proportion(c.errors, c.n), proportion(k.errors, k.n), True)
    if name == "latency_p95":
        if not c.latency.size or not k.latency.size:
            return None
        c95 = quantile(c.latency, c.latency_user, 0.95)
        return relative(c95, quantile(k.latency, k.latency_user, 0.95)), None
    # accuracy: how much lower the candidate's is, among users with labels
    cl, kl = c.labelled > 0, k.labelled > 0
    if cl.sum() < MIN_ARM_USERS or kl.sum() < MIN_ARM_USERS:
        return None
    return proportions_apart(
        proportion(c.correct[cl], c.labelled[cl]), proportion(k.correct[kl], k.labelled[kl]), False
    )


def _moved(shares: dict[str, Decimal], candidate: str, to: Decimal) -> dict[str, Decimal]:
    """The split with the candidate at `to`. What it gains comes from the versions listed
    just before it, nearest first, so users only move into the candidate; what it gives
    back (a rollback) goes to the first version."""
    out = dict(shares)
    change = to - out[candidate]
    out[candidate] = to
    if change < 0:
        first = next(iter(out))
        out[first] -= change
        return out
    for version in reversed([v for v in out if v != candidate]):
        taken = min(out[version], change)
        out[version] -= taken
        change -= taken
        if change == 0:
            break
    return out


def guard_fields(g: Guard) -> dict[str, Any]:
    """A guardrail as the decision's JSON line shows it."""
    return {
        "diff": _num(g.worse),
        "ci95": [_num(g.ci95[0]), _num(g.ci95[1])],
        "bounds": [_num(g.bounds[0]), _num(g.bounds[1])],
        "p_value": _num(g.p_value),
        "violated": g.violated,
        "within": g.within,
    }


def _num(value: float) -> float | None:
    return round(value, 6) if math.isfinite(value) else None

"""A step's evidence: the randomised requests since the step began, the candidate's and the
control's (the other versions, pooled), summed per user.

The step began with the first `config_loaded` whose split gives the candidate its current
percent (after the last one that gave it another). Only requests routed by such a table
count: a replica still on the old table adds nothing to the new step. Labels are joined by
request id as they arrive, so late feedback counts as soon as it is in the logs.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

import numpy as np

from router.observe.values import same_value
from router.rollout.decide import Arm, Step
from router.rollout.logs import Records, Request


def step_of(records: Records, model: str, candidate: str, percent: Decimal) -> Step:
    started, configs = step_start(records, model, candidate, percent)
    if started is None:
        return Step(None, Arm.empty(), Arm.empty(), records.newest)
    mine: list[tuple[str, Request]] = []
    others: list[tuple[str, Request]] = []
    for rid, r in records.requests.get(model, {}).items():
        if r.at >= started and r.config in configs:
            (mine if r.version == candidate else others).append((rid, r))
    return Step(started, arm(mine, records.labels), arm(others, records.labels), records.newest)


def step_start(
    records: Records, model: str, candidate: str, percent: Decimal
) -> tuple[float | None, set[str]]:
    """When the current step began, and the digests of the tables that are in it."""
    started: float | None = None
    configs: set[str] = set()
    for table in sorted(records.tables.values(), key=lambda t: (t.at, t.config)):
        split = table.splits.get(model)
        share = Decimal(str(split.get(candidate, 0))) if split is not None else None
        if share == percent:
            started = table.at if started is None else started
            configs.add(table.config)
        else:
            started, configs = None, set()
    return started, configs


def arm(rows: Iterable[tuple[str, Request]], labels: dict[str, tuple[float, object]]) -> Arm:
    """Per-user sums of one arm's requests, and its latencies with their users."""
    codes: dict[str, int] = {}
    user, errors, labelled, correct = [], [], [], []
    latency, latency_user = [], []
    for rid, r in rows:
        u = codes.setdefault(r.unit, len(codes))
        user.append(u)
        errors.append(r.error)
        label = labels.get(rid)
        known = label is not None and r.prediction is not None
        labelled.append(known)
        correct.append(known and same_value(r.prediction, label[1]))  # type: ignore[index]
        if r.latency_ms is not None:
            latency.append(r.latency_ms)
            latency_user.append(u)
    if not user:
        return Arm.empty()
    users = np.asarray(user, dtype=np.int64)
    count = len(codes)

    def per_user(values: list[bool]) -> np.ndarray:
        return np.bincount(users, weights=np.asarray(values, dtype=np.float64), minlength=count)

    return Arm(
        n=np.bincount(users, minlength=count).astype(np.float64),
        errors=per_user(errors),
        labelled=per_user(labelled),
        correct=per_user(correct),
        latency=np.asarray(latency, dtype=np.float64),
        latency_user=np.asarray(latency_user, dtype=np.int64),
    )

"""A step's evidence: the randomised requests since the step began, the candidate's and the
control's (the other versions, pooled), summed per user by the report's own per-user pass.

The step began with the first `config_loaded` whose split gives the candidate its current
percent (after the last one that gave it another). Only requests routed by such a table
count: a replica still on the old table adds nothing to the new step. Labels are joined by
request id as they arrive, so late feedback counts as soon as it is in the logs.

What a user is, which label a request has, what counts as an error and as a correct answer
are the report's (issue 23: one definition): arms.py counts the step's requests with the
SQL of router/report/users.py, so the report and the controller never disagree about a user.
"""

from __future__ import annotations

from decimal import Decimal

from router.rollout.decide import Arm, Step
from router.rollout.logs import Records


def step_of(records: Records, model: str, candidate: str, percent: Decimal) -> Step:
    started, configs = step_start(records, model, candidate, percent)
    if started is None:
        return Step(None, Arm.empty(), Arm.empty(), records.newest)
    rows = [r for r in records.requests.get(model, {}).values() if r.at >= started]
    if not rows:
        return Step(started, Arm.empty(), Arm.empty(), records.newest)
    # DuckDB and the report's modules load once a step has requests to count: a controller
    # with nothing ramping stays as small as reading the logs (docs/rollout.md).
    from router.rollout.arms import arms

    mine, others = arms(rows, records.labels, model, candidate, configs)
    return Step(started, mine, others, records.newest)


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

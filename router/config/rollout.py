"""The `rollout` block of a model (contract section 9): what `check` validates, so that the
controller only ever ramps a table it can ramp safely."""

from __future__ import annotations

import itertools
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from router.config.model import (
    GUARDRAILS,
    ROLLOUT_STATES,
    Rollout,
    Split,
    Version,
    default_of,
    yaml_keys,
)
from router.config.reader import fmt, is_number, join, percent, show
from router.config.shadow import ShadowReader

_ROLLOUT = yaml_keys(Rollout)


class RolloutReader(ShadowReader):
    def rollout(
        self,
        section: dict[Any, Any],
        path: str,
        versions: dict[str, Version],
        split: Split | None,
    ) -> Rollout | None:
        if "rollout" not in section:
            return None
        where = f"{path}.rollout"
        found = self.mapping(section, "rollout", where, _ROLLOUT)
        if found is None:
            return None
        before = len(self.problems)
        candidate = self.version_ref(found, "candidate", where, versions, what="a candidate")
        steps = self._steps(found, where)
        if candidate is not None and split is not None:
            self._candidate_in_split(found, where, candidate, split, steps)
        guardrails = self._guardrails(found, where)
        step_s = self.number(found, "step_s", where, default_of(Rollout, "step_s"), positive=True)
        min_users = found.get("min_users", default_of(Rollout, "min_users"))
        if isinstance(min_users, bool) or not isinstance(min_users, int) or min_users < 1:
            self.fail(
                found,
                "min_users",
                join(where, "min_users"),
                f"must be a whole number of users, 1 or more, not {show(min_users)}",
            )
        alpha = found.get("alpha", default_of(Rollout, "alpha"))
        if not is_number(alpha) or not 0 < alpha < 0.5:
            self.fail(
                found,
                "alpha",
                join(where, "alpha"),
                f"must be a number above 0 and below 0.5, like 0.05, not {show(alpha)}",
            )
        state = self.choice(found, "state", where, ROLLOUT_STATES)
        if len(self.problems) > before or candidate is None or steps is None:
            return None
        return Rollout(
            candidate=candidate,
            steps=steps,
            guardrails=MappingProxyType(guardrails),
            step_s=step_s,
            min_users=int(min_users),
            alpha=float(alpha),
            state=state,  # type: ignore[arg-type]
        )

    def _steps(self, found: dict[Any, Any], where: str) -> tuple[Decimal, ...] | None:
        path = join(where, "steps")
        if "steps" not in found:
            self.fail(
                found,
                None,
                path,
                "is missing; list the candidate's percents, like [1, 5, 25, 50, 100]",
            )
            return None
        raw = found["steps"]
        steps = [percent(v) for v in raw] if isinstance(raw, list) else None
        if not raw or steps is None or any(s is None or s == 0 for s in steps):
            self.fail(
                found,
                "steps",
                path,
                "must be a list of percents above 0 and at most 100, with at most two "
                f"decimals, like [1, 5, 25, 50, 100], not {show(raw)}",
            )
            return None
        rising = [s for s in steps if s is not None]
        if any(b <= a for a, b in itertools.pairwise(rising)):
            self.fail(found, "steps", path, "must rise strictly, like [1, 5, 25, 50, 100]")
            return None
        return tuple(rising)

    def _candidate_in_split(
        self,
        found: dict[Any, Any],
        where: str,
        candidate: str,
        split: Split,
        steps: tuple[Decimal, ...] | None,
    ) -> None:
        path = join(where, "candidate")
        if split.versions[-1] != candidate:
            self.fail(
                found,
                "candidate",
                path,
                f"'{candidate}' must be listed last in the split (with 0 to start), so "
                "that a ramp only moves users into it",
            )
            return
        current = split.percents[-1]
        if steps is not None and current != 0 and current not in steps:
            self.fail(
                found,
                "candidate",
                path,
                f"'{candidate}' has {fmt(current)}% of the split, which is neither 0 nor "
                f"one of the steps ({', '.join(fmt(s) for s in steps)})",
            )

    def _guardrails(self, found: dict[Any, Any], where: str) -> dict[str, float]:
        path = join(where, "guardrails")
        if "guardrails" not in found:
            self.fail(
                found,
                None,
                path,
                "is missing; give at least one, like error_rate: {max_increase: 0.005}",
            )
            return {}
        section = self.mapping(found, "guardrails", path, tuple(GUARDRAILS))
        if section is None:
            return {}
        if not section:
            self.fail(
                found,
                "guardrails",
                path,
                "is empty; give at least one, like error_rate: {max_increase: 0.005}",
            )
        margins: dict[str, float] = {}
        for name, key in GUARDRAILS.items():
            if name not in section:
                continue
            inner = self.mapping(section, name, join(path, name), (key,))
            if inner is None:
                continue
            if key not in inner:
                if not inner:  # a misspelt key was reported already
                    self.fail(section, name, join(path, name), f"is missing {key}")
                continue
            margin = self.number(inner, key, join(path, name), 0.0, positive=True)
            if margin > 0:
                margins[name] = margin
        return margins

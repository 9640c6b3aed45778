"""The controller's loop: every interval, read the table and the new log lines, decide for
each model with a `rollout` block, apply, and say so in one JSON line per model.

Applying never loses a person's edit: the table file is read, the decision made on what was
read, and the file read again just before writing; if it changed meanwhile, nothing is
written and the next evaluation decides on the new text. The write is atomic (a file
beside it, then a rename), as routers expect of any edit.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from router.config.model import ConfigError, Model, Table
from router.config.validate import parse_text
from router.rollout.decide import Decision, decide, guard_fields
from router.rollout.edit import EditError, edit_table
from router.rollout.evidence import step_of
from router.rollout.logs import LogFollower, Records


class Controller:
    def __init__(
        self,
        config: Path,
        patterns: list[str] | None,
        interval_s: float,
        *,
        dry_run: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`patterns`: the logs to read (globs); None for the table's `log.path`."""
        self.config = config
        self.patterns = patterns
        self.interval_s = interval_s
        self.dry_run = dry_run
        self.clock = clock
        self.records = Records()
        self._follower: LogFollower | None = None

    def evaluate(self) -> list[dict[str, Any]]:
        """One round: the JSON line of each model with a rollout. Raises ConfigError when
        the table itself is invalid (nothing is decided on a table routers would refuse)."""
        text = self.config.read_text(encoding="utf-8")
        table = parse_text(text, str(self.config))
        follower = self._follower = self._follower or LogFollower(self.patterns or [table.log.path])
        rollouts = {name: m.rollout for name, m in table.models.items() if m.rollout}
        models = set(rollouts)
        ramping = {name for name, r in rollouts.items() if r.state is None}
        for record in follower.read():
            self.records.add(record, ramping)
        now = self.clock()
        lines, steps = [], {}
        for name in sorted(models):
            line, text, table, started = self._model(table.models[name], text, table, now)
            lines.append(line)
            if started is not None and name in ramping:
                steps[name] = started
        self.records.forget_before(steps)
        return lines

    def _model(
        self, model: Model, text: str, table: Table, now: float
    ) -> tuple[dict[str, Any], str, Table, float | None]:
        rollout = model.rollout
        assert rollout is not None
        shares = dict(model.split.shares())
        step = step_of(self.records, model.name, rollout.candidate, shares[rollout.candidate])
        decision = decide(rollout, model.split, step, now, self.interval_s)
        applied, note = False, ""
        if decision.changes(model.split) and not self.dry_run:
            try:
                text, table = self._apply(model.name, decision, text)
                applied = True
            except (EditError, ConfigError, _Changed) as exc:
                note = f"; not applied: {exc}"
        line = {
            "event": "rollout",
            "ts": _iso(now),
            "model": model.name,
            "candidate": rollout.candidate,
            "decision": decision.decision,
            "split_before": _numbers(shares),
            "split_after": _numbers(decision.split_after),
            "users": {"candidate": step.candidate.users, "control": step.control.users},
            "guardrails": {g: guard_fields(v) for g, v in decision.guardrails.items()},
            "reason": decision.reason + note,
            "step_started": _iso(step.started) if step.started is not None else None,
            "applied": applied,
            "dry_run": self.dry_run,
        }
        return line, text, table, step.started

    def _apply(self, model: str, decision: Decision, read: str) -> tuple[str, Table]:
        new, table = edit_table(read, model, decision.split_after, decision.state, str(self.config))
        if self.config.read_text(encoding="utf-8") != read:
            raise _Changed("the table file changed meanwhile; deciding again on the new one")
        _write_atomically(self.config, new)
        return new, table

    def run(self, once: bool, emit: Callable[[dict[str, Any]], None]) -> None:
        """Evaluate every interval (or once), handing each JSON line to `emit`."""
        while True:
            started = time.monotonic()
            for line in self.evaluate():
                emit(line)
            if once:
                return
            time.sleep(max(0.0, self.interval_s - (time.monotonic() - started)))


class _Changed(Exception):
    """The table file changed between reading it and writing the decision."""


def _write_atomically(path: Path, text: str) -> None:
    """Write beside the file, then rename over it: a reader sees the old or the new file,
    never half of one. The file keeps its permissions."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".rollout", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def dumps(line: dict[str, Any]) -> str:
    return orjson.dumps(line).decode()


def _numbers(shares: dict[str, Any]) -> dict[str, int | float]:
    return {v: int(p) if p == int(p) else float(p) for v, p in shares.items()}


def _iso(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"

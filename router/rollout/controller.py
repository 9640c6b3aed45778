"""The controller's loop: every interval, read the table and the new log lines, decide for
each model with a `rollout` block, apply, and say so in one JSON line per model.

It keeps running whatever it reads (contract section 13): a table that is momentarily
invalid (a person half-way through an edit) or missing, and log lines that are garbage,
make it hold, with the reason, and the next evaluation tries again.

Applying never loses a person's edit: the decision is made on the text read, the new text
is written beside the file, and the file's digest is compared with the one read right
before the rename. If a person edited it meanwhile, the new text is dropped and the
decision made again on the edited table. The write is atomic (a file beside it, then a
rename), as routers expect of any edit.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from router.config.model import ConfigError, Model, Table
from router.config.validate import parse_text
from router.rollout.decide import Arm, Decision, Step, decide, guard_fields
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
        self._table: Table | None = None  # the last valid table read
        self._ramping: set[str] = set()  # its models whose rollout runs (no `state`)

    def evaluate(self) -> list[dict[str, Any]]:
        """One round: the JSON line of each model with a rollout. A table that cannot be
        read or is invalid holds every rollout (those of the last valid table), with the
        reason: nothing is decided on a table routers would refuse."""
        now = self.clock()
        try:
            text, table = self._read()
        except (ConfigError, OSError, UnicodeDecodeError) as exc:
            self._take_logs()
            return self._held(f"the table cannot be used, holding: {_problem(exc)}", now)
        self._table = table
        garbage = self._take_logs()
        lines, steps = [], {}
        for name in [m.name for m in _rollouts(table)]:
            line, text, table, started = self._model(name, text, table, now, garbage)
            lines.append(line)
            if started is not None and name in self._ramping:
                steps[name] = started
        self._table = table  # as written, if a decision was applied
        self.records.forget_before(steps)
        return lines

    def _read(self) -> tuple[str, Table]:
        text = self.config.read_text(encoding="utf-8")
        return text, parse_text(text, str(self.config))

    def _take_logs(self) -> str:
        """Read the new log lines into the records; the reason to hold if some were garbage."""
        table = self._table
        if table is None:
            return ""
        follower = self._follower = self._follower or LogFollower(self.patterns or [table.log.path])
        rollouts = {name: m.rollout for name, m in table.models.items() if m.rollout}
        self._ramping = {name for name, r in rollouts.items() if r.state is None}
        bad = 0
        for record in follower.read():
            bad += not self.records.add(record, self._ramping, follower.place)
        garbage = follower.garbage
        if not (bad or garbage.lines):
            return ""
        first = f" (the first: {garbage.first})" if garbage.first else ""
        return (
            f"{garbage.lines + bad:,} log lines since the last evaluation are garbage and were"
            f" skipped{first}; holding this round"
        )

    def _held(self, reason: str, now: float) -> list[dict[str, Any]]:
        """Every rollout of the last valid table held with `reason`; one line if none."""
        if self._table is None:
            return [_line(now, _Verdict.nothing(reason), "", applied=False, dry_run=self.dry_run)]
        return [
            _line(now, self._verdict(model, now, hold=reason), "", False, self.dry_run)
            for model in _rollouts(self._table)
        ]

    def _verdict(
        self, model: Model, now: float, *, hold: str = "", but_rollback: bool = False
    ) -> _Verdict:
        """The decision for `model` on the evidence so far; a hold with `hold` if given,
        unless it is a rollback and `but_rollback` (garbage lines do not keep a candidate
        that hurts; a table in doubt cannot be written anyway)."""
        rollout = model.rollout
        assert rollout is not None
        shares = dict(model.split.shares())
        step = step_of(self.records, model.name, rollout.candidate, shares[rollout.candidate])
        decision = decide(rollout, model.split, step, now, self.interval_s)
        spared = but_rollback and decision.decision == "rollback"
        if hold and not spared:
            reason = hold if decision.changes(model.split) else f"{hold}; {decision.reason}"
            decision = Decision("hold", shares, None, reason, decision.guardrails)
        return _Verdict(model.name, rollout.candidate, shares, decision, step)

    def _model(
        self, name: str, text: str, table: Table, now: float, garbage: str
    ) -> tuple[dict[str, Any], str, Table, float | None]:
        """Decide for one model and apply; decided again on the new table each time a
        person's edit is found just before the rename (a few times at most)."""
        note, applied = "", False
        verdict = self._verdict(table.models[name], now, hold=garbage, but_rollback=True)
        for _ in range(_TRIES):
            if self.dry_run or not verdict.decision.changes(table.models[name].split):
                break
            try:
                text, table = self._apply(name, verdict.decision, text)
                applied = True
                break
            except (EditError, ConfigError) as exc:
                note += f"; not applied: {exc}"
                break
            except _Changed:
                edited = self._edited(name)
                if isinstance(edited, str):
                    note += f"; not applied: the table was edited meanwhile and {edited}"
                    break
                text, table = edited
                note = "; the table was edited meanwhile: decided again on the edited one"
                verdict = self._verdict(table.models[name], now, hold=garbage, but_rollback=True)
        else:
            note += "; not applied: the table kept changing, the next evaluation decides again"
        line = _line(now, verdict, note, applied, self.dry_run)
        return line, text, table, verdict.step.started

    def _edited(self, name: str) -> tuple[str, Table] | str:
        """The table as a person just edited it, or why it cannot be decided on."""
        try:
            text, table = self._read()
        except (ConfigError, OSError, UnicodeDecodeError) as exc:
            return f"cannot be used now ({_problem(exc)})"
        model = table.models.get(name)
        if model is None or model.rollout is None:
            return "no longer has this rollout"
        return text, table

    def _apply(self, model: str, decision: Decision, read: str) -> tuple[str, Table]:
        new, table = edit_table(read, model, decision.split_after, decision.state, str(self.config))
        _write_atomically(self.config, new, _digest(read.encode("utf-8")))
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


_TRIES = 3  # decisions made again on a table edited meanwhile, before leaving it a round


class _Changed(Exception):
    """The table file changed between reading it and writing the decision."""


def _write_atomically(path: Path, text: str, read: str) -> None:
    """Write beside the file, then rename over it: a reader sees the old or the new file,
    never half of one. The file keeps its permissions. Right before the rename, the file's
    digest must still be `read` (the text the decision was made on), else _Changed."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".rollout", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o7777)
        if _digest(path.read_bytes()) != read:
            raise _Changed("the table file changed after it was read")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _problem(exc: Exception) -> str:
    """The first line of what is wrong with the table, for a reason."""
    if isinstance(exc, ConfigError):
        messages = exc.messages()
        more = f" (and {len(messages) - 1} more)" if len(messages) > 1 else ""
        return f"{messages[0]}{more}" if messages else str(exc)
    if isinstance(exc, OSError):
        return f"{exc.filename}: {exc.strerror}"
    return str(exc)


@dataclass(frozen=True)
class _Verdict:
    """One model's decision, with what it was decided on."""

    model: str | None
    candidate: str | None
    shares: dict[str, Decimal]
    decision: Decision
    step: Step

    @classmethod
    def nothing(cls, reason: str) -> _Verdict:
        """No table has been valid yet: a hold of nothing, to say why."""
        none = Step(None, Arm.empty(), Arm.empty(), None)
        return cls(None, None, {}, Decision("hold", {}, None, reason), none)


def _rollouts(table: Table) -> list[Model]:
    return [table.models[name] for name in sorted(table.models) if table.models[name].rollout]


def _line(now: float, v: _Verdict, note: str, applied: bool, dry_run: bool) -> dict[str, Any]:
    """One model's JSON line (contract section 9)."""
    d, step = v.decision, v.step
    return {
        "event": "rollout",
        "ts": _iso(now),
        "model": v.model,
        "candidate": v.candidate,
        "decision": d.decision,
        "split_before": _numbers(v.shares),
        "split_after": _numbers(d.split_after),
        "users": {"candidate": step.candidate.users, "control": step.control.users},
        "guardrails": {g: guard_fields(guard) for g, guard in d.guardrails.items()},
        "reason": d.reason + note,
        "step_started": _iso(step.started) if step.started is not None else None,
        "applied": applied,
        "dry_run": dry_run,
    }


def dumps(line: dict[str, Any]) -> str:
    return orjson.dumps(line).decode()


def _numbers(shares: dict[str, Any]) -> dict[str, int | float]:
    return {v: int(p) if p == int(p) else float(p) for v, p in shares.items()}


def _iso(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"

"""Following the routing logs: every file a glob names (each replica's), new lines only,
rotated and gzipped files too, and what the controller needs of them kept in memory.

The controller keeps no database of its own: after a restart it reads the logs again and
ends up with the same records, so it takes the same decisions. Records are keyed (a
request by its id, a table by its time, process and digest), so a file read twice (a log
rotated, then compressed under a new name) changes nothing.
"""

from __future__ import annotations

import datetime as dt
import glob
import gzip
import os
from dataclasses import dataclass, field
from typing import Any

import orjson

from router.observe.record import ERROR_OUTCOMES, RANDOMISED


@dataclass(frozen=True, slots=True)
class Request:
    at: float  # epoch seconds
    version: str  # assigned_version
    config: str
    unit: str  # the user pseudonym, or the request id for a request without one
    error: bool
    latency_ms: float | None
    prediction: Any


@dataclass(frozen=True, slots=True)
class Loaded:
    """A `config_loaded` event: when, and each model's split in that table."""

    at: float
    config: str
    splits: dict[str, dict[str, float]]


@dataclass
class Records:
    """What the logs said so far, for the models being rolled out."""

    requests: dict[str, dict[str, Request]] = field(default_factory=dict)  # model -> id -> it
    labels: dict[str, tuple[float, Any]] = field(default_factory=dict)  # request id -> label
    tables: dict[tuple[float, Any, str], Loaded] = field(default_factory=dict)
    newest: float | None = None

    def add(self, record: dict[str, Any], models: set[str]) -> None:
        at = epoch(record.get("ts"))
        if at is None:
            return
        self.newest = at if self.newest is None else max(self.newest, at)
        event = record.get("event")
        if event == "request":
            self._request(record, at, models)
        elif event == "feedback" and isinstance(rid := record.get("request_id"), str):
            if rid not in self.labels or at >= self.labels[rid][0]:  # the latest wins
                self.labels[rid] = (at, record.get("label"))
        elif event == "config_loaded" and isinstance(record.get("config"), str):
            splits = {
                name: dict(entry.get("split") or {})
                for name, entry in (record.get("models") or {}).items()
                if isinstance(entry, dict)
            }
            key = (at, record.get("pid"), record["config"])
            self.tables[key] = Loaded(at, record["config"], splits)

    def _request(self, record: dict[str, Any], at: float, models: set[str]) -> None:
        model, rid = record.get("model"), record.get("request_id")
        version = record.get("assigned_version")
        if model not in models or not isinstance(rid, str) or not isinstance(version, str):
            return
        if record.get("assigned_by") not in RANDOMISED:
            return
        response = record.get("response")
        self.requests.setdefault(model, {})[rid] = Request(
            at=at,
            version=version,
            config=str(record.get("config")),
            unit=str(record.get("user") or rid),
            error=record.get("outcome") in ERROR_OUTCOMES,
            latency_ms=record.get("latency_ms"),
            prediction=response.get("prediction") if isinstance(response, dict) else None,
        )

    def forget_before(self, at: dict[str, float]) -> None:
        """Keep only what the current steps can use: each model's requests since its step
        began (`at`; decisions never look back past it, steps only move forward), and labels
        since the earliest of them (a label comes after its request). Models not in `at`
        (a finished rollout) keep nothing. Memory stays bounded by one step."""
        self.requests = {
            model: {rid: r for rid, r in kept.items() if r.at >= at[model]}
            for model, kept in self.requests.items()
            if model in at
        }
        if at:
            first = min(at.values())
            self.labels = {rid: label for rid, label in self.labels.items() if label[0] >= first}


@dataclass
class _File:
    offset: int = 0
    size: int = -1
    mtime: float = -1.0
    rest: bytes = b""


class LogFollower:
    """New lines of every file the patterns name, each file followed by its inode."""

    def __init__(self, patterns: list[str]) -> None:
        self.patterns = patterns
        self._files: dict[tuple[int, int], _File] = {}

    def read(self) -> list[dict[str, Any]]:
        """The records added since the last call (all of them, the first time)."""
        out: list[dict[str, Any]] = []
        for path in self._paths():
            try:
                out.extend(self._read(path))
            except (OSError, EOFError, gzip.BadGzipFile):
                continue  # rotated away meanwhile, or a .gz still being written
        return out

    def _paths(self) -> list[str]:
        found: list[str] = []
        for pattern in self.patterns:
            for path in sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]:
                if os.path.isfile(path) and path not in found:
                    found.append(path)
        return found

    def _read(self, path: str) -> list[dict[str, Any]]:
        st = os.stat(path)
        state = self._files.setdefault((st.st_dev, st.st_ino), _File())
        if path.endswith(".gz"):  # read whole, again only if it changed
            if (st.st_size, st.st_mtime) == (state.size, state.mtime):
                return []
            state.size, state.mtime = st.st_size, st.st_mtime
            with gzip.open(path, "rb") as f:
                return _parse(f.read().split(b"\n"))
        if st.st_size < state.offset:  # truncated (copytruncate): from the start again
            state.offset, state.rest = 0, b""
        with open(path, "rb") as f:
            f.seek(state.offset)
            data = f.read()
        state.offset += len(data)
        lines = (state.rest + data).split(b"\n")
        state.rest = lines.pop()  # a line still being written
        return _parse(lines)


def _parse(lines: list[bytes]) -> list[dict[str, Any]]:
    out = []
    for line in lines:
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def epoch(ts: Any) -> float | None:
    """RFC 3339 UTC (`2026-11-29T12:00:00.123Z`) as epoch seconds; None if it is not."""
    if not isinstance(ts, str):
        return None
    try:
        return dt.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None

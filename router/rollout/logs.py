"""Following the routing logs: every file a glob names (each replica's), new lines only,
rotated and gzipped files too, directories `logs compact` wrote, and what the controller
needs of them kept in memory.

The controller keeps no database of its own: after a restart it reads the logs again and
ends up with the same records, so it takes the same decisions. Records are keyed (a
request by its id, a table by its time, process and digest), so a file read twice (a log
rotated, then compressed under a new name) changes nothing.
"""

from __future__ import annotations

import datetime as dt
import glob
import gzip
import math
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from router.observe.parquet import ParquetError, files_in, is_parquet_dir, read_records
from router.observe.record import RANDOMISED


@dataclass(frozen=True, slots=True)
class Request:
    """The fields of a `request` record the report's per-user pass reads, as read.py reads
    them (texts, or None where the record has null), so that the controller's evidence is
    counted by the same SQL (evidence.py)."""

    at: float  # epoch seconds
    rid: str  # request_id
    version: str  # assigned_version
    assigned_by: str
    config: str | None
    user: str | None  # the unit is the user, else the request: read.py's UNIT decides
    outcome: str | None
    latency_ms: float | None
    prediction: Any  # response.prediction as parsed; ABSENT when the answer has none


ABSENT: Any = object()  # no `response.prediction` (JSON null is one: None)


@dataclass(frozen=True, slots=True)
class Loaded:
    """A `config_loaded` event: when, and each model's split in that table."""

    at: float
    config: str
    splits: dict[str, dict[str, float]]


@dataclass
class Records:
    """What the logs said so far, for the models being rolled out."""

    # model -> request id -> the request; (id, time) for a second request under an id
    requests: dict[str, dict[str | tuple[str, float], Request]] = field(default_factory=dict)
    # request id -> (time, place, label): the latest by `ts`, on a tie the later line (the
    # report's rule, read.py): the later file in the report's order of the files (`place`,
    # LogFollower.place), else the line read later; a null label is the latest too, and
    # then there is none
    labels: dict[str, tuple[float, int, Any]] = field(default_factory=dict)
    tables: dict[tuple[float, Any, str], Loaded] = field(default_factory=dict)
    newest: float | None = None
    # One copy of each version, digest and user pseudonym, however many requests name it:
    # a step of millions of requests keeps about half the memory (docs/rollout.md).
    _strings: dict[str, str] = field(default_factory=dict)

    def add(self, record: dict[str, Any], models: set[str], place: int = 0) -> bool:
        """Take one record in; False if it is garbage (a known event whose fields have the
        wrong types), which the caller counts: it is skipped, never fatal. `place`: where
        its file comes in the order of the files (LogFollower.place)."""
        at = epoch(record.get("ts"))
        if at is None:
            return False
        event = record.get("event")
        if event == "request":
            ok = self._request(record, at, models)
        elif event == "feedback":
            ok = self._feedback(record, at, models, place)
        elif event == "config_loaded":
            ok = self._loaded(record, at)
        else:
            ok = True  # an event the controller does not use
        if ok:
            self.newest = at if self.newest is None else max(self.newest, at)
        return ok

    def _feedback(self, record: dict[str, Any], at: float, models: set[str], place: int) -> bool:
        rid = record.get("request_id")
        if not isinstance(rid, str):
            return False
        if not models:  # nothing is being ramped: no label is needed
            return True
        # Whatever model the label names: the report joins it by request id alone.
        old = self.labels.get(rid)
        if old is None or (at, place) >= (old[0], old[1]):  # the latest, the later line
            self.labels[rid] = (at, place, record.get("label"))
        return True

    def _loaded(self, record: dict[str, Any], at: float) -> bool:
        config, models = record.get("config"), record.get("models") or {}
        if not isinstance(config, str) or not isinstance(models, dict):
            return False
        splits: dict[str, dict[str, float]] = {}
        for name, entry in models.items():
            split = entry.get("split") if isinstance(entry, dict) else None
            if split is None:
                continue
            if not isinstance(split, dict) or not all(_number(p) for p in split.values()):
                return False
            splits[name] = dict(split)
        self.tables[(at, record.get("pid"), config)] = Loaded(at, config, splits)
        return True

    def _request(self, record: dict[str, Any], at: float, models: set[str]) -> bool:
        model, rid = record.get("model"), record.get("request_id")
        version = record.get("assigned_version")
        if model not in models or record.get("assigned_by") not in RANDOMISED:
            return True  # not evidence for a rollout in progress
        latency = record.get("latency_ms")
        if not isinstance(rid, str) or not isinstance(version, str):
            return False
        if latency is not None and not _number(latency):
            return False
        response = record.get("response")
        prediction = response.get("prediction", ABSENT) if isinstance(response, dict) else ABSENT
        kept = self.requests.setdefault(model, {})
        key: str | tuple[str, float] = rid
        if (old := kept.get(rid)) is not None and old.at != at:
            key = (rid, at)  # another request under this id (the report counts both)
        once = self._strings.setdefault
        kept[key] = Request(
            at=at,
            rid=rid,
            version=once(version, version),
            assigned_by=once(by := record["assigned_by"], by),
            config=self._once(text(record.get("config"))),
            user=self._once(text(record.get("user"))),
            outcome=self._once(text(record.get("outcome"))),
            latency_ms=latency,
            prediction=prediction,
        )
        return True

    def _once(self, value: str | None) -> str | None:
        return None if value is None else self._strings.setdefault(value, value)

    def forget_before(self, at: dict[str, float]) -> None:
        """Keep only what the current steps can use: each model's requests since its step
        began (`at`; decisions never look back past it, steps only move forward), and labels
        since the earliest of them (a label comes after its request), of any model (the
        report joins a label by request id alone). Models not in `at` (a finished rollout,
        or one whose step no router has loaded yet) keep nothing; with none in `at`, no
        label is kept either. Memory stays bounded by one step."""
        self.requests = {
            model: {rid: r for rid, r in kept.items() if r.at >= at[model]}
            for model, kept in self.requests.items()
            if model in at
        }
        first = min(at.values(), default=math.inf)
        self.labels = {rid: label for rid, label in self.labels.items() if label[0] >= first}
        self._strings.clear()  # copies still in use stay alive where they are used


BLOCK = 1 << 20  # bytes read at a time: memory holds one block and one line, whatever the log


@dataclass
class _File:
    offset: int = 0
    size: int = -1
    mtime: float = -1.0
    rest: bytes = b""


@dataclass
class Garbage:
    """Lines that are not a JSON object, counted per read, with the first one's place."""

    lines: int = 0
    first: str = ""

    def saw(self, path: str, line: bytes) -> None:
        if not self.lines:
            shown = line[:60].decode("utf-8", "replace")
            self.first = f"{path}: {shown!r}"
        self.lines += 1


class LogFollower:
    """New lines of every file the patterns name, each file followed by its inode, read a
    block at a time (the first read of a day's log is gigabytes: never held whole)."""

    def __init__(self, patterns: list[str]) -> None:
        self.patterns = patterns
        self._files: dict[tuple[int, int], _File] = {}
        self._parquet: set[str] = set()  # the files of compacted directories read so far
        self.garbage = Garbage()  # of the last read
        # Where the file of the record just read comes in the order of the files (the
        # report's, read.py's `expand`): a tie between two labels goes to the later file,
        # whichever was read first.
        self.place = 0

    def read(self) -> Iterator[dict[str, Any]]:
        """The records added since the last call (all of them, the first time), one by one."""
        self.garbage = Garbage()
        for place, path in enumerate(self._paths()):
            self.place = place
            try:
                yield from self._read(path)
            except (OSError, EOFError, gzip.BadGzipFile, zlib.error, ParquetError):
                continue  # rotated away meanwhile, or a .gz (a .parquet) still being written

    def _paths(self) -> list[str]:
        found: list[str] = []
        for pattern in self.patterns:
            for path in sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]:
                if (os.path.isfile(path) or is_parquet_dir(path)) and path not in found:
                    found.append(path)
        return found

    def _read(self, path: str) -> Iterator[dict[str, Any]]:
        if os.path.isdir(path) or path.endswith(".parquet"):
            yield from self._read_parquet(path)
            return
        st = os.stat(path)
        state = self._files.setdefault((st.st_dev, st.st_ino), _File())
        if path.endswith(".gz"):  # read all of it, again only if it changed
            if (st.st_size, st.st_mtime) == (state.size, state.mtime):
                return
            state.size, state.mtime = st.st_size, st.st_mtime
            with gzip.open(path, "rb") as f:
                rest = b""
                while block := f.read(BLOCK):
                    lines = (rest + block).split(b"\n")
                    rest = lines.pop()
                    yield from self._parse(path, lines)
                yield from self._parse(path, [rest])
            return
        if st.st_size < state.offset:  # truncated (copytruncate): from the start again
            state.offset, state.rest = 0, b""
        with open(path, "rb") as f:
            f.seek(state.offset)
            while block := f.read(BLOCK):
                state.offset += len(block)
                lines = (state.rest + block).split(b"\n")
                state.rest = lines.pop()  # a line still being written
                yield from self._parse(path, lines)

    def _read_parquet(self, path: str) -> Iterator[dict[str, Any]]:
        """The records of a directory `logs compact` wrote (contract section 14), or of one
        of its files, from the files not read yet, in line order. Its files are written once
        under new names and never changed, so each is read once. DuckDB (in the `rollout`
        extra, as in `report`) reads them."""
        found = files_in(path) if os.path.isdir(path) else [path]
        new = [f for f in found if f not in self._parquet]
        if not new:
            return
        yield from read_records(new)
        self._parquet.update(new)  # only once read whole: else again next time, harmlessly

    def _parse(self, path: str, lines: list[bytes]) -> Iterator[dict[str, Any]]:
        for line in lines:
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                self.garbage.saw(path, line)
                continue
            if isinstance(record, dict):
                yield record
            else:
                self.garbage.saw(path, line)


def text(value: Any) -> str | None:
    """A field as read.py reads it into a VARCHAR column: a string as it is, null as null,
    any other JSON value as its compact JSON text (a user id of 12 is "12")."""
    if value is None or isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def epoch(ts: Any) -> float | None:
    """RFC 3339 UTC (`2026-11-29T12:00:00.123Z`) as epoch seconds; None if it is not."""
    if not isinstance(ts, str):
        return None
    try:
        return dt.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None

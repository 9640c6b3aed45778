"""Write a realistic synthetic routing log (contract section 5), fast enough for millions of lines.

    python bench/gen_logs.py OUT [--records N] [--seed S] [--gzip] [--models cancer,books]
                                 [--bad-lines K] [--feedback-share 0.3] [--v2-error-rate 0.012]
                                 [--srm] [--users 200000] [--first-byte]

What a day of traffic through the router looks like in its log:

- a `config_loaded` event first, and a second one half-way through the requests: a ramp of each
  model's candidate `v2` (10% -> 20% of users), with its own digest, so records carry two
  `config` digests and a report must match each record with the split that was in force;
- `request` records shaped exactly as `router.observe.record.Exchange.record` writes them
  (same keys in the same order, floats as orjson prints them), with arrival times over one
  day following a daily cycle; users from a pool, each a heavy or a light user, bucketed
  with the contract's MurmurHash3 formula and logged as the router's default pseudonym
  (SHA-256, 16 hex);
- who decides the version: the split (~85%), no user id (~5%, a random bucket), a pinned path
  (~5%), an `X-Model-Version` header (~3%), a rule (~2%); ~0.2% of requests fall back to `v1`
  (the candidate is marked down for a 10 s cool-off, or its connection failed);
- outcomes and statuses as the router maps them, a lognormal latency per version, predictions
  in `response`, and `feedback` events for a share of the answered requests, whose labels agree
  with the predictions of v1 ~93% and of v2 ~95% of the time.

`--first-byte` adds `first_byte_ms` to each request record (contract section 11: the time to the
first byte of the answer's body, the first token of a streamed one; null without an answer from
a backend), after `config` (`Exchange.record` also writes `protocol` between them, which this
generator leaves out); v2 sends its first byte later in its answer than v1. Without the flag
the records are byte for byte those of earlier versions of this generator.

`--srm` drops the v2 records of 5% of v2's split users (as if their client broke on v2), so
the observed split no longer matches the split in force. `--bad-lines K` adds K lines that are
not JSON (truncated records, random bytes shown as text) at random places; the requests are the
same with or without them.

Speed: everything is drawn with NumPy, and lines are built as rows of a byte matrix, one
column block per field, NUL-padded; deleting the NUL bytes leaves the JSON lines. No Python
code runs per record.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import itertools
import math
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import mmh3
import numpy as np
import numpy.typing as npt
import orjson

U8 = npt.NDArray[np.uint8]
I8 = npt.NDArray[np.int8]
I16 = npt.NDArray[np.int16]
I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]
Ints = npt.NDArray[np.integer[Any]]

BUCKETS = 10_000
DAY_MS = 86_400_000
START_DAY = np.datetime64("2026-11-25", "D")
CHUNK_LINES = 1 << 16  # lines formatted at once: ~30 MB of byte matrix
THREADS = max(2, min(4, os.cpu_count() or 2))  # threads formatting chunks
SOURCE = "config/routes.yaml"

# How a version was chosen (contract section 3), and how often.
ASSIGNED_BY = ("split", "no_user_random", "pinned", "header", "rule")
ASSIGNED_BY_P = (0.85, 0.05, 0.05, 0.03, 0.02)
SPLIT, NO_USER_RANDOM, PINNED, HEADER, RULE = range(5)

OUTCOMES = ("ok", "client_error", "server_error", "timeout", "unavailable", "client_closed")
OK, CLIENT_ERROR, SERVER_ERROR, TIMEOUT, UNAVAILABLE, CLIENT_CLOSED, REJECTED = range(7)
REJECTED_SHARE = 0.005
# Rates of the failures other than server errors, for every version.
CLIENT_ERROR_RATE, TIMEOUT_RATE, UNAVAILABLE_RATE, CLIENT_CLOSED_RATE = 0.02, 0.002, 0.001, 0.001

# Per version, by index (v1, v2, v3): what the backends are like.
LATENCY_MEDIAN_MS = (10.0, 12.0, 11.0)
LATENCY_SIGMA = 0.35
# Per version: the share of the backend's time spent before the first byte of its answer
# (--first-byte): a streamed answer's first token comes early, v2's a little later.
FIRST_BYTE_SHARE = (0.25, 0.35, 0.3)
ACCURACY = (0.93, 0.95, 0.94)
SERVER_ERROR_RATE = (0.010, 0.012, 0.011)  # v2's is --v2-error-rate
POSITIVE_SHARE = 0.627  # share of label 1 (benign) in scikit-learn's breast-cancer data

# A candidate version is marked down after failures for this long (outlier cool-off), and
# its traffic goes to the fallback, v1; about 0.8% of the day: with connection failures,
# ~0.9% of the candidates' requests, ~0.2% of all.
COOLOFF_MS = 10_000
DOWN_TIME_SHARE = 0.008
CONNECT_FAILURE_RATE = 0.001  # a candidate's connection fails: fallback too

SRM_DROPPED_USERS = 0.05

# Requests the router refuses itself: (kind, share among refusals, status).
REFUSALS = (
    ("unknown_model", 0.3, 404),
    ("unknown_version", 0.2, 404),
    ("bad_feedback", 0.2, 400),
    ("body_too_large", 0.1, 413),
    ("bad_path", 0.2, 400),
)
TYPOS = ("cancr", "bokos", "fraud", "predict")  # unknown models (unless --models names one)


@dataclass(frozen=True)
class ModelSpec:
    """One model of the routing table: its versions and its split before and after the ramp."""

    name: str
    versions: tuple[str, ...]
    before: tuple[int, ...]
    after: tuple[int, ...]
    timeout_ms: tuple[int, ...]

    @property
    def salt(self) -> str:
        return f"{self.name}-2026-11"

    def split(self, phase: int) -> dict[str, int]:
        """Percent of users per version in the first table (phase 0) or after the ramp."""
        return dict(zip(self.versions, self.after if phase else self.before, strict=True))

    def edges(self, phase: int) -> I64:
        """First bucket past each version, as `router.config.model.Split` lays the split out."""
        percents = np.array(self.after if phase else self.before, dtype=np.int64)
        edges: I64 = np.cumsum(percents * (BUCKETS // 100))
        return edges


def model_specs(names: Sequence[str]) -> list[ModelSpec]:
    """The first model has v1 and v2, as in `make run`; each other model has a v3 as well."""
    specs = []
    for i, name in enumerate(names):
        if i == 0:
            specs.append(ModelSpec(name, ("v1", "v2"), (90, 10), (80, 20), (10_000, 2_000)))
        else:
            specs.append(
                ModelSpec(name, ("v1", "v2", "v3"), (80, 10, 10), (70, 20, 10), (10_000,) * 3)
            )
    return specs


def model_weights(count: int) -> F64:
    """Each model gets 60% of the traffic of the one before it."""
    weights: F64 = 0.6 ** np.arange(count, dtype=np.float64)
    shares: F64 = weights / weights.sum()
    return shares


def user_ids(count: int) -> list[str]:
    """The raw user ids of the pool (what clients send in X-User-ID)."""
    return [f"user-{i:07d}" for i in range(count)]


def pseudonym(user_id: str) -> str:
    """The router's `user` field with `user_ids: hash` and no ROUTER_USER_ID_KEY."""
    return hashlib.sha256(user_id.encode("utf-8")).hexdigest()[:16]


def bucket(user_id: str, salt: str) -> int:
    """Contract section 3."""
    h: int = mmh3.hash((user_id + salt).encode("utf-8"), seed=1, signed=False)
    return (h * BUCKETS) >> 32


@dataclass(frozen=True)
class Settings:
    out: Path
    records: int
    seed: int
    models: tuple[str, ...]
    bad_lines: int
    feedback_share: float
    v2_error_rate: float
    srm: bool
    users: int
    gzip: bool
    first_byte: bool = False


@dataclass
class Requests:
    """One entry per request record; -1 stands for null in the index columns."""

    ts: I64  # ms since START_DAY
    rid: U8  # (n, 16) random bytes, shaped as uuid4
    model: I8
    version: I8
    assigned: I8
    by: I8
    bucket: I16
    user: I32
    path: I32
    status: I16
    outcome: I8
    latency_us: I64
    upstream_us: I64
    first_byte_us: I64
    config: I8
    truth: I8
    prediction: I8

    @classmethod
    def empty(cls, ts: I64, switch_ms: int) -> Requests:
        """Requests arriving at `ts`, each with the table in force then; the rest is drawn."""
        n = len(ts)
        nulls = np.full(n, -1, dtype=np.int8)
        return cls(
            ts=ts, rid=np.zeros((n, 16), dtype=np.uint8), model=nulls.copy(),
            version=nulls.copy(), assigned=nulls.copy(), by=nulls.copy(),
            bucket=np.full(n, -1, dtype=np.int16), user=np.full(n, -1, dtype=np.int32),
            path=np.full(n, -1, dtype=np.int32), status=np.zeros(n, dtype=np.int16),
            outcome=np.full(n, OK, dtype=np.int8), latency_us=np.zeros(n, dtype=np.int64),
            upstream_us=np.full(n, -1, dtype=np.int64),
            first_byte_us=np.full(n, -1, dtype=np.int64), config=(ts >= switch_ms).astype(np.int8),
            truth=nulls.copy(), prediction=nulls.copy(),
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.ts)

    def take(self, rows: I64) -> Requests:
        return Requests(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})


@dataclass
class Feedback:
    request: I64  # row in Requests
    ts: I64
    label: I8


class Paths:
    """Every `path` a record can carry, as one table; records hold an index into it."""

    def __init__(self, specs: Sequence[ModelSpec]) -> None:
        self.names: list[str] = []
        self.predict = [self._add(f"/models/{m.name}/predict") for m in specs]
        self.pinned = [
            [self._add(f"/models/{m.name}/versions/{v}/predict") for v in m.versions] for m in specs
        ]
        self.refused = {
            "unknown_version": [self._add(f"/models/{m.name}/versions/v9/predict") for m in specs],
            "bad_feedback": [self._add(f"/feedback/{m.name}") for m in specs],
            "bad_path": [self._add(f"/models/{m.name}/../admin/config") for m in specs],
        }
        names = {m.name for m in specs}
        unknown = [t for t in TYPOS if t not in names] or ["no-such-model"]
        self.typos = [self._add(f"/models/{t}/predict") for t in unknown]

    def _add(self, path: str) -> int:
        self.names.append(path)
        return len(self.names) - 1


# --- drawing the requests ---


def draw_times(rng: np.random.Generator, n: int) -> I64:
    """Sorted arrival times over one day, busiest mid-afternoon, quietest at 3 am (4:1)."""
    minutes = np.arange(1440)
    weights = 1 + 0.6 * np.sin(2 * np.pi * (minutes / 1440 - 0.375))
    minute = rng.choice(1440, size=n, p=weights / weights.sum())
    ts = minute * 60_000 + rng.integers(0, 60_000, n)
    ts.sort()
    return ts.astype(np.int64)


def request_ids(rng: np.random.Generator, n: int) -> U8:
    """128 random bits each, with uuid4's version and variant bits (the router uses uuid4)."""
    rid = rng.integers(0, 256, (n, 16), dtype=np.uint8)
    rid[:, 6] = (rid[:, 6] & 0x0F) | 0x40
    rid[:, 8] = (rid[:, 8] & 0x3F) | 0x80
    return rid


def user_activity(rng: np.random.Generator, users: int) -> F64:
    """How much each user of the pool uses the service: lognormal, a few heavy users."""
    activity = rng.lognormal(0.0, 1.0, users)
    shares: F64 = activity / activity.sum()
    return shares


def assign(
    rng: np.random.Generator,
    r: Requests,
    specs: Sequence[ModelSpec],
    buckets: I16,
    activity: F64,
) -> None:
    """Model, user, bucket and assigned version, as `router.routing.choose` picks them."""
    n = len(r)
    r.model = rng.choice(len(specs), size=n, p=model_weights(len(specs))).astype(np.int8)
    r.by = rng.choice(len(ASSIGNED_BY), size=n, p=ASSIGNED_BY_P).astype(np.int8)
    r.user = rng.choice(len(activity), size=n, p=activity).astype(np.int32)
    anonymous = (r.by == NO_USER_RANDOM) | ((r.by == PINNED) & (rng.random(n) < 0.5))
    r.user[anonymous] = -1
    split = r.by == SPLIT
    r.bucket[split] = buckets[r.model[split], r.user[split]]
    random = r.by == NO_USER_RANDOM
    r.bucket[random] = rng.integers(0, BUCKETS, int(random.sum()))
    for m, spec in enumerate(specs):
        for phase in (0, 1):
            rows = (split | random) & (r.model == m) & (r.config == phase)
            r.assigned[rows] = np.searchsorted(spec.edges(phase), r.bucket[rows], side="right")
        count = len(spec.versions)
        rows = (r.by == PINNED) & (r.model == m)  # old apps pin v1
        pinned_p = np.full(count, 0.3 / (count - 1))
        pinned_p[0] = 0.7
        r.assigned[rows] = rng.choice(count, size=int(rows.sum()), p=pinned_p)
        rows = (r.by == HEADER) & (r.model == m)  # testers name any version
        r.assigned[rows] = rng.integers(0, count, int(rows.sum()))
    r.assigned[r.by == RULE] = 1  # the beta testers' rule sends them to v2


def srm_keep(rng: np.random.Generator, r: Requests, users: int) -> Bools:
    """Rows kept with --srm: every v2 split record of 5% of the users is lost."""
    dropped_users = rng.random(users) < SRM_DROPPED_USERS
    lost = (r.by == SPLIT) & (r.assigned == 1) & dropped_users[r.user]
    keep: Bools = ~lost
    return keep


def down_windows(rng: np.random.Generator, ts: I64) -> Bools:
    """For each arrival, whether a given candidate version is marked down at that moment."""
    starts = np.sort(rng.integers(0, DAY_MS, rng.poisson(DOWN_TIME_SHARE * DAY_MS / COOLOFF_MS)))
    last = np.searchsorted(starts, ts, side="right") - 1
    inside: Bools = (last >= 0) & (ts < starts[np.maximum(last, 0)] + COOLOFF_MS)
    return inside


def outcome_table(v2_error_rate: float) -> F64:
    """Cumulative probabilities of client_error .. client_closed for each answering version.

    Only v1 ever ends `unavailable`: the candidates' connection failures go to the fallback.
    """
    rows = []
    for v, server_error in enumerate(SERVER_ERROR_RATE):
        server_error = v2_error_rate if v == 1 else server_error
        unavailable = UNAVAILABLE_RATE if v == 0 else 0.0
        rows.append(
            [CLIENT_ERROR_RATE, server_error, TIMEOUT_RATE, unavailable, CLIENT_CLOSED_RATE]
        )
    return np.cumsum(np.array(rows), axis=1)


def draw_outcomes(
    rng: np.random.Generator, r: Requests, specs: Sequence[ModelSpec], v2_error_rate: float
) -> None:
    """Fallbacks, outcomes and statuses of the requests that reach a backend."""
    n = len(r)
    forwarded = r.outcome != REJECTED
    candidate = forwarded & (r.assigned > 0)
    fallback = candidate & (rng.random(n) < CONNECT_FAILURE_RATE)
    for m, spec in enumerate(specs):
        for v in range(1, len(spec.versions)):
            rows = candidate & (r.model == m) & (r.assigned == v)
            fallback[rows] |= down_windows(rng, r.ts[rows])
    r.version[forwarded] = r.assigned[forwarded]
    r.version[fallback] = 0
    cumulative = outcome_table(v2_error_rate)
    u = rng.random(n)
    k = (u[:, None] >= cumulative[np.maximum(r.version, 0)]).sum(axis=1)
    code = np.array([CLIENT_ERROR, SERVER_ERROR, TIMEOUT, UNAVAILABLE, CLIENT_CLOSED, OK])
    r.outcome[forwarded] = code[k[forwarded]]
    status = {OK: 200, TIMEOUT: 504, UNAVAILABLE: 502, CLIENT_CLOSED: 499}
    for outcome, code_ in status.items():
        r.status[r.outcome == outcome] = code_
    for outcome, choices, p in (
        (CLIENT_ERROR, (400, 404, 422), (0.35, 0.05, 0.6)),
        (SERVER_ERROR, (500, 503), (0.85, 0.15)),
    ):
        rows = r.outcome == outcome
        r.status[rows] = rng.choice(choices, size=int(rows.sum()), p=p)


def refuse(rng: np.random.Generator, r: Requests, paths: Paths) -> None:
    """~0.5% of the requests are refused by the router: no version; some before any choice."""
    n = len(r)
    refused = np.flatnonzero(rng.random(n) < REJECTED_SHARE)
    kind = rng.choice(len(REFUSALS), size=len(refused), p=[p for _, p, _ in REFUSALS])
    r.outcome[refused] = REJECTED
    for k, (name, _, status) in enumerate(REFUSALS):
        rows = refused[kind == k]
        r.status[rows] = status
        if name != "body_too_large":  # refused before a version was chosen
            r.assigned[rows] = r.by[rows] = r.bucket[rows] = r.user[rows] = -1
        if name == "unknown_model":
            r.model[rows] = -1
            r.path[rows] = rng.choice(paths.typos, size=len(rows))
        elif name in paths.refused:
            r.path[rows] = np.array(paths.refused[name])[r.model[rows]]


def draw_latency(rng: np.random.Generator, r: Requests, specs: Sequence[ModelSpec]) -> None:
    """Time in the backend (lognormal per version, a slow tail) and in the router, in µs."""
    n = len(r)
    median = np.array(LATENCY_MEDIAN_MS)[np.maximum(r.version, 0)]
    backend = median * rng.lognormal(0.0, LATENCY_SIGMA, n)
    slow = rng.random(n) < 0.03
    backend[slow] *= rng.lognormal(math.log(4), 0.6, int(slow.sum()))
    backend[r.outcome == CLIENT_ERROR] *= 0.4  # the model refuses bad input quickly
    backend[r.outcome == SERVER_ERROR] *= 1.3
    timeouts = np.array([list(s.timeout_ms) + [10_000] * (3 - len(s.versions)) for s in specs])
    rows = r.outcome == TIMEOUT
    backend[rows] = timeouts[r.model[rows], r.version[rows]] + rng.uniform(0.5, 3.0, rows.sum())
    overhead = 0.25 * rng.lognormal(0.0, 0.5, n)
    upstream = np.round(backend * 1000).astype(np.int64)
    r.latency_us = upstream + np.maximum(np.round(overhead * 1000), 1).astype(np.int64)
    no_answer = np.isin(r.outcome, (UNAVAILABLE, CLIENT_CLOSED, REJECTED))
    r.upstream_us = np.where(no_answer, -1, upstream)
    rows = r.outcome == UNAVAILABLE  # connection refused: fast
    r.latency_us[rows] = np.round(1200 * rng.lognormal(0.0, 0.5, rows.sum()))
    rows = r.outcome == CLIENT_CLOSED  # the client gave up waiting
    r.latency_us[rows] *= 3
    rows = r.outcome == REJECTED
    r.latency_us[rows] = np.round(120 * rng.lognormal(0.0, 0.5, rows.sum())) + 1
    r.latency_us = np.minimum(r.latency_us, 999_999_999)


def draw_first_byte(r: Requests) -> None:
    """Time to the first byte of an answer, in µs: the router's overhead and the share of
    the backend's time its version spends before its first byte; -1 (null) without an
    answer from a backend or after a timeout. No draw: the other fields stay as they were."""
    share = np.array(FIRST_BYTE_SHARE)[np.maximum(r.version, 0)]
    rest = np.round(np.maximum(r.upstream_us, 0) * (1 - share)).astype(np.int64)
    answered = (r.upstream_us >= 0) & (r.outcome != TIMEOUT)
    r.first_byte_us = np.where(answered, np.maximum(r.latency_us - rest, 1), -1)


def draw_predictions(rng: np.random.Generator, r: Requests) -> None:
    """A true label per request, and the answering version's prediction on ok answers."""
    n = len(r)
    r.truth = (rng.random(n) < POSITIVE_SHARE).astype(np.int8)
    correct = rng.random(n) < np.array(ACCURACY)[np.maximum(r.version, 0)]
    prediction = np.where(correct, r.truth, 1 - r.truth).astype(np.int8)
    r.prediction = np.where(r.outcome == OK, prediction, -1).astype(np.int8)


def draw_feedback(rng: np.random.Generator, r: Requests, share: float) -> Feedback:
    """Ground truth for a share of the answered requests, a minute to hours later."""
    rows = np.flatnonzero((r.outcome == OK) & (rng.random(len(r)) < share))
    delay = rng.lognormal(math.log(90_000), 1.2, len(rows))
    ts = r.ts[rows] + np.maximum(np.round(delay), 1_000).astype(np.int64)
    return Feedback(rows.astype(np.int64), ts, r.truth[rows])


def draw(
    rng: np.random.Generator, s: Settings, specs: Sequence[ModelSpec], buckets: I16
) -> tuple[Requests, Feedback, int]:
    """All requests and feedback; and the time the second table comes into force."""
    # --srm loses ~1% of the requests: draw a few more, then keep a random N of the rest.
    drawn = s.records + (math.ceil(s.records * 0.02) + 100 if s.srm else 0)
    ts = draw_times(rng, drawn)
    switch_ms = int(ts[drawn // 2])
    r = Requests.empty(ts, switch_ms)
    assign(rng, r, specs, buckets, user_activity(rng, s.users))
    if s.srm:
        kept = np.flatnonzero(srm_keep(rng, r, s.users))
        r = r.take(np.sort(rng.choice(kept, size=min(s.records, len(kept)), replace=False)))
    r.rid = request_ids(rng, len(r))
    paths = Paths(specs)
    r.path = np.array(paths.predict, dtype=np.int32)[r.model]
    pinned = r.by == PINNED
    by_version = np.array([row + [row[0]] * (3 - len(row)) for row in paths.pinned])
    r.path[pinned] = by_version[r.model[pinned], r.assigned[pinned]]
    refuse(rng, r, paths)
    draw_outcomes(rng, r, specs, s.v2_error_rate)
    draw_latency(rng, r, specs)
    draw_first_byte(r)
    draw_predictions(rng, r)
    return r, draw_feedback(rng, r, s.feedback_share), switch_ms


# --- formatting lines as rows of a byte matrix ---

HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
NULL = b"null"


def table(values: Sequence[bytes]) -> U8:
    """Byte strings as the rows of a NUL-padded matrix, for picking rows by index."""
    width = max(1, *(len(v) for v in values))
    joined = b"".join(v.ljust(width, b"\0") for v in values)
    return np.frombuffer(joined, dtype=np.uint8).reshape(len(values), width)


def const(text: bytes, n: int) -> U8:
    return np.broadcast_to(np.frombuffer(text, dtype=np.uint8), (n, len(text)))


def digits(values: Ints, width: int, pad: bool = False) -> U8:
    """Decimal digits of non-negative ints, right-aligned; leading zeros become NUL unless
    `pad` (one digit always stays)."""
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    column = values.astype(np.int64)[:, None]
    out = (column // powers % 10 + 48).astype(np.uint8)
    if not pad:
        out[(column < powers) & (powers > 1)] = 0
    return out


def nullable(formatted: U8, null: Bools) -> U8:
    """`null` on the rows where the value is missing."""
    width = max(formatted.shape[1], len(NULL))
    out = np.zeros((len(formatted), width), dtype=np.uint8)
    out[:, : formatted.shape[1]] = formatted
    out[null] = 0
    out[null, : len(NULL)] = table([NULL])[0]
    return out


def millis(us: I64) -> U8:
    """Microseconds as the JSON float orjson writes for `round(ms, 3)`: `3.0`, `3.1`, `3.125`."""
    frac = digits(us % 1000, 3, pad=True)
    frac[frac[:, 2] == 48, 2] = 0
    frac[(frac[:, 1] == 48) & (frac[:, 2] == 0), 1] = 0
    return np.hstack([digits(us // 1000, 6), const(b".", len(us)), frac])


def hex_bytes(raw: U8) -> U8:
    out = np.empty((raw.shape[0], raw.shape[1] * 2), dtype=np.uint8)
    out[:, 0::2] = HEX[raw >> 4]
    out[:, 1::2] = HEX[raw & 0x0F]
    return out


def timestamps(ms: I64) -> U8:
    """RFC 3339 UTC with milliseconds and a Z, as `router.http.clock.now_rfc3339` writes them."""
    day, tod = np.divmod(ms, DAY_MS)
    dates = START_DAY + np.arange(int(day.max(initial=0)) + 1)
    date_table = table([f"{d}T".encode() for d in dates])
    n = len(ms)
    colon, dot = const(b":", n), const(b".", n)
    return np.hstack([
        date_table[day], digits(tod // 3_600_000, 2, pad=True), colon,
        digits(tod // 60_000 % 60, 2, pad=True), colon, digits(tod // 1000 % 60, 2, pad=True),
        dot, digits(tod % 1000, 3, pad=True), const(b"Z", n),
    ])  # fmt: skip


def quoted(values: Sequence[str]) -> U8:
    """JSON strings, with `null` as the last row so that index -1 picks it."""
    return table([orjson.dumps(v) for v in values] + [NULL])


@dataclass(frozen=True)
class Tables:
    """The pieces categorical fields are picked from."""

    model: U8
    version: U8
    by: U8
    user: U8
    path: U8
    outcome: U8
    config: U8
    response: U8
    first_byte: bool  # write first_byte_ms (--first-byte)

    @classmethod
    def of(cls, specs: Sequence[ModelSpec], pseudonyms: Sequence[str], paths: Paths,
           digests: Sequence[str], first_byte: bool = False) -> Tables:  # fmt: skip
        return cls(
            model=quoted([m.name for m in specs]),
            version=quoted(["v1", "v2", "v3"]),
            by=quoted(ASSIGNED_BY),
            user=table([b'"%s"' % p.encode() for p in pseudonyms] + [NULL]),  # hex: no escapes
            path=quoted(paths.names),
            outcome=quoted([*OUTCOMES, "rejected"]),
            config=quoted(digests),
            response=table([b',"response":{"prediction":0}', b',"response":{"prediction":1}', b""]),
            first_byte=first_byte,
        )


def request_rows(r: Requests, rows: I64, t: Tables) -> U8:
    """The `request` records of `rows`, keys in `Exchange.record`'s order, one per row."""
    n = len(rows)
    bucket = r.bucket[rows].astype(np.int64)
    upstream = r.upstream_us[rows]
    return np.hstack([
        const(b'{"event":"request","ts":"', n), timestamps(r.ts[rows]),
        const(b'","request_id":"', n), hex_bytes(r.rid[rows]),
        const(b'","model":', n), t.model[r.model[rows]],
        const(b',"version":', n), t.version[r.version[rows]],
        const(b',"assigned_version":', n), t.version[r.assigned[rows]],
        const(b',"assigned_by":', n), t.by[r.by[rows]],
        const(b',"bucket":', n), nullable(digits(np.maximum(bucket, 0), 4), bucket < 0),
        const(b',"user":', n), t.user[r.user[rows]],
        const(b',"method":"POST","path":', n), t.path[r.path[rows]],
        const(b',"status":', n), digits(r.status[rows], 3),
        const(b',"outcome":', n), t.outcome[r.outcome[rows]],
        const(b',"latency_ms":', n), millis(r.latency_us[rows]),
        const(b',"upstream_ms":', n), nullable(millis(np.maximum(upstream, 0)), upstream < 0),
        const(b',"config":', n), t.config[r.config[rows]], *first_byte_field(r, rows, t),
        t.response[r.prediction[rows]], const(b"}\n", n),
    ])  # fmt: skip


def first_byte_field(r: Requests, rows: I64, t: Tables) -> list[U8]:
    """`,"first_byte_ms":12.5` (or null) with --first-byte, else nothing."""
    if not t.first_byte:
        return []
    first = r.first_byte_us[rows]
    n = len(rows)
    return [const(b',"first_byte_ms":', n), nullable(millis(np.maximum(first, 0)), first < 0)]


def feedback_rows(r: Requests, fb: Feedback, rows: I64, t: Tables) -> U8:
    """`feedback` events as the router logs an accepted `POST /feedback/<model>`."""
    n = len(rows)
    request = fb.request[rows]
    return np.hstack([
        const(b'{"event":"feedback","ts":"', n), timestamps(fb.ts[rows]),
        const(b'","model":', n), t.model[r.model[request]],
        const(b',"request_id":"', n), hex_bytes(r.rid[request]),
        const(b'","label":', n), digits(fb.label[rows], 1), const(b"}\n", n),
    ])  # fmt: skip


def lines_of(r: Requests, fb: Feedback, events: I64, t: Tables) -> tuple[bytes, I64]:
    """Events in order (< len(r): requests, the rest feedback) as text, and line ends."""
    is_request = events < len(r)
    req = request_rows(r, events[is_request], t)
    fbk = feedback_rows(r, fb, events[~is_request] - len(r), t)
    matrix = np.zeros((len(events), max(req.shape[1], fbk.shape[1])), dtype=np.uint8)
    matrix[is_request, : req.shape[1]] = req
    matrix[~is_request, : fbk.shape[1]] = fbk
    kept = matrix != 0
    ends = np.cumsum(kept.sum(axis=1, dtype=np.int64))
    return matrix[kept].tobytes(), ends


# --- the table events, and lines that are not JSON ---


def config_events(specs: Sequence[ModelSpec], switch_ms: int) -> tuple[list[str], list[bytes]]:
    """The digests of the two tables, and their `config_loaded` lines (the second one with
    the moves of the ramp and the digest it replaced, as `router.config.holder` logs a reload)."""
    digests = []
    for phase in (0, 1):
        settings = {m.name: {"salt": m.salt, "split": m.split(phase)} for m in specs}
        canonical = orjson.dumps(settings, option=orjson.OPT_SORT_KEYS)
        digests.append(hashlib.sha256(canonical).hexdigest()[:12])
    first, second = (t.tobytes().decode() for t in timestamps(np.array([0, switch_ms])))
    loaded = {
        "event": "config_loaded", "ts": first, "config": digests[0], "source": SOURCE,
        "models": {m.name: {"split": m.split(0)} for m in specs},
    }  # fmt: skip
    reloaded = {
        "event": "config_loaded", "ts": second, "config": digests[1], "source": SOURCE,
        "models": {m.name: {"split": m.split(1), **moves(m)} for m in specs},
        "previous": digests[0], "reason": "file changed",
    }  # fmt: skip
    return digests, [orjson.dumps(event) + b"\n" for event in (loaded, reloaded)]


def moves(spec: ModelSpec) -> dict[str, object]:
    """The users a ramp moves, as `router.config.churn.ModelChurn.as_dict` summarises them."""
    every = np.arange(BUCKETS)
    old = np.searchsorted(spec.edges(0), every, side="right")
    new = np.searchsorted(spec.edges(1), every, side="right")
    changed = old != new
    pairs, counts = np.unique(
        np.stack([old[changed], new[changed]], axis=1), axis=0, return_counts=True
    )
    moved = {
        f"{spec.versions[a]}->{spec.versions[b]}": int(count) / (BUCKETS // 100)
        for (a, b), count in zip(pairs.tolist(), counts, strict=True)
    }
    return {
        "moves": moved, "moved_percent": sum(moved.values()), "reshuffled": False,
        "warnings": [],
    }  # fmt: skip


def bad_line(rng: np.random.Generator, neighbour: bytes) -> bytes:
    """A line no JSON parser accepts: a record cut short (a crash mid-write), or random bytes
    shown as text (a corrupted block). Always valid UTF-8, never blank."""
    if rng.random() < 0.5:
        cut = int(rng.integers(1, len(neighbour) - 1))  # `neighbour` ends with "\n"
        return neighbour[:cut] + b"\n"
    while True:
        raw = rng.integers(0, 256, int(rng.integers(8, 160)), dtype=np.uint8).tobytes()
        text = raw.decode("latin-1").replace("\n", "").replace("\r", "")
        try:
            orjson.loads(text)
        except orjson.JSONDecodeError:
            if text.strip():
                return text.encode("utf-8") + b"\n"


# --- writing ---


class Sink:
    """Writes (and compresses) on a thread while the next chunk is formatted: zlib and file
    writes release the GIL, so formatting and gzip run side by side."""

    def __init__(self, path: Path, compress: bool) -> None:
        self._raw: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._file: gzip.GzipFile | BinaryIO = (
            gzip.GzipFile(filename="", fileobj=self._raw, mode="wb", compresslevel=1, mtime=0)
            if compress
            else self._raw
        )
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._pending: Future[None] | None = None

    def write(self, pieces: Sequence[bytes]) -> None:
        self._wait()
        self._pending = self._pool.submit(self._write, pieces)

    def _write(self, pieces: Sequence[bytes]) -> None:
        for piece in pieces:
            self._file.write(piece)

    def _wait(self) -> None:
        if self._pending is not None:
            self._pending.result()
            self._pending = None

    def close(self) -> None:
        try:
            self._wait()
        finally:
            self._pool.shutdown()
            if self._file is not self._raw:
                self._file.close()
            self._raw.close()


def chunk_bounds(total: int, switch_at: int) -> Iterator[tuple[int, int]]:
    """Chunks of events; one starts where the second table comes into force."""
    yield from itertools.pairwise(sorted({*range(0, total, CHUNK_LINES), switch_at, total}))


def splice(text: bytes, ends: I64, slots: I64, rng: np.random.Generator) -> list[bytes]:
    """`text` with a bad line before each line numbered in `slots` (= len(ends): at the end)."""
    starts = np.concatenate([[0], ends[:-1]])
    pieces, at = [], 0
    for slot in slots.tolist():
        near = min(slot, len(ends) - 1)
        cut = int(starts[slot]) if slot < len(ends) else len(text)
        pieces += [text[at:cut], bad_line(rng, text[starts[near] : ends[near]])]
        at = cut
    pieces.append(text[at:])
    return pieces


def in_order(
    jobs: Iterable[Callable[[], tuple[bytes, I64]]], threads: int
) -> Iterator[tuple[bytes, I64]]:
    """Results of `jobs` in order, run on `threads` threads, a few at a time (NumPy releases
    the GIL in most of the formatting, so two cores format about twice as fast)."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending: deque[Future[tuple[bytes, I64]]] = deque()
        for job in jobs:
            pending.append(pool.submit(job))
            if len(pending) > threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def write_log(
    sink: Sink, r: Requests, fb: Feedback, t: Tables, config_lines: Sequence[bytes],
    switch_ms: int, bad_slots: I64, bad_rng: np.random.Generator,
) -> None:  # fmt: skip
    """All events in time order (a request before its feedback), the second table's event
    before the first request it applies to, and a bad line before each event in `bad_slots`
    (sorted, 0..events)."""
    all_ts = np.concatenate([r.ts, fb.ts])
    order = np.argsort(all_ts, kind="stable")
    total = len(order)
    switch_at = int(np.searchsorted(all_ts[order], switch_ms, side="left"))
    bounds = list(chunk_bounds(total, switch_at))
    jobs = [partial(lines_of, r, fb, order[a:b], t) for a, b in bounds]
    sink.write([config_lines[0]])
    for (a, b), (text, ends) in zip(bounds, in_order(jobs, THREADS), strict=True):
        upto = total + 1 if b == total else b
        slots = bad_slots[(bad_slots >= a) & (bad_slots < upto)] - a
        pieces = splice(text, ends, slots, bad_rng)
        sink.write([config_lines[1], *pieces] if a == switch_at else pieces)


def bucket_table(specs: Sequence[ModelSpec], ids: Sequence[str]) -> I16:
    """Each pool user's bucket for each model (its salt): computed once, indexed per request."""
    return np.array([[bucket(u, m.salt) for u in ids] for m in specs], dtype=np.int16)


@dataclass(frozen=True)
class Written:
    requests: int
    feedback: int
    config: int
    bad: int
    size: int
    seconds: float

    @property
    def lines(self) -> int:
        return self.requests + self.feedback + self.config + self.bad


def generate(s: Settings) -> Written:
    """Write the log to `s.out` (through a temporary file, so a partial log never lies there)."""
    began = time.perf_counter()
    records_seed, bad_seed = np.random.SeedSequence(s.seed).spawn(2)
    rng, bad_rng = np.random.default_rng(records_seed), np.random.default_rng(bad_seed)
    specs = model_specs(s.models)
    ids = user_ids(s.users)
    r, fb, switch_ms = draw(rng, s, specs, bucket_table(specs, ids))
    digests, config_lines = config_events(specs, switch_ms)
    tables = Tables.of(specs, [pseudonym(u) for u in ids], Paths(specs), digests, s.first_byte)
    bad_slots = np.sort(bad_rng.integers(0, len(r) + len(fb.ts) + 1, s.bad_lines))
    unfinished = s.out.with_name(s.out.name + ".tmp")
    sink = Sink(unfinished, s.gzip)
    try:
        write_log(sink, r, fb, tables, config_lines, switch_ms, bad_slots, bad_rng)
    finally:
        sink.close()
    os.replace(unfinished, s.out)
    return Written(
        len(r), len(fb.ts), len(config_lines), s.bad_lines, s.out.stat().st_size,
        time.perf_counter() - began,
    )  # fmt: skip


def parse_args(argv: Sequence[str] | None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("out", type=Path, help="the log to write (.gz: gzip-compressed)")
    parser.add_argument("--records", type=int, default=100_000, help="request records")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--gzip", action="store_true", help="compress (adds .gz to OUT)")
    parser.add_argument("--models", default="cancer,books", help="comma-separated model names")
    parser.add_argument("--bad-lines", type=int, default=0, help="lines that are not JSON")
    parser.add_argument("--feedback-share", type=float, default=0.3,
                        help="share of ok answers that get a feedback event")  # fmt: skip
    parser.add_argument("--v2-error-rate", type=float, default=SERVER_ERROR_RATE[1],
                        help="v2's share of server errors (v1's is 0.01)")  # fmt: skip
    parser.add_argument("--srm", action="store_true",
                        help="lose the v2 records of 5%% of v2's split users")  # fmt: skip
    parser.add_argument("--users", type=int, default=200_000, help="size of the user pool")
    parser.add_argument("--first-byte", action="store_true",
                        help="records carry first_byte_ms (contract section 11)")  # fmt: skip
    a = parser.parse_args(argv)
    models = tuple(m for m in a.models.split(",") if m)
    if a.records < 2 or a.users < 1 or a.bad_lines < 0 or not models:
        parser.error("--records must be at least 2, --users at least 1, --bad-lines >= 0")
    if len(set(models)) != len(models):
        parser.error(f"--models names a model twice: {a.models}")
    compress = a.gzip or a.out.suffix == ".gz"
    out = a.out if not compress or a.out.suffix == ".gz" else a.out.with_name(a.out.name + ".gz")
    return Settings(
        out, a.records, a.seed, models, a.bad_lines, a.feedback_share, a.v2_error_rate, a.srm,
        a.users, compress, a.first_byte,
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    w = generate(settings)
    print(
        f"wrote {settings.out}: {w.lines:,} lines ({w.requests:,} request records, "
        f"{w.feedback:,} feedback, {w.config} config_loaded, {w.bad:,} bad), "
        f"{w.size / 2**20:,.1f} MiB in {w.seconds:.1f} s "
        f"({w.requests / w.seconds:,.0f} records/s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

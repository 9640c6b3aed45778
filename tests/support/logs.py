"""Small routing logs written by tests, with the fields of contract section 5."""

from __future__ import annotations

import gzip
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from router.routing.choose import bucket


def config_loaded(digest: str, split: dict[str, float], model: str = "cancer") -> dict[str, Any]:
    return {"event": "config_loaded", "ts": "2026-11-25T00:00:00.000Z", "config": digest,
            "models": {model: {"split": split}}}  # fmt: skip


def request(
    i: int,
    *,
    version: str,
    assigned_by: str = "split",
    outcome: str = "ok",
    latency_ms: float = 10.0,
    user: str | None = None,
    model: str = "cancer",
    config: str = "cfg1",
    answered_by: str | None = None,
    prediction: Any = None,
    first_byte_ms: float | None = None,
) -> dict[str, Any]:
    """A `request` record; `first_byte_ms` (contract section 11) is left out unless given,
    as in the logs written before it."""
    status = {"ok": 200, "client_error": 404, "server_error": 500, "timeout": 504,
              "unavailable": 502, "rejected": 400, "client_closed": 499}[outcome]  # fmt: skip
    ts = f"2026-11-25T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}.000Z"
    record: dict[str, Any] = {
        "event": "request", "ts": ts,
        "request_id": f"req-{i}", "model": model, "version": answered_by or version,
        "assigned_version": version, "assigned_by": assigned_by, "bucket": None, "user": user,
        "method": "POST", "path": f"/models/{model}/predict", "status": status,
        "outcome": outcome, "latency_ms": latency_ms, "upstream_ms": latency_ms - 0.2,
        "config": config,
    }  # fmt: skip
    if first_byte_ms is not None:
        record["first_byte_ms"] = first_byte_ms
    if prediction is not None:
        record["response"] = {"prediction": prediction}
    return record


def feedback(request_id: str, label: Any, model: str = "cancer") -> dict[str, Any]:
    return {"event": "feedback", "ts": "2026-11-25T23:59:59.000Z", "model": model,
            "request_id": request_id, "label": label}  # fmt: skip


def shadow(
    i: int,
    *,
    primary: str = "v1",
    version: str = "v3",
    outcome: str = "ok",
    agree: bool | None = True,
    user: str | None = None,
    upstream_ms: float | None = 12.0,
    primary_upstream_ms: float | None = 10.0,
    prediction: Any = None,
    drop_reason: str | None = None,
    model: str = "cancer",
) -> dict[str, Any]:
    """The `shadow` record of the copy of `request(i, ...)` (contract section 8)."""
    status = {"ok": 200, "server_error": 500, "timeout": None, "unavailable": None,
              "dropped": None}[outcome]  # fmt: skip
    record: dict[str, Any] = {
        "event": "shadow", "ts": "2026-11-25T12:00:00.000Z", "request_id": f"req-{i}",
        "model": model, "version": version, "primary_version": primary, "user": user,
        "status": status, "outcome": outcome, "latency_ms": 1.0, "upstream_ms": upstream_ms,
        "primary_upstream_ms": primary_upstream_ms, "agree": agree, "config": "cfg1",
    }  # fmt: skip
    if drop_reason is not None:
        record["drop_reason"] = drop_reason
    if prediction is not None:
        record["response"] = {"prediction": prediction}
    return record


def split_traffic(
    n: int,
    split: dict[str, float],
    *,
    error_rates: dict[str, float],
    salt: str = "cancer",
    users: int = 5000,
    seed: int = 1,
    drop: dict[str, float] | None = None,
) -> list[dict[str, Any]]:
    """`n` split-assigned requests by the real bucketing; `drop` loses a share of a version's
    records (a broken logger or client), which the sample-ratio check must notice."""
    rng = random.Random(seed)
    edges, total = [], 0.0
    for version, percent in split.items():
        total += percent * 100
        edges.append((total, version))
    records = []
    for i in range(n):
        user = f"user-{rng.randrange(users)}"
        b = bucket(user, salt)
        version = next(v for edge, v in edges if b < edge)
        if drop and rng.random() < drop.get(version, 0.0):
            continue
        outcome = "server_error" if rng.random() < error_rates[version] else "ok"
        latency = rng.lognormvariate(2.3, 0.3)
        records.append(request(i, version=version, user=user, outcome=outcome,
                               latency_ms=latency, prediction=i % 2))  # fmt: skip
    return records


def write(path: Path, lines: Sequence[dict[str, Any] | bytes]) -> Path:
    data = b"".join(
        (line if isinstance(line, bytes) else orjson.dumps(line)) + b"\n" for line in lines
    )
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path

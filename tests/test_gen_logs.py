"""bench/gen_logs.py writes logs that read like the router's own (contract section 5).

The generator runs once for 20,000 records; every line is parsed back with orjson and checked
against the contract, recomputing each split assignment with the MurmurHash3 formula.
"""

from __future__ import annotations

import bisect
import hashlib
import importlib.util
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import mmh3
import orjson
import pytest

GEN_LOGS = Path(__file__).resolve().parents[1] / "bench" / "gen_logs.py"
RECORDS, USERS, BAD_LINES, SEED = 20_000, 20_000, 7, 5
MODELS = ("cancer", "books")
FIELDS = {
    "event", "ts", "request_id", "model", "version", "assigned_version", "assigned_by", "bucket",
    "user", "method", "path", "status", "outcome", "latency_ms", "upstream_ms", "config",
}  # fmt: skip
OUTCOMES = {"ok", "client_error", "server_error", "timeout", "unavailable", "rejected",
            "client_closed"}  # fmt: skip
RFC3339_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z\Z")


def load_generator() -> ModuleType:
    """bench/ is scripts, not a package: load the file as a module."""
    spec = importlib.util.spec_from_file_location("gen_logs", GEN_LOGS)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look up their module
    spec.loader.exec_module(module)
    return module


@dataclass
class Log:
    events: list[dict[str, Any]]  # in file order
    bad: list[bytes]
    good: list[bytes]

    def of(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == event]


def read(path: Path) -> Log:
    log = Log([], [], [])
    for line in path.read_bytes().splitlines():
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            log.bad.append(line)
            continue
        assert isinstance(event, dict), line
        log.events.append(event)
        log.good.append(line)
    return log


def generate(path: Path, *flags: str) -> Log:
    gen = load_generator()
    argv = [str(path), "--records", str(RECORDS), "--users", str(USERS), "--seed", str(SEED)]
    assert gen.main([*argv, *flags]) == 0
    return read(path)


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Log:
    return generate(tmp_path_factory.mktemp("gen") / "routing.jsonl", "--bad-lines", "7")


def test_request_records_have_every_contract_field(log: Log) -> None:
    records = log.of("request")
    assert len(records) == RECORDS
    assert len({r["request_id"] for r in records}) == RECORDS
    stamps = [r["ts"] for r in records]
    assert stamps == sorted(stamps)
    for r in records:
        assert set(r) >= FIELDS, FIELDS - set(r)
        assert RFC3339_UTC.match(r["ts"]), r["ts"]
        assert re.fullmatch(r"[0-9a-f]{32}", r["request_id"])
        assert r["model"] in (*MODELS, None)
        assert r["outcome"] in OUTCOMES
        assert r["method"] == "POST"
        assert r["bucket"] is None or 0 <= r["bucket"] <= 9999
        assert r["user"] is None or re.fullmatch(r"[0-9a-f]{16}", r["user"])
        assert isinstance(r["latency_ms"], float)
        assert r["upstream_ms"] is None or 0 <= r["upstream_ms"] < r["latency_ms"]
        if r["outcome"] == "rejected":
            assert (r["version"], r["upstream_ms"]) == (None, None)
        else:
            assert r["model"] in MODELS
            assert r["version"] in ("v1", r["assigned_version"])  # v1: the fallback
            assert r["path"].startswith(f"/models/{r['model']}/")
        assert ("response" in r) == (r["outcome"] == "ok")
        status_class = {"ok": 2, "client_error": 4, "server_error": 5, "timeout": 5}
        if r["outcome"] in status_class:
            assert r["status"] // 100 == status_class[r["outcome"]]


def test_split_assignments_follow_the_formula_and_the_split_in_force(log: Log) -> None:
    gen = load_generator()
    ids = {hashlib.sha256(u.encode()).hexdigest()[:16]: u for u in gen.user_ids(USERS)}
    salts = {spec.name: spec.salt for spec in gen.model_specs(MODELS)}
    splits = {e["config"]: e["models"] for e in log.of("config_loaded")}
    assert len(splits) == 2
    in_force = None
    seen = {"split": 0, "no_user_random": 0}
    for event in log.events:
        if event["event"] == "config_loaded":
            in_force = event["config"]
        if event["event"] != "request" or event["assigned_by"] not in seen:
            continue
        r = event
        seen[r["assigned_by"]] += 1
        assert r["config"] == in_force
        if r["assigned_by"] == "split":
            h = mmh3.hash((ids[r["user"]] + salts[r["model"]]).encode(), seed=1, signed=False)
            assert r["bucket"] == (h * 10000) >> 32
        else:
            assert r["user"] is None
        split = splits[r["config"]][r["model"]]["split"]
        edges = [sum(list(split.values())[: i + 1]) * 100 for i in range(len(split))]
        assert r["assigned_version"] == list(split)[bisect.bisect_right(edges, r["bucket"])]
    assert seen["split"] > 0.8 * RECORDS
    assert seen["no_user_random"] > 0.03 * RECORDS


def test_bad_lines_are_the_only_lines_that_are_not_json(log: Log, tmp_path: Path) -> None:
    assert len(log.bad) == BAD_LINES
    assert all(line.strip() for line in log.bad)
    clean = generate(tmp_path / "clean.jsonl")
    assert clean.bad == []
    assert clean.good == log.good  # the bad lines come on top of the same records


def test_feedback_refers_to_answered_requests(log: Log) -> None:
    requests = {r["request_id"]: r for r in log.of("request")}
    feedback = log.of("feedback")
    assert 0.2 * RECORDS < len(feedback) < 0.4 * RECORDS
    for f in feedback:
        r = requests[f["request_id"]]
        assert (r["outcome"], f["model"]) == ("ok", r["model"])
        assert f["label"] in (0, 1)
        assert f["ts"] > r["ts"]

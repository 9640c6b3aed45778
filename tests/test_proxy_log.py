"""The routing log (contract section 5), and feedback, which only the log records (section 4).

Records are read back, parsed, once the router has stopped (its log is flushed on stop).
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from yarl import URL

from tests.support import tables
from tests.support.errors import router_error
from tests.support.running import dead_url, read_log, router_running
from tests.support.waiting import log_record

FIELDS = {
    "event", "ts", "request_id", "model", "version", "assigned_version", "assigned_by", "bucket",
    "user", "method", "path", "status", "outcome", "latency_ms", "upstream_ms", "config",
    "protocol", "first_byte_ms", "trace_id",
}  # fmt: skip
RFC3339_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|\+00:00)\Z")


def model(backends: dict[str, str], **settings: Any) -> dict[str, Any]:
    """Model `m` over the two echo backends, split 50/50."""
    return tables.model(backends, {"v1": 50, "v2": 50}, **settings)


def utc_time(ts: str) -> dt.datetime:
    assert RFC3339_UTC.match(ts), ts
    parsed = dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))
    assert parsed.utcoffset() == dt.timedelta(0)
    return parsed


UNSAID = "(not said)"  # the contract does not say whether a bad path's record names the model

# (method, path, headers, body) -> (status, outcome, model, forwarded to a backend)
BATCH: list[tuple[tuple[str, str, dict[str, str], bytes | None], tuple[int, str, Any, bool]]] = [
    (("GET", "/models/m/echo?q=1&r=%2F", {"X-User-ID": "ann"}, None), (200, "ok", "m", True)),
    (("POST", "/models/m/echo?x", {}, b"payload"), (200, "ok", "m", True)),
    (("GET", "/models/m/status/404", {}, None), (404, "client_error", "m", True)),
    (("GET", "/models/m/status/503?a=b", {}, None), (503, "server_error", "m", True)),
    (("GET", "/models/nope/echo?q=1", {}, None), (404, "rejected", None, False)),
    (("GET", "/nothing/here", {}, None), (404, "rejected", None, False)),
    (("GET", "/models/m/../x?q=1", {}, None), (400, "rejected", UNSAID, False)),
    (("GET", "/models/m/versions/v9/echo", {}, None), (404, "rejected", "m", False)),
    (("GET", "/models/slow/slow?s=2", {}, None), (504, "timeout", "slow", True)),
    (("GET", "/models/dead/echo", {}, None), (502, "unavailable", "dead", True)),
]


async def test_one_complete_record_per_request_across_a_mixed_batch(
    backends: dict[str, str], tmp_path: Path
) -> None:
    one = {"split": {"v1": 100}}
    models = {
        **model(backends),
        "slow": {"versions": {"v1": {"url": backends["v1"]}}, "timeout_s": 0.3, **one},
        "dead": {"versions": {"v1": {"url": dead_url()}}, **one},
    }
    before = dt.datetime.now(dt.UTC)
    async with router_running(models, tmp_path) as r, aiohttp.ClientSession() as client:
        for i, ((method, path, headers, body), (status, *_)) in enumerate(BATCH):
            headers = {**headers, "X-Request-ID": f"batch-{i}"}
            url = URL(r.url + path, encoded=True)
            async with client.request(method, url, headers=headers, data=body) as resp:
                assert resp.status == status, path
                assert resp.headers["X-Request-ID"] == f"batch-{i}"
                await resp.read()
    after = dt.datetime.now(dt.UTC)
    records = r.records()
    assert sorted(rec["request_id"] for rec in records) == sorted(
        f"batch-{i}" for i in range(len(BATCH))
    )
    (loaded,) = [e for e in read_log(r.log_path) if e["event"] == "config_loaded"]
    by_id = {rec["request_id"]: rec for rec in records}
    for i, ((method, path, _, _), (status, outcome, model_name, forwarded)) in enumerate(BATCH):
        rec = by_id[f"batch-{i}"]
        assert set(rec) >= FIELDS, FIELDS - set(rec)
        assert "response" not in rec  # no log_response in this table
        assert rec["event"] == "request"
        assert before - dt.timedelta(seconds=1) <= utc_time(rec["ts"]) <= after
        assert (rec["method"], rec["path"]) == (method, path.partition("?")[0])
        assert (rec["status"], rec["outcome"]) == (status, outcome)
        if model_name is not UNSAID:
            assert rec["model"] == model_name
        assert isinstance(rec["latency_ms"], float)
        assert rec["latency_ms"] >= 0
        assert rec["config"] == loaded["config"]
        assert rec["bucket"] is None or 0 <= rec["bucket"] <= 9999
        if forwarded:
            assert rec["assigned_version"] in ("v1", "v2")
            assert rec["assigned_by"] in ("split", "no_user_random")
        if outcome in ("ok", "client_error", "server_error", "timeout"):
            assert isinstance(rec["upstream_ms"], float)
        if not forwarded:
            assert rec["upstream_ms"] is None
            assert rec["version"] is None
        if outcome in ("ok", "client_error", "server_error"):
            assert rec["version"] == rec["assigned_version"]


async def test_config_loaded_comes_first_with_each_models_split(
    backends: dict[str, str], tmp_path: Path
) -> None:
    versions = {name: {"url": url} for name, url in backends.items()}
    models = {
        "m": {"versions": versions, "split": {"v1": 87.5, "v2": 12.5}},
        "other": {"versions": versions, "split": {"v2": 100, "v1": 0}},
    }
    async with (
        router_running(models, tmp_path) as r,
        aiohttp.ClientSession() as client,
        client.get(f"{r.url}/models/m/echo") as resp,
    ):
        assert resp.status == 200
    first, *rest = read_log(r.log_path)
    assert first["event"] == "config_loaded"
    utc_time(first["ts"])
    assert first["models"]["m"]["split"] == {"v1": 87.5, "v2": 12.5}
    assert first["models"]["other"]["split"] == {"v2": 100, "v1": 0}
    assert [e["event"] for e in rest] == ["request"]
    assert rest[0]["config"] == first["config"]


async def users_logged(
    backends: dict[str, str], tmp_path: Path, log: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Records of requests from alice, alice, bob and someone without an id."""
    async with router_running(model(backends), tmp_path, log) as r, aiohttp.ClientSession() as c:
        for user in ("alice", "alice", "bob", None):
            headers = {"X-User-ID": user} if user else {}
            async with c.get(f"{r.url}/models/m/echo", headers=headers) as resp:
                assert resp.status == 200
    records = r.records()
    assert len(records) == 4
    return records


async def test_user_is_a_stable_pseudonym_by_default(
    backends: dict[str, str], tmp_path: Path
) -> None:
    alice, again, bob, nobody = (rec["user"] for rec in await users_logged(backends, tmp_path))
    assert isinstance(alice, str)
    assert isinstance(bob, str)
    assert alice == again
    assert alice != bob
    assert "alice" not in alice
    assert "bob" not in bob
    assert nobody is None


async def test_user_is_the_raw_id_when_asked(backends: dict[str, str], tmp_path: Path) -> None:
    records = await users_logged(backends, tmp_path, {"user_ids": "raw"})
    assert [rec["user"] for rec in records] == ["alice", "alice", "bob", None]


async def test_user_is_absent_with_omit(backends: dict[str, str], tmp_path: Path) -> None:
    records = await users_logged(backends, tmp_path, {"user_ids": "omit"})
    for rec in records:
        assert "user" not in rec
    assert records[0]["bucket"] == records[1]["bucket"]  # the split still used the id


async def test_a_key_changes_the_pseudonyms(
    backends: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ROUTER_USER_ID_KEY", raising=False)
    plain = await users_logged(backends, tmp_path / "plain")
    monkeypatch.setenv("ROUTER_USER_ID_KEY", "a-secret-key")
    keyed = await users_logged(backends, tmp_path / "keyed")
    monkeypatch.setenv("ROUTER_USER_ID_KEY", "another-key")
    rekeyed = await users_logged(backends, tmp_path / "rekeyed")
    for i in range(3):
        assert len({plain[i]["user"], keyed[i]["user"], rekeyed[i]["user"]}) == 3
        assert "alice" not in keyed[i]["user"]
    assert keyed[0]["user"] == keyed[1]["user"]  # still stable under one key


async def test_log_response_copies_the_named_fields(
    backends: dict[str, str], tmp_path: Path
) -> None:
    models = model(backends, log_response=["prediction"])
    async with (
        router_running(models, tmp_path) as r,
        aiohttp.ClientSession() as client,
        client.post(f"{r.url}/models/m/predict", json={"rows": [[1, 2]]}) as resp,
    ):
        assert (await resp.json())["prediction"] == 1
    (record,) = r.records()
    assert record["response"] == {"prediction": 1}


async def test_log_response_reads_a_streamed_answer_too(
    backends: dict[str, str], tmp_path: Path
) -> None:
    """An answer without a Content-Length is streamed; small JSON is still looked into."""
    models = model(backends, log_response=["prediction", "version"])
    async with (
        router_running(models, tmp_path) as r,
        aiohttp.ClientSession() as client,
        client.post(f"{r.url}/models/m/predict-chunked", json={}) as resp,
    ):
        assert "Content-Length" not in resp.headers
        body = await resp.json()
    (record,) = r.records()
    assert record["response"] == {"prediction": 0, "version": body["version"]}


# --- feedback ---


@pytest.mark.parametrize("label", [1, "malignant", None, [0, 1], {"score": 0.5}])
async def test_feedback_is_accepted_and_logged_as_a_feedback_event_only(
    backends: dict[str, str], tmp_path: Path, label: Any
) -> None:
    async with (
        router_running(model(backends), tmp_path) as r,
        aiohttp.ClientSession() as client,
        client.post(f"{r.url}/feedback/m", json={"request_id": "abc", "label": label}) as resp,
    ):
        assert resp.status == 202
        assert await resp.json() == {"accepted": True}
    events = read_log(r.log_path)
    assert [e["event"] for e in events] == ["config_loaded", "feedback"]
    feedback = events[1]
    assert {"ts", "model", "request_id", "label"} <= set(feedback)
    utc_time(feedback["ts"])
    assert (feedback["model"], feedback["request_id"], feedback["label"]) == ("m", "abc", label)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"",
        b"[1, 2]",
        b'{"label": 1}',
        b'{"request_id": "abc"}',
        b'{"request_id": 5, "label": 1}',
    ],
)
async def test_malformed_feedback_is_400_and_a_rejected_request(
    backends: dict[str, str], tmp_path: Path, body: bytes
) -> None:
    headers = {"Content-Type": "application/json"}
    async with (
        router_running(model(backends), tmp_path) as r,
        aiohttp.ClientSession() as client,
        client.post(f"{r.url}/feedback/m", data=body, headers=headers) as resp,
    ):
        await router_error(resp, 400, "bad_feedback")
    events = read_log(r.log_path)
    assert [e["event"] for e in events] == ["config_loaded", "request"]
    record = events[1]
    assert (record["status"], record["outcome"], record["method"]) == (400, "rejected", "POST")
    assert record["path"] == "/feedback/m"


async def test_feedback_for_an_unknown_model_is_404(
    backends: dict[str, str], tmp_path: Path
) -> None:
    feedback = orjson.dumps({"request_id": "abc", "label": 1})
    async with (
        router_running(model(backends), tmp_path) as r,
        aiohttp.ClientSession() as client,
        client.post(f"{r.url}/feedback/nope", data=feedback) as resp,
    ):
        await router_error(resp, 404, "unknown_model")
    events = read_log(r.log_path)
    assert [e["event"] for e in events] == ["config_loaded", "request"]
    assert (events[1]["status"], events[1]["outcome"]) == (404, "rejected")


# --- a client that goes away ---


async def test_client_gone_before_the_answer_is_499_client_closed(
    backends: dict[str, str], tmp_path: Path
) -> None:
    async with router_running(model(backends), tmp_path) as r:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.2)) as client:
            with pytest.raises(TimeoutError):
                async with client.get(f"{r.url}/models/m/slow?s=1") as resp:
                    await resp.read()
        # The backend answers after 1 s, to nobody: the record need not wait for it.
        await log_record(r.log_path, lambda record: record["event"] == "request")
    (record,) = r.records()
    assert (record["status"], record["outcome"]) == (499, "client_closed")

"""Choosing a version for a request (contract section 3), through a real router.

Each test sends real requests to the in-process router in front of two echo backends and
checks where they went (the echo says which backend answered and what target it saw) and
what the `request` record says about the choice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from router.routing.choose import bucket
from tests.support.running import router_running
from tests.support.tables import model


async def get_echo(
    client: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[aiohttp.ClientResponse, dict[str, Any]]:
    async with client.get(URL(url, encoded=True), headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        return resp, await resp.json()


async def test_pinned_version_drops_its_prefix_and_keeps_the_query(
    backends: dict[str, str], tmp_path: Path
) -> None:
    models = model(backends, {"v1": 100, "v2": 0})
    async with router_running(models, tmp_path) as r, aiohttp.ClientSession() as client:
        resp, body = await get_echo(
            client, f"{r.url}/models/m/versions/v2/echo?x=1&y=%20", {"X-User-ID": "u1"}
        )
    assert body["version"] == "v2"
    assert body["target"] == "/echo?x=1&y=%20"
    assert resp.headers["X-Model-Version"] == "v2"
    (record,) = r.records()
    assert record["assigned_by"] == "pinned"
    assert record["assigned_version"] == record["version"] == "v2"
    assert record["bucket"] is None
    assert record["path"] == "/models/m/versions/v2/echo"


async def test_version_header_chooses_the_version(backends: dict[str, str], tmp_path: Path) -> None:
    models = model(backends, {"v1": 100, "v2": 0})
    async with router_running(models, tmp_path) as r, aiohttp.ClientSession() as client:
        _, body = await get_echo(
            client, f"{r.url}/models/m/echo", {"X-Model-Version": "v2", "X-User-ID": "u1"}
        )
    assert body["version"] == "v2"
    assert body["target"] == "/echo"
    (record,) = r.records()
    assert (record["assigned_by"], record["version"], record["bucket"]) == ("header", "v2", None)


async def test_steps_apply_in_order_pinned_header_rule_split(
    backends: dict[str, str], tmp_path: Path
) -> None:
    models = model(
        backends,
        {"v1": 100, "v2": 0},
        rules=[
            {"match": {"header": {"X-Beta-Tester": "true"}}, "version": "v2"},
            {"match": {"user_id": ["alice", "bob"]}, "version": "v2"},
        ],
    )
    cases = [  # (path, headers) -> (version, assigned_by)
        ("/models/m/versions/v1/echo", {"X-Model-Version": "v2", "X-Beta-Tester": "true"}),
        ("/models/m/echo", {"X-Model-Version": "v1", "X-Beta-Tester": "true"}),
        ("/models/m/echo", {"X-Beta-Tester": "true", "X-User-ID": "carol"}),
        ("/models/m/echo", {"X-Beta-Tester": "true"}),
        ("/models/m/echo", {"X-User-ID": "alice"}),
        ("/models/m/echo", {"X-User-ID": "bob"}),
        ("/models/m/echo", {"X-User-ID": "carol", "X-Beta-Tester": "false"}),
    ]
    expected = [
        ("v1", "pinned"),
        ("v1", "header"),
        ("v2", "rule"),
        ("v2", "rule"),
        ("v2", "rule"),
        ("v2", "rule"),
        ("v1", "split"),
    ]
    async with router_running(models, tmp_path) as r, aiohttp.ClientSession() as client:
        answered = [(await get_echo(client, r.url + path, h))[1]["version"] for path, h in cases]
    assert answered == [version for version, _ in expected]
    records = r.records()
    assert [(rec["version"], rec["assigned_by"]) for rec in records] == expected
    assert [rec["bucket"] for rec in records[:6]] == [None] * 6
    assert records[6]["bucket"] == bucket("carol", "m")  # the salt defaults to the model name


async def test_split_is_sticky_and_logs_the_recomputable_bucket(
    backends: dict[str, str], tmp_path: Path
) -> None:
    salt = "1886780721"
    models = model(backends, {"v1": 50, "v2": 50}, salt=salt)
    users = ["ppid1", "ppid2", "ppid3"]
    async with router_running(models, tmp_path) as r, aiohttp.ClientSession() as client:
        answered: dict[str, set[str]] = {user: set() for user in users}
        for user in users:
            for _ in range(20):
                _, body = await get_echo(client, f"{r.url}/models/m/echo", {"X-User-ID": user})
                answered[user].add(body["version"])
    # The Optimizely SDK's published vectors (contract section 3): 5254, 4299, 5439;
    # with v1: 50, v2: 50, buckets 0-4999 are v1's and 5000-9999 are v2's.
    assert answered == {"ppid1": {"v2"}, "ppid2": {"v1"}, "ppid3": {"v2"}}
    records = r.records()
    assert len(records) == 60
    buckets = {rec["bucket"] for rec in records}
    assert buckets == {bucket(user, salt) for user in users} == {5254, 4299, 5439}
    for rec in records:
        assert rec["assigned_by"] == "split"
        assert rec["assigned_version"] == rec["version"] == ("v1" if rec["bucket"] < 5000 else "v2")


async def test_a_hundred_percent_version_gets_everyone(
    backends: dict[str, str], tmp_path: Path
) -> None:
    models = model(backends, {"v1": 0, "v2": 100})
    async with router_running(models, tmp_path) as r, aiohttp.ClientSession() as client:
        for i in range(30):
            headers = {"X-User-ID": f"user-{i}"} if i % 3 else {}
            _, body = await get_echo(client, f"{r.url}/models/m/echo", headers)
            assert body["version"] == "v2"
    records = r.records()
    assert len(records) == 30
    assert {rec["version"] for rec in records} == {"v2"}
    assert {rec["assigned_by"] for rec in records} == {"split", "no_user_random"}


async def test_no_user_id_goes_to_the_named_default_without_a_bucket(
    backends: dict[str, str], tmp_path: Path
) -> None:
    models = model(backends, {"v1": 100, "v2": 0}, when_no_user_id="v2")
    async with router_running(models, tmp_path) as r, aiohttp.ClientSession() as client:
        _, body = await get_echo(client, f"{r.url}/models/m/echo")
    assert body["version"] == "v2"
    (record,) = r.records()
    assert record["assigned_by"] == "no_user_default"
    assert record["assigned_version"] == record["version"] == "v2"
    assert record["bucket"] is None


async def test_no_user_id_draws_a_random_bucket_through_the_split(
    backends: dict[str, str], tmp_path: Path
) -> None:
    models = model(backends, {"v1": 50, "v2": 50})  # when_no_user_id: random is the default
    async with router_running(models, tmp_path) as r, aiohttp.ClientSession() as client:
        for _ in range(10):
            await get_echo(client, f"{r.url}/models/m/echo")
    records = r.records()
    assert len(records) == 10
    for rec in records:
        assert rec["assigned_by"] == "no_user_random"
        assert isinstance(rec["bucket"], int)
        assert 0 <= rec["bucket"] <= 9999
        assert rec["version"] == ("v1" if rec["bucket"] < 5000 else "v2")


async def test_user_id_from_a_cookie(backends: dict[str, str], tmp_path: Path) -> None:
    models = model(backends, {"v1": 50, "v2": 50}, user_id=[{"cookie": "uid"}])
    async with router_running(models, tmp_path) as r, aiohttp.ClientSession() as client:
        _, body = await get_echo(
            client, f"{r.url}/models/m/echo", {"Cookie": "other=1; uid=cookie-user"}
        )
    (record,) = r.records()
    assert record["assigned_by"] == "split"
    assert record["bucket"] == bucket("cookie-user", "m")
    assert body["version"] == record["version"]


async def test_user_id_from_the_query_and_the_first_present_source_wins(
    backends: dict[str, str], tmp_path: Path
) -> None:
    sources = [{"header": "X-User-ID"}, {"query": "user_id"}]
    models = model(backends, {"v1": 50, "v2": 50}, user_id=sources)
    async with router_running(models, tmp_path) as r, aiohttp.ClientSession() as client:
        _, body = await get_echo(client, f"{r.url}/models/m/echo?a=1&user_id=query-user")
        await get_echo(
            client, f"{r.url}/models/m/echo?user_id=query-user", {"X-User-ID": "header-user"}
        )
    assert body["target"] == "/echo?a=1&user_id=query-user"  # the query is still forwarded
    from_query, from_header = r.records()
    assert from_query["assigned_by"] == "split"
    assert from_query["bucket"] == bucket("query-user", "m")
    assert from_header["bucket"] == bucket("header-user", "m")

"""A version a reload removes leaves /metrics and the health and admission books (contract
section 13); under `--workers`, /admin/config shows the workers' view of versions down."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import yaml

from router.config.validate import parse_table
from router.observe.health import grpc_key
from router.observe.metrics import LATENCY_BUCKETS
from router.observe.metrics import Metrics as RouterMetrics
from router.observe.removed import Removals
from router.observe.series import IN_FLIGHT, LATENCY, QUEUED, REQUESTS, UP, SeriesBook
from router.proxy.admission import Admission
from tests.support.client import get_json
from tests.support.metrics import Metrics, scrape
from tests.support.running import router_from_file, router_process, table_data
from tests.support.waiting import poll
from tests.test_admin import down_list
from tests.test_admission import KEY, version

FAMILIES = [family[0] for family in (REQUESTS, LATENCY, UP, IN_FLIGHT, QUEUED)]
OUTLIER = {"failures": 1, "cooloff_s": 60}


def with_sick_v2(backends: dict[str, str]) -> dict[str, Any]:
    """Model `m`: v1 well; v2 answers requests, but its active check always fails, so it is
    marked down (for 60 s) without any traffic."""
    v2 = {"url": backends["v2"], "health": {"path": "/status/500", "interval_s": 0.1}}
    versions = {"v1": {"url": backends["v1"]}, "v2": v2}
    return {"m": {"versions": versions, "split": {"v1": 100, "v2": 0}, "outlier": OUTLIER}}


def v1_only(backends: dict[str, str]) -> dict[str, Any]:
    return {"m": {"versions": {"v1": {"url": backends["v1"]}}, "split": {"v1": 100}}}


def v2_back(backends: dict[str, str]) -> dict[str, Any]:
    """v2 brought back at the same url, without the failing check."""
    versions = {"v1": {"url": backends["v1"]}, "v2": {"url": backends["v2"]}}
    return {"m": {"versions": versions, "split": {"v1": 100, "v2": 0}, "outlier": OUTLIER}}


async def versions_shown(client: aiohttp.ClientSession, admin_url: str) -> set[str]:
    """The versions of model `m` with a sample in any per-version family."""
    metrics = await scrape(client, admin_url)
    return {
        s.labels["version"]
        for name in FAMILIES
        if name in metrics.families
        for s in metrics.families[name].samples
        if s.labels.get("model") == "m"
    }


def rewrite(config: Path, models: dict[str, Any]) -> None:
    """The table file with these models, its server and log sections as they were."""
    table = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({**table, "models": models}))


async def reload_to(
    client: aiohttp.ClientSession, admin_url: str, config: Path, models: dict[str, Any]
) -> None:
    rewrite(config, models)
    async with client.post(f"{admin_url}/admin/reload") as resp:
        assert (await resp.json())["result"] == "loaded"


async def wait_down(client: aiohttp.ClientSession, admin_url: str, down: list[str]) -> None:
    async def probe() -> bool | None:
        return await down_list(client, admin_url) == down or None

    await poll(probe, 10, f"/admin/config to show {down} down")


async def test_a_removed_version_leaves_metrics_and_the_books(
    backends: dict[str, str], tmp_path: Path
) -> None:
    config = tmp_path / "routes.yaml"
    config.write_text(yaml.safe_dump(table_data(with_sick_v2(backends), tmp_path / "log.jsonl")))
    async with router_from_file(config) as router, aiohttp.ClientSession() as client:
        admin = router.admin_url
        status, _ = await get_json(client, f"{router.url}/models/m/versions/v2/echo")
        assert status == 200  # a gate and a request count at v2
        await wait_down(client, admin, ["m/v2"])
        assert await versions_shown(client, admin) == {"v1", "v2"}

        await reload_to(client, admin, config, v1_only(backends))
        assert await versions_shown(client, admin) == {"v1"}
        assert await down_list(client, admin) == []
        assert len(router.proxy.admission) == 0  # v2's gate went (v1 never had traffic)

        # Brought back, v2 starts afresh: up, not down for what its old check said.
        await reload_to(client, admin, config, v2_back(backends))
        metrics = await scrape(client, admin)
        assert metrics.value("model_router_upstream_up", model="m", version="v2") == 1
        assert await down_list(client, admin) == []
        status, body = await get_json(client, f"{router.url}/models/m/versions/v2/echo")
        assert (status, body["version"]) == (200, "v2")


async def test_under_workers_the_admin_view_shows_versions_down_and_drops_removed_ones(
    backends: dict[str, str], tmp_path: Path
) -> None:
    async with (
        router_process(with_sick_v2(backends), tmp_path, "--workers", "2") as proc,
        aiohttp.ClientSession() as client,
    ):
        admin = proc.admin_url
        await wait_down(client, admin, ["m/v2"])  # the workers' checks marked it down
        metrics = await scrape(client, admin)
        assert metrics.value("model_router_upstream_up", model="m", version="v2") == 0

        await reload_to(client, admin, tmp_path / "routes.yaml", v1_only(backends))
        assert await versions_shown(client, admin) == {"v1"}
        assert await down_list(client, admin) == []


def shown(book: SeriesBook) -> dict[tuple[str, str], float]:
    """(family, version) -> value of each gauge sample of model `m` the book writes out."""
    text = b"".join(book.chunks()).decode()
    return {
        (name, s.labels["version"]): s.value
        for name in (UP[0], IN_FLIGHT[0], QUEUED[0])
        for s in Metrics(text).families[name].samples
    }


def test_a_removed_version_with_requests_in_flight_leaves_when_they_are_done() -> None:
    book = SeriesBook(LATENCY_BUCKETS)
    book.track("m", "v2", up=True)
    book.in_flight("m", "v2", 1)
    book.forget("m", "v2")
    assert shown(book) == {}  # its gauges leave at once
    book.set_up("m", "v2", up=False)  # health news of a removed version: still out
    assert shown(book) == {}
    book.in_flight("m", "v2", -1)  # the last request held there is done: the record goes
    book.track("m", "v2", up=True)  # brought back: from 0, never below
    assert shown(book) == {(UP[0], "v2"): 1, (IN_FLIGHT[0], "v2"): 0, (QUEUED[0], "v2"): 0}


async def test_a_removed_gate_goes_once_its_last_place_is_given_back(tmp_path: Path) -> None:
    admission, v1 = Admission(RouterMetrics()), version(tmp_path)
    assert admission.enter(KEY, v1) is None
    admission.forget(KEY)
    assert len(admission) == 1  # held: it stays, so that leave() finds it
    admission.leave(KEY)
    assert len(admission) == 0


def one_model_table(versions: dict[str, dict[str, Any]]) -> Any:
    split = {name: 100 if i == 0 else 0 for i, name in enumerate(versions)}
    return parse_table({"models": {"m": {"versions": versions, "split": split}}})


def test_a_removed_or_moved_grpc_address_leaves_the_books() -> None:
    before = one_model_table(
        {
            "v1": {"url": "http://127.0.0.1:9001", "grpc_url": "127.0.0.1:9011"},
            "v2": {"url": "http://127.0.0.1:9002", "grpc_url": "127.0.0.1:9012"},
            "v3": {"grpc_url": "127.0.0.1:9013"},
        }
    )
    after = one_model_table(
        {
            "v1": {"url": "http://127.0.0.1:9001", "grpc_url": "127.0.0.1:9011"},
            "v2": {"url": "http://127.0.0.1:9002", "grpc_url": "127.0.0.1:9022"},
        }
    )
    removed = Removals(before).after(after, ["m"])
    assert sorted(removed.keys) == sorted(
        [
            grpc_key("m", "v2", "127.0.0.1:9012"),  # moved
            ("m", "v3", ""),  # removed: its (empty) url
            grpc_key("m", "v3", "127.0.0.1:9013"),
        ]
    )
    assert removed.versions == [("m", "v3")]

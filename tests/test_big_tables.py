"""Reloading a big table (issue 14): parsed in a child process and swapped model by model,
with every contract behaviour of reload intact: a refusal names the line and keeps the old
table, a request in flight finishes on the table it started with, `config_loaded` lists
every model."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp
import psutil  # type: ignore[import-untyped]  # types-psutil is not a dev dependency
from aiohttp.test_utils import TestServer

from router.config.apart import load_apart
from router.config.validate import load_table
from tests.support.client import get_json
from tests.support.running import LOOPBACK, read_log, requests_in, router_from_file
from tests.support.waiting import forwarded, poll
from tests.test_reload import post_reload, write_unseen

MODELS, RULES = 400, 10


def big_table(log_path: Path, backends: dict[str, str], split: str = "{v1: 90, v2: 10}") -> str:
    """Model `m` on the test backends, then MODELS tenants' models of RULES rules each."""
    lines = [
        f"server: {{listen: '{LOOPBACK}:0', admin_listen: '{LOOPBACK}:0'}}",
        f'log: {{path: "{log_path}"}}',
        "models:",
        "  m:",
        f'    versions: {{v1: {{url: "{backends["v1"]}"}}, v2: {{url: "{backends["v2"]}"}}}}',
        f"    split: {split}",
    ]
    for n in range(MODELS):
        lines += [
            f"  tenant-{n:04}:",
            f'    versions: {{v1: {{url: "{backends["v1"]}"}}, v2: {{url: "{backends["v2"]}"}}}}',
            "    split: {v1: 50, v2: 50}",
            "    rules:",
        ]
        for r in range(RULES):
            lines += [
                f'      - match: {{header: {{X-Team: "team-{r:02}"}}}}',
                "        version: v2",
            ]
    return "\n".join(lines) + "\n"


async def test_a_big_table_reloads_refuses_and_keeps_requests_on_their_table(
    backends: dict[str, str], backend_servers: dict[str, TestServer], tmp_path: Path
) -> None:
    log_path = tmp_path / "routing.jsonl"
    config = tmp_path / "routes.yaml"
    config.write_text(big_table(log_path, backends, "{v1: 100, v2: 0}"))
    old = load_table(config).digest
    async with router_from_file(config) as router, aiohttp.ClientSession() as client:
        headers = {"X-User-ID": "alice", "X-Request-ID": "in-flight"}
        in_flight = asyncio.create_task(
            get_json(client, f"{router.url}/models/m/slow?s=1", headers=headers)
        )
        await forwarded(backend_servers["v1"].app, "/slow?s=1", within=2.0)

        # A typo deep in the file is refused with its line; the old table stays.
        good = big_table(log_path, backends, "{v1: 0, v2: 100}")
        lines = good.splitlines()
        typo = next(i for i, line in enumerate(lines) if "tenant-0350" in line) + 2
        lines[typo] = lines[typo].replace("split:", "spilt:")
        write_unseen(config, "\n".join(lines) + "\n")
        status, body = await post_reload(client, router.admin_url)
        assert status == 422
        problems = body["error"]["problems"]
        assert any(
            p.startswith(f"{config}:{typo + 1}: models.tenant-0350.spilt: unknown key")
            for p in problems
        ), problems
        _, view = await get_json(client, f"{router.admin_url}/admin/config")
        assert view["config"] == old

        write_unseen(config, good)
        new = load_table(config).digest
        status, body = await post_reload(client, router.admin_url)
        assert (status, body["result"], body["config"]) == (200, "loaded", new)
        assert list(body["models"]) == ["m"]  # the moves of the one model that changed
        headers = {"X-User-ID": "alice", "X-Request-ID": "after"}
        status, after = await get_json(client, f"{router.url}/models/m/echo", headers=headers)
        assert (status, after["version"]) == (200, "v2")
        assert await in_flight == (200, {"version": "v1", "slept": True})
        _, view = await get_json(client, f"{router.admin_url}/admin/config")
        assert len(view["table"]["models"]) == MODELS + 1

        # Another model's edit, and the last model gone: `config_loaded` lists every model
        # as it stands, and no other.
        lines = good.splitlines()
        split = lines.index("  tenant-0007:") + 2
        lines[split] = lines[split].replace("{v1: 50, v2: 50}", "{v1: 60, v2: 40}")
        config.write_text("\n".join(lines[: lines.index(f"  tenant-{MODELS - 1:04}:")]) + "\n")
        status, body = await post_reload(client, router.admin_url)  # the watcher then skips it
        assert (status, body["result"], list(body["models"])) == (200, "loaded", ["tenant-0007"])
        third = body["config"]
    records = {r["request_id"]: r for r in requests_in(log_path)}
    assert (records["in-flight"]["version"], records["in-flight"]["config"]) == ("v1", old)
    assert (records["after"]["version"], records["after"]["config"]) == ("v2", new)
    loaded = [r for r in read_log(log_path) if r["event"] == "config_loaded"]
    assert [r["config"] for r in loaded] == [old, new, third]
    assert len(loaded[1]["models"]) == MODELS + 1
    assert list(loaded[2]["models"]) == ["m", *(f"tenant-{n:04}" for n in range(MODELS - 1))]
    assert loaded[1]["models"]["m"]["split"] == {"v1": 0, "v2": 100}
    assert loaded[2]["models"]["m"] == {"split": {"v1": 0, "v2": 100}}  # no moves this time
    tenant = loaded[2]["models"]["tenant-0007"]
    assert tenant["split"] == {"v1": 60, "v2": 40}
    assert tenant.keys() > {"split"}  # and its moves
    assert loaded[2]["models"]["tenant-0008"] == {"split": {"v1": 50, "v2": 50}}
    rejected = [r for r in read_log(log_path) if r["event"] == "config_rejected"]
    assert len(rejected) == 1


async def test_a_reload_cut_short_ends_its_child(tmp_path: Path) -> None:
    """A reload cancelled while its child reads (the router stopping) kills the child: a
    parse of a big table goes on for seconds, and nothing would read its answer. The file
    is a named pipe that nobody writes, so the child would wait on it for ever."""
    fifo = tmp_path / "routes.yaml"
    os.mkfifo(fifo)
    reload = asyncio.create_task(load_apart(fifo))

    async def reading() -> list[psutil.Process] | None:
        found = [c for c in psutil.Process().children() if "router.config.apart" in c.cmdline()]
        return found or None

    children = await poll(reading, 5.0, "the reload's child process")
    reload.cancel()
    await asyncio.gather(reload, return_exceptions=True)
    _, alive = await asyncio.to_thread(psutil.wait_procs, children, timeout=5)
    for child in alive:  # the test failed: do not leave the child behind
        child.kill()
    assert alive == []

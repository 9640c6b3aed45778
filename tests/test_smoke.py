from __future__ import annotations

from pathlib import Path

import aiohttp

from tests.support.running import router_running


async def test_split_request_reaches_backend_and_is_logged(
    backends: dict[str, str], tmp_path: Path
) -> None:
    models = {"m": {"versions": {"v1": {"url": backends["v1"]}, "v2": {"url": backends["v2"]}},
                    "split": {"v1": 50, "v2": 50}}}  # fmt: skip
    async with router_running(models, tmp_path) as r, aiohttp.ClientSession() as client:
        async with client.get(f"{r.url}/models/m/echo?a=%20b", headers={"X-User-ID": "u1"}) as resp:
            assert resp.status == 200
            body = await resp.json()
    assert body["target"] == "/echo?a=%20b"
    (record,) = r.records()
    assert record["assigned_by"] == "split"
    assert record["version"] == body["version"]

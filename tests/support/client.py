"""HTTP calls a test makes through aiohttp's client, and what it reads from the answers."""

from __future__ import annotations

from typing import Any

import aiohttp


async def get_json(
    client: aiohttp.ClientSession, url: str, **kwargs: Any
) -> tuple[int, dict[str, Any]]:
    """GET `url`; the status and the JSON body."""
    async with client.get(url, **kwargs) as resp:
        return resp.status, await resp.json()

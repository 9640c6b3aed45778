"""The admin listener's /metrics, read with prometheus-client's own parser, never by matching
text."""

from __future__ import annotations

from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

REQUESTS = "model_router_requests", "model_router_requests_total"  # family, sample


class Metrics:
    """One scrape of /metrics, parsed by prometheus-client."""

    def __init__(self, text: str) -> None:
        self.families = {f.name: f for f in text_string_to_metric_families(text)}

    def samples(self, family: str, name: str | None = None) -> list[Any]:
        return [s for s in self.families[family].samples if s.name == (name or family)]

    def value(self, family: str, name: str | None = None, **labels: str) -> float | None:
        """The value of the one sample with these labels (others ignored), or None."""
        found = [
            s.value
            for s in self.samples(family, name)
            if all(s.labels.get(k) == v for k, v in labels.items())
        ]
        assert len(found) <= 1, found
        return found[0] if found else None


async def scrape(client: aiohttp.ClientSession, admin_url: str) -> Metrics:
    async with client.get(f"{admin_url}/metrics") as resp:
        assert resp.status == 200
        return Metrics(await resp.text())

"""The `models` section of a routing table, over the echo backends of the `backends` fixture."""

from __future__ import annotations

from typing import Any


def model(backends: dict[str, str], split: dict[str, float], **settings: Any) -> dict[str, Any]:
    """Model `m` over every backend in `backends`, split as given; `settings` adds keys."""
    versions = {name: {"url": url} for name, url in backends.items()}
    return {"m": {"versions": versions, "split": split, **settings}}


def one_model(backends: dict[str, str], **extra: Any) -> dict[str, Any]:
    """One model `m`, wholly on the v1 backend; `extra` adds keys."""
    return {"m": {"versions": {"v1": {"url": backends["v1"]}}, "split": {"v1": 100}, **extra}}

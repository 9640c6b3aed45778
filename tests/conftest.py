"""Shared fixtures: two real echo backends on loopback ports."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.echo import create_echo_app
from tests.support.running import serving


@pytest.fixture
async def backends() -> AsyncIterator[dict[str, str]]:
    """Base URLs of two echo backends, `v1` and `v2`."""
    async with serving(create_echo_app("v1")) as v1, serving(create_echo_app("v2")) as v2:
        yield {"v1": v1, "v2": v2}

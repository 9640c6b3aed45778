"""Shared fixtures: two real echo backends on loopback ports."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpServer

from tests.support.echo import create_echo_app
from tests.support.running import BACKEND_RUNNER, LOOPBACK, base_url


@pytest.fixture
async def backend_servers(aiohttp_server: AiohttpServer) -> dict[str, TestServer]:
    """Two echo backends, `v1` and `v2`, on loopback ports, stopped when the test ends.

    `backend_servers["v1"].app` is the backend's application, for what it saw (`SEEN`).
    """
    return {
        name: await aiohttp_server(create_echo_app(name), host=LOOPBACK, **BACKEND_RUNNER)
        for name in ("v1", "v2")
    }


@pytest.fixture
def backends(backend_servers: dict[str, TestServer]) -> dict[str, str]:
    """Base URLs of two echo backends, `v1` and `v2`."""
    return {name: base_url(server) for name, server in backend_servers.items()}

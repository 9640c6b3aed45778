"""tritonclient in the tests: a client of either transport, always closed, and its
synchronous calls run in a worker thread so that the event loop keeps serving."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")


@contextmanager
def triton(module: Any, address: str) -> Iterator[Any]:
    """A client of `module` (tritonclient.http or tritonclient.grpc) for `address`."""
    client = module.InferenceServerClient(address.removeprefix("http://"))
    try:
        yield client
    finally:
        client.close()


async def session(module: Any, address: str, calls: Callable[[Any], T]) -> T:
    """`calls(client)` with a client of `module`, in a worker thread."""

    def run() -> T:
        with triton(module, address) as client:
            return calls(client)

    return await asyncio.to_thread(run)

"""Admission's hand-offs, driven directly on a real event loop: the cases too narrow to
reach from outside (a request cancelled in the very turn it is handed a place)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from router.config.model import Version
from router.config.validate import parse_table
from router.observe.metrics import Metrics
from router.proxy.admission import Admission
from tests.support.running import table_data
from tests.support.tables import one_model

KEY = ("m", "v1", "http://127.0.0.1:9")


def version(tmp_path: Path) -> Version:
    models = one_model({"v1": KEY[2]})
    models["m"]["versions"]["v1"].update(max_in_flight=1, queue_s=30)
    return parse_table(table_data(models, tmp_path / "log.jsonl")).models["m"].versions["v1"]


async def test_a_place_handed_to_a_request_cancelled_in_that_turn_passes_on(
    tmp_path: Path,
) -> None:
    """The place goes to the waiter, whose task is cancelled before it runs again: the
    place must come back, or the version loses it for good (in flight 1, nobody there)."""
    admission, v1 = Admission(Metrics()), version(tmp_path)
    assert admission.enter(KEY, v1) is None  # the one place
    waiter = admission.enter(KEY, v1)
    assert waiter is not None
    waiting = asyncio.create_task(admission.wait(KEY, v1, waiter))
    await asyncio.sleep(0)  # it awaits its turn
    admission.leave(KEY)  # the place passes to it...
    waiting.cancel()  # ...and its client leaves in the same turn
    await asyncio.gather(waiting, return_exceptions=True)
    assert waiter.done()
    assert not waiter.cancelled()  # it had been handed the place
    assert admission.enter(KEY, v1) is None  # the place is free again

"""The workers' metrics as the supervisor shows them (`serve --workers`).

Workers keep prometheus-client's multiprocess values, one file per process, which the
supervisor sums. A value cannot be taken out of those files, so a version a reload removed
would stay on /metrics for ever (issue 21); the supervisor, which follows the table as the
workers do, shows each version's series only for the versions of the table in force. It
also reads from them which versions the workers have down: its own health book never sees
a request, so it would show no version ever down.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import multiprocess
from prometheus_client.registry import Collector

from router.config.model import Table
from router.observe.metrics import NONE
from router.observe.series import IN_FLIGHT, LATENCY, QUEUED, REQUESTS, UP

PER_VERSION = frozenset(family[0] for family in (REQUESTS, LATENCY, UP, IN_FLIGHT, QUEUED))


class InForce(Collector):
    """All the workers' values, each version's series only for versions in force."""

    def __init__(self, tables: Callable[[], Table], directory: str | None = None) -> None:
        self._all = multiprocess.MultiProcessCollector(None, directory)  # type: ignore[no-untyped-call]  # untyped upstream
        self._tables = tables

    def collect(self) -> Iterator[Any]:
        table = self._tables()
        for family in self._all.collect():  # type: ignore[no-untyped-call]  # untyped upstream
            if family.name in PER_VERSION:
                family.samples = [s for s in family.samples if in_force(table, s.labels)]
            yield family


def in_force(table: Table, labels: Mapping[str, str]) -> bool:
    """Is the (model, version) of these labels a version of `table`? The `none` of a
    request that matched no model or version always is."""
    model, version = labels.get("model", NONE), labels.get("version", NONE)
    if model == NONE or version == NONE:
        return True
    found = table.models.get(model)
    return found is not None and version in found.versions


def versions_down(table: Table, directory: str | None = None) -> list[str]:
    """`model/version` of each version of `table` some live worker has marked down: the
    up gauge is `livemin`, so 0 as soon as one worker says down. Files only: seconds of
    work on a table of thousands of versions, so call it in a thread."""
    directory = directory or os.environ["PROMETHEUS_MULTIPROC_DIR"]
    down = set(_zeros(glob.glob(os.path.join(directory, "gauge_livemin_*.db"))))
    return [
        f"{model.name}/{version.name}"
        for model in table.models.values()
        for version in model.versions.values()
        if (model.name, version.name) in down
    ]


def _zeros(files: Iterable[str]) -> Iterator[tuple[str, str]]:
    families = multiprocess.MultiProcessCollector.merge(list(files), accumulate=False)  # type: ignore[no-untyped-call]  # untyped upstream
    for family in families:
        if family.name == UP[0]:
            for sample in family.samples:
                if sample.value == 0:
                    yield sample.labels["model"], sample.labels["version"]

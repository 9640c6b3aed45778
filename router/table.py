"""The holder of the routing table in force.

A table is immutable; reloading builds and validates a whole new one, then swaps one
reference. A request reads `holder.current` once, at its start, and keeps that table to
the end, so requests in flight finish on the table they started with.
"""

from __future__ import annotations

import time
from pathlib import Path

from router.config import Table


class TableHolder:
    def __init__(self, table: Table, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.current = table
        self.loaded_at = time.time()

    def swap(self, table: Table) -> Table:
        """Put `table` in force; returns the one it replaces."""
        old, self.current = self.current, table
        self.loaded_at = time.time()
        return old

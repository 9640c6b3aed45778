"""The holder of the routing table in force, and its reloading.

A table is immutable; reloading builds and validates a whole new one in a child process
(apart.py), then swaps one reference. A request reads `holder.current` once, at its start, and keeps
that table to the end, so requests in flight finish on the table they started with. A table
that fails validation is refused whole: the old one stays in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import gc
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from structlog.typing import FilteringBoundLogger

from router.config import churn
from router.config.apart import Loaded, load_apart
from router.config.model import ConfigError, Model, Table
from router.http.clock import iso_utc

WATCH_INTERVAL_S = 0.5  # a changed file is in force within about two intervals
RETRY_S = 5.0  # after the watcher itself failed (a bug, no thread to be had), it waits this

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReloadResult:
    result: Literal["loaded", "unchanged", "rejected"]
    digest: str
    problems: tuple[str, ...] = ()
    moves: dict[str, Any] = dataclasses.field(default_factory=dict)


def model_summary(model: Model) -> dict[str, Any]:
    """One model's entry in `config_loaded`: its split, and its shadow if it has one."""
    entry: dict[str, Any] = {"split": model.split.as_dict()}
    if model.shadow is not None:
        entry["shadow"] = {"version": model.shadow.version, "percent": model.shadow.percent}
    return entry


# Settings that belong to the process, not to routing: a reload cannot change them.
_FIXED = (("server", "listen"), ("server", "admin_listen"), ("server", "admin_token_env"),
          ("server", "drain_s"), ("server", "grpc_listen"), ("server", "tracing"),
          ("log", "path"),
          ("log", "user_ids"))  # fmt: skip


class TableHolder:
    def __init__(
        self,
        table: Table,
        path: str | Path | None,
        log: FilteringBoundLogger,
        counted: Callable[[str], None] | None,
        overrides: Callable[[Table], Table] = lambda table: table,
    ) -> None:
        """`overrides` applies command-line flags to every table read from the file.

        `on_swap` callbacks run with each new table put in force, and the models it changed.
        """
        # Called with the table and the names of the models it changed or added.
        self.on_swap: list[Callable[[Table, Collection[str]], None]] = []
        self.path = Path(path) if path is not None else None
        self._overrides = overrides
        self.current = table
        self.loaded_at = time.time()
        self.last_refusal: dict[str, Any] | None = None
        # Settings the file changed that only a restart applies (see _keep_fixed).
        self.restart_needed: list[str] = []
        self._log = log
        self._counted = counted  # told each reload's result: loaded, unchanged, rejected
        self._lock = asyncio.Lock()
        # The file as last read, by any reload: the watcher leaves a file already read alone.
        self._read = _signature(self.path) if self.path is not None else None
        # What the next reload tells its child of the table in force (apart.py), and each
        # model's `config_loaded` entry: both worked out once per model, not per reload.
        self._known = b""
        self._entries: dict[str, dict[str, Any]] = {}

    def announce(self, reason: str = "start") -> None:
        """Log the table in force, as at start and at the top of a reopened log file, so
        that every log file says which split its records were routed by."""
        self._log.info(
            "config_loaded",
            config=self.current.digest,
            source=str(self.path),
            pid=os.getpid(),
            models=self._summary(self.current),
            reason=reason,
        )

    async def reload(self, reason: str) -> ReloadResult:
        """Read the file again; put it in force if valid, else keep the old table."""
        if self.path is None:
            return ReloadResult("unchanged", self.current.digest)
        async with self._lock:
            try:
                # Taken before the read: a file changed during it is read again by the watcher.
                self._read = await asyncio.to_thread(_signature, self.path)
                limit_s = self.current.server.reload_timeout_s
                loaded = await load_apart(self.path, self.current, self._known, limit_s)
            except ConfigError as exc:
                return self._refuse(exc.messages(), reason)
            except Exception as exc:  # a reload that cannot run is refused, never lost (§13)
                _log.exception("reload (%s) of %s failed", reason, self.path)
                return self._refuse([f"the reload could not run: {exc!r}"], reason)
            if loaded is None:  # the file says what the table in force says
                return self._unchanged()
            await asyncio.sleep(0)  # requests first: the swap's bookkeeping is a few ms more
            return await self._install(loaded, reason)

    def _refuse(self, problems: list[str], reason: str) -> ReloadResult:
        self.last_refusal = {"at": iso_utc(time.time()), "reason": reason, "problems": problems}
        self._count("rejected")
        self._log.warning(
            "config_rejected",
            config=self.current.digest,
            source=str(self.path),
            pid=os.getpid(),
            reason=reason,
            error=problems,
        )
        return ReloadResult("rejected", self.current.digest, tuple(problems))

    async def _install(self, loaded: Loaded, reason: str) -> ReloadResult:
        """Swap the table in and log `config_loaded` in the same turn of the loop (a request
        record never names a table before its `config_loaded`); the rest comes after."""
        table, ignored = _keep_fixed(self.current, self._overrides(loaded.table))
        self.restart_needed = ignored
        if table.digest == self.current.digest:
            return self._unchanged()
        previous = self.current.digest
        moves = churn.churn(self.current, table, loaded.changed)
        fields: dict[str, Any] = {"previous": previous, "reason": reason}
        if ignored:
            fields["restart_needed"] = ignored
        self._log.info(
            "config_loaded",
            config=table.digest,
            source=str(self.path),
            pid=os.getpid(),
            models=self._summary(table, loaded.changed, moves),
            **fields,
        )
        # The old table is freed here, unless a request still holds it (the new one was
        # frozen out of the collector's sight as it was built: apart.py).
        self.current, self._known = table, loaded.known
        self.loaded_at = time.time()
        self._count("loaded")
        await asyncio.sleep(0)
        for callback in self.on_swap:
            callback(table, loaded.changed)
        give_back_memory()
        summary = {name: change.as_dict() for name, change in moves.items()}
        return ReloadResult("loaded", table.digest, moves=summary)

    def _summary(
        self,
        table: Table,
        changed: Collection[str] = (),
        moves: Mapping[str, churn.ModelChurn] = MappingProxyType({}),
    ) -> dict[str, Any]:
        """The `models` field of `config_loaded` for `table`: each model's entry, made once
        and kept while the model is unchanged (10,000 models: 4-6 -> about 1 ms), with the
        moves a reload made. For a table a reload is putting in force, `changed` names the
        models it changed from the table in force. (Not kept as orjson fragments: each
        small `orjson.dumps` result holds about 4 KB, 40 MB on 10,000 models.)"""
        if not self._entries:
            self._entries = {name: model_summary(model) for name, model in table.models.items()}
        elif table is not self.current:
            entries = dict(self._entries)
            for name in self.current.models.keys() - table.models.keys():
                del entries[name]
            for name in changed:
                entries[name] = model_summary(table.models[name])
            self._entries = entries
        summary: dict[str, Any] = dict(self._entries)
        for name, change in moves.items():
            summary[name] = {**model_summary(table.models[name]), **change.as_dict()}
        return summary

    def _unchanged(self) -> ReloadResult:
        self._count("unchanged")
        return ReloadResult("unchanged", self.current.digest)

    def _count(self, result: str) -> None:
        if self._counted is not None:
            self._counted(result)

    async def watch(self, interval: float = WATCH_INTERVAL_S) -> None:
        """Reload when the file changes: written in place, renamed over, or a symlink swapped.

        `os.stat` follows symlinks, so a Kubernetes ConfigMap update (`..data` pointed at a
        new folder) shows as a new inode. A change is acted on once the file has been stable
        for one interval, so a half-written file is not read. A file an admin reload or a
        SIGHUP has read already is not read again: on a big table each read is seconds of a
        child process's CPU.
        """
        assert self.path is not None
        while True:
            await asyncio.sleep(interval)
            try:
                await self._look(interval)
            except Exception:  # the watcher outlives anything: said, and the next change tried
                _log.exception("watching %s failed; looking again in %g s", self.path, RETRY_S)
                await asyncio.sleep(RETRY_S)

    async def _look(self, interval: float) -> None:
        """One look at the file: reload it if it changed and has since held still."""
        assert self.path is not None
        now = await asyncio.to_thread(_signature, self.path)
        if now == self._read or now is None:
            return
        await asyncio.sleep(interval)
        if await asyncio.to_thread(_signature, self.path) != now or now == self._read:
            return  # still being written, or read meanwhile
        await self.reload("file changed")


@asynccontextmanager
async def watching(holder: TableHolder) -> AsyncIterator[None]:
    """Lifecycle of the file watcher: a task for as long as the app runs."""
    if holder.path is None:
        yield
        return
    task = asyncio.create_task(holder.watch())
    try:
        yield
    finally:
        task.cancel()
        # Only the cancellation is expected: anything else the watcher raised surfaces here.
        with contextlib.suppress(asyncio.CancelledError):
            await task


def keep_out_of_gc() -> None:
    """Move every object alive now, the table in force among them, out of the cyclic
    collector's sight (`gc.freeze`, as the CPython docs advise for a server's long-lived
    objects): a full collection then walks requests' objects, not a big table's hundreds of
    thousands. A table has no cycles, so refcounting still frees one that goes out of force."""
    gc.freeze()


def _libc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL("libc.so.6").malloc_trim
        return trim
    except (OSError, AttributeError):  # not glibc: nothing to call
        return None


_TRIM = _libc_trim()


def give_back_memory() -> None:
    """Hand the heap's free pages back to the system (glibc's `malloc_trim`, 1 ms): what a
    reload freed would otherwise stay in the process's resident size (14 MB of 90 on a
    2,000-model table)."""
    if _TRIM is not None:
        _TRIM(0)


def _signature(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None  # mid-swap, or removed: keep the table in force
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def _keep_fixed(old: Table, new: Table) -> tuple[Table, list[str]]:
    """Keep the process-level settings of `old` in `new`; name those a restart would change."""
    ignored = [
        f"{section}.{key}"
        for section, key in _FIXED
        if getattr(getattr(old, section), key) != getattr(getattr(new, section), key)
    ]
    fixed_server = {k: getattr(old.server, k) for s, k in _FIXED if s == "server"}
    fixed_log = {k: getattr(old.log, k) for s, k in _FIXED if s == "log"}
    server = dataclasses.replace(new.server, **fixed_server)
    log = dataclasses.replace(new.log, **fixed_log)
    return dataclasses.replace(new, server=server, log=log), ignored

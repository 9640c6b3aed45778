"""Reading a table where it cannot stall traffic: in a child process.

Parsing and validating a big table is seconds of CPU-bound Python. In a thread it would hold
the serving process's GIL and stall every request on the worker (1.3 s for 2,000 models of
20 rules each), and its parse trees would stay in the worker's heap as fragmentation. So a
reload runs `python -m router.config.apart FILE`: the child reads the file, validates it,
and writes the table back pickled, one model at a time. The serving process unpickles the
models in slices of a few milliseconds, yielding to the event loop between them, and then
swaps one reference (holder.py).
"""

from __future__ import annotations

import asyncio
import gc
import os
import pickle
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType

from router.config.model import ConfigError, Model, Problem, Table
from router.config.validate import load_table
from router.config.yamlmarks import collector_off

SLICE_S = 0.005  # the longest the event loop waits on unpickling at a time


@dataclass(frozen=True, slots=True)
class Loaded:
    """A table read apart, with what the serving loop would otherwise work out itself."""

    table: Table
    changed: tuple[str, ...]  # its models that are new, or written otherwise than before
    known: bytes  # what the next reload tells its child of this table (see `known`)


async def load_apart(
    path: Path, current: Table | None = None, told: bytes = b"", limit_s: float | None = None
) -> Loaded | None:
    """The table in `path`, read and validated in a child process; ConfigError if refused,
    None if it is `current` as it stands. Models that `current` has as written are not sent
    back: the new table shares them, so a reload costs what it changed. `told` is
    `known(current)`, if the caller has it already (the last reload's `Loaded.known`).

    A reader that cannot start (EMFILE at the open-files limit the router nears on purpose)
    or does not answer within `limit_s` seconds (a file on a hung mount, a FIFO) is a
    refusal too, ConfigError naming the cause (contract section 13): the child is killed."""
    # Started by subprocess (vfork: 0.3 ms), not by the event loop: uvloop forks, which
    # copies the page tables of the whole heap first (7.5 ms at 200 MB) while the loop waits.
    pipe = subprocess.PIPE
    try:
        child = subprocess.Popen(_command(path), stdin=pipe, stdout=pipe, stderr=pipe)  # noqa: ASYNC220
    except OSError as exc:
        raise _cannot_read(path, f"the reader process could not start: {exc}") from exc
    try:
        out, err = await asyncio.to_thread(_answer, child, told or known(current), limit_s)
    except subprocess.TimeoutExpired as exc:
        reason = f"the reader did not answer within server.reload_timeout_s ({limit_s:g} s)"
        raise _cannot_read(path, f"{reason}; it was stopped") from exc
    except BaseException:  # the router is stopping (cancelled): the parse is not wanted
        child.kill()
        raise
    unpacked = _unpack(path, child.returncode, out, err)
    if unpacked is None:
        return None
    shell, parts, next_known = unpacked
    kept = current.models if current is not None else {}
    models: dict[str, Model] = {}
    started = time.perf_counter()
    # Hundreds of thousands of new objects would set off the cyclic collector over and over,
    # each pass walking the whole heap (70 ms on the 2,000 x 20 table), and the first pass
    # after would walk them all once more (25 ms). A table has no cycles: it is built with
    # the collector off and frozen out of its sight (`gc.freeze`) before it is back on;
    # refcounting still frees the table once it goes out of force.
    with collector_off():
        for name, blob in parts:
            models[name] = kept[name] if blob is None else pickle.loads(blob)
            if time.perf_counter() - started > SLICE_S:
                await asyncio.sleep(0)  # let requests run between slices
                started = time.perf_counter()
        shell_table: Table = pickle.loads(shell)
        table = replace(shell_table, models=MappingProxyType(models))
        gc.freeze()
    changed = tuple(name for name, blob in parts if blob is not None)
    return Loaded(table, changed, next_known)


def _answer(
    child: subprocess.Popen[bytes], told: bytes, timeout: float | None
) -> tuple[bytes, bytes]:
    """The child's output; a child still running after `timeout` is killed and reaped,
    and TimeoutExpired raised."""
    try:
        return child.communicate(told, timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        raise


def _cannot_read(path: Path, reason: str) -> ConfigError:
    return ConfigError(str(path), [Problem(None, "", f"the table could not be read: {reason}")])


def load_apart_now(path: Path) -> Table:
    """`load_apart` before serving, when nothing can stall: the serving process then never
    holds the parse's garbage (RSS 200 MB -> 90 MB on the 2,000 x 20 table)."""
    child = subprocess.run(_command(path), input=known(None), capture_output=True, check=False)
    unpacked = _unpack(path, child.returncode, child.stdout, child.stderr)
    assert unpacked is not None  # with no table known, nothing is "unchanged"
    shell, parts, _ = unpacked
    models = {name: pickle.loads(blob) for name, blob in parts if blob is not None}
    table: Table = pickle.loads(shell)
    return replace(table, models=MappingProxyType(models))


def _command(path: Path) -> tuple[str, ...]:
    return sys.executable, "-m", "router.config.apart", str(path)


def known(table: Table | None) -> bytes:
    """What a child is told of the table in force: its digest and its models'."""
    if table is None:
        return pickle.dumps((None, {}))
    return pickle.dumps((table.digest, {n: m.digest for n, m in table.models.items()}))


Parts = list[tuple[str, bytes | None]]  # each model pickled, or None: as in the known table


def _unpack(
    path: Path, returncode: int | None, out: bytes, err: bytes
) -> tuple[bytes, Parts, bytes] | None:
    """What the child wrote: the table's parts and what to tell the next child of it, None
    if it is the known table, or its refusal raised as ConfigError."""
    if returncode != 0 or not out:
        message = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise _cannot_read(path, message[0])
    try:
        kind, payload = pickle.loads(out)
    except Exception as exc:  # any bytes at all: pickle raises what the garbage leads it to
        raise _cannot_read(path, f"the reader's answer is not readable: {exc!r}") from exc
    if kind == "unchanged":
        return None
    if kind == "refused":
        source, problems = payload
        raise ConfigError(source, problems)
    shell, parts, next_known = payload
    return shell, parts, next_known


def _dump(path: str, told: bytes) -> bytes:
    """The table in `path` as the parent takes it: the table without its models, then each
    model pickled apart, or None for a model the parent has as written (`told`: `known`)."""
    try:
        table = load_table(path)
    except ConfigError as exc:
        return pickle.dumps(("refused", (exc.source, exc.problems)))
    digest, models = pickle.loads(told)
    if table.digest == digest:
        return pickle.dumps(("unchanged", digest))
    parts = [
        (name, None if models.get(name) == model.digest else pickle.dumps(model, 5))
        for name, model in table.models.items()
    ]
    shell = pickle.dumps(replace(table, models=MappingProxyType({})), 5)
    return pickle.dumps(("loaded", (shell, parts, known(table))), 5)


if __name__ == "__main__":
    # Below the server in the CPU's queue: on a machine with few cores the parse must take
    # what the serving loop leaves, not the other way round.
    os.nice(10)
    sys.stdout.buffer.write(_dump(sys.argv[1], sys.stdin.buffer.read()))

"""The routing log's writer: lines kept in order, in bounded memory, written off the event
loop, through disk faults (contract section 13).

Handlers only append a rendered line to a queue; one writer thread per process takes lines
off in batches and appends each batch with one `os.write`. The file is opened with O_APPEND,
so several worker processes share it and lines stay whole.

When the file cannot be written (disk full, I/O error, its directory removed), the lines
wait in memory, in order, up to `log.buffer_mb`; beyond that the oldest are dropped, each
one counted by reason. The thread tries again every RETRY_S, says on stderr what failed (at
most once a minute), and re-creates a file that was removed or renamed away. Nothing it
meets ends it: a writer that died would leave the router serving with no evidence.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Final, Literal

from router.observe.logfile import LogFile, Unwritten

DropReason = Literal["buffer_full", "shutdown"]
DROP_REASONS: Final[tuple[DropReason, ...]] = ("buffer_full", "shutdown")

FLUSH_S: Final = 0.05  # lines reach the file within this long after they are logged
RETRY_S: Final = 0.5  # while writing fails, tried again this often (the contract: <= 1 s)
WARN_EVERY_S: Final = 60.0  # at most one stderr line a minute while the fault lasts
CLOSE_S: Final = 5.0  # at exit, a failing disk is tried this long before the rest is lost
BATCH_BYTES: Final = 1 << 20  # taken off the queue at a time, to keep the lock short
# What a queued line costs beyond its text: the bytes object's header and its deque slot.
LINE_OVERHEAD: Final = sys.getsizeof(b"") + 8

_REOPEN: Final = object()

Dropped = Callable[[DropReason, int], None]


class LogSink:
    """A structlog logger that hands rendered lines to a writer thread.

    `msg` appends to a queue under a lock held for a few operations: a stalled disk costs
    memory (at most `buffer_bytes`), never request latency. The thread wakes every FLUSH_S
    and writes what is there, one `os.write` per batch. `close()` writes everything it can.
    """

    def __init__(
        self, path: str, buffer_bytes: int = 64 << 20, on_drop: Dropped | None = None
    ) -> None:
        """`on_drop(reason, count)` is told of every line dropped (a metrics counter);
        `on_new_file`, if set, is called from the writer thread after the file was
        re-created at its path by the writer itself (not after `reopen`)."""
        self.path = path
        self.buffer_bytes = buffer_bytes
        self.on_drop = on_drop
        self.on_new_file: Callable[[], None] | None = None
        self.dropped: dict[DropReason, int] = dict.fromkeys(DROP_REASONS, 0)
        self._lock = threading.Lock()
        # Lines, and REOPEN marks in their place among them: lines logged before a reopen
        # go to the old file, lines logged after it to the new one.
        self._pending: deque[bytes | object] = deque()
        self._size = 0  # what the lines held cost, LINE_OVERHEAD each included (see _shed)
        self._batch: list[bytes] = []  # the lines being written, out of _pending
        self._given_up = 0  # how many of the batch's first lines the bound gave up
        self._reopen_due = False  # a REOPEN mark went with the lines dropped before it
        self._wake = threading.Event()
        self._stop = False
        self._deadline = math.inf  # set by close()
        self._file = LogFile(path)  # raises OSError: the router cannot start
        self._failure: str | None = None  # what failed last, while it lasts
        self._warned_at = -math.inf
        self._said_failure = False  # the fault in progress was said on stderr
        self._warned_drops = 0
        self._thread = threading.Thread(target=self._run, name="routing-log", daemon=True)
        self._thread.start()

    def msg(self, line: bytes) -> None:
        shed = 0
        with self._lock:
            self._pending.append(line)
            self._size += len(line) + LINE_OVERHEAD
            if self._size > self.buffer_bytes:
                shed = self._shed()
        if shed:
            self._count("buffer_full", shed)

    info = warning = error = critical = debug = msg

    def reopen(self) -> None:
        """Open the file again under its name, after logrotate has moved it away."""
        with self._lock:
            self._pending.append(_REOPEN)
        self._wake.set()

    def close(self, timeout: float = CLOSE_S) -> None:
        """Write what is queued; a disk still failing after `timeout` loses the rest, counted."""
        self._deadline = time.monotonic() + timeout
        self._stop = True
        self._wake.set()
        self._thread.join(timeout + 1.0)
        if self._thread.is_alive():  # a write stuck in the kernel (say, a hung NFS server)
            self._lose_rest("a write did not return")

    def held(self) -> tuple[int, int]:
        """Lines waiting to be written (one a failed write cut short included), and what
        those queued cost in bytes."""
        with self._lock:
            count = sum(isinstance(i, bytes) for i in self._pending)
            count += len(self._batch) - self._given_up
            return count + (self._file.tail is not None), self._size

    # --- the queue, under the lock ---
    #
    # `_size` counts the queued lines and those of the batch being written, but for the
    # batch's first `_given_up`: lines the bound wanted gone while the writer had them. If the
    # write succeeds they reached the file anyway; if it fails they are dropped then. So the
    # oldest lines always go first, and the bound holds but for one batch in flight.

    def _shed(self) -> int:
        """Give up the oldest lines until the queue fits its bound again (lock held); the
        number dropped from the queue (the batch's are counted when its write ends)."""
        shed = 0
        pending, batch = self._pending, self._batch
        while self._size > self.buffer_bytes:
            if self._given_up < len(batch):
                self._size -= len(batch[self._given_up]) + LINE_OVERHEAD
                self._given_up += 1
                continue
            if not pending:
                break
            item = pending.popleft()
            if isinstance(item, bytes):
                self._size -= len(item) + LINE_OVERHEAD
                shed += 1
            else:
                self._reopen_due = True  # every line it stood behind is gone: reopen next
        return shed

    def _take(self) -> tuple[list[bytes], bool]:
        """The next batch of lines, and whether the file is to be reopened after them."""
        taken = 0
        with self._lock:
            lines: list[bytes] = []
            self._batch, self._given_up = lines, 0
            pending = self._pending
            if self._reopen_due:
                self._reopen_due = False
                return lines, True
            while pending and taken < BATCH_BYTES:
                item = pending.popleft()
                if not isinstance(item, bytes):
                    return lines, True
                lines.append(item)
                taken += len(item)
            return lines, False

    def _written(self, unwritten: list[bytes]) -> None:
        """The batch's write ended with `unwritten` (its last lines) not in the file: those
        the bound gave up are dropped now, the others go back to the front, in order."""
        batch = self._batch
        done = len(batch) - len(unwritten)
        with self._lock:
            kept_from = max(done, self._given_up)
            dropped = kept_from - done
            self._size -= sum(len(line) + LINE_OVERHEAD for line in batch[self._given_up : done])
            self._pending.extendleft(reversed(batch[kept_from:]))
            self._batch, self._given_up = [], 0
        if dropped:
            self._count("buffer_full", dropped)

    def _count(self, reason: DropReason, n: int) -> None:
        with self._lock:
            self.dropped[reason] += n
        if self.on_drop is not None:
            self.on_drop(reason, n)

    # --- the writer thread ---

    def _run(self) -> None:
        while True:
            self._wake.wait(RETRY_S if self._failure else FLUSH_S)
            self._wake.clear()
            stopping = self._stop
            try:
                self._flush()
            except OSError as exc:
                self._failed(_describe(exc))
            except Exception as exc:  # a bug must not end the log: it is said, and tried again
                self._failed(f"{type(exc).__name__}: {exc}")
            if stopping and (self._empty() or time.monotonic() > self._deadline):
                self._lose_rest(self._failure or "the writer stopped")
                self._file.close()
                return

    def _flush(self) -> None:
        """Write every batch queued; a failure raises OSError, the rest kept for later."""
        with self._lock:
            busy = bool(self._pending) or self._reopen_due
        if self._file.check(busy or self._file.tail is not None) and self.on_new_file:
            self.on_new_file()
        self._file.finish_tail()
        while True:
            lines, reopen = self._take()
            if lines:
                try:
                    self._file.write(lines)
                except Unwritten as unwritten:
                    self._written(unwritten.lines)
                    raise unwritten.error from None
                self._written([])
            if reopen:
                self._file.reopen()
            elif not lines:
                break
        self._recovered()

    def _empty(self) -> bool:
        with self._lock:
            return not self._pending and self._file.tail is None

    def _lose_rest(self, why: str) -> None:
        """At exit: count what is still unwritten as lost, and say so."""
        with self._lock:
            lost = sum(isinstance(i, bytes) for i in self._pending)
            self._pending.clear()
            self._size = 0
        lost += self._file.tail is not None
        self._file.tail = None
        if lost:
            self._count("shutdown", lost)
            _say(f"log {self.path}: {lost} records could not be written before exit ({why})")

    def _failed(self, what: str) -> None:
        self._failure = what
        if self._warn(f"cannot write: {what}"):
            self._said_failure = True

    def _recovered(self) -> None:
        """Say that writing works again, if the fault was said (two lines a minute at most,
        however often a disk flaps between full and not)."""
        if self._failure is not None and self._said_failure:
            _say(f"log {self.path}: writing again, after: {self._failure}; {self._drops()}")
        self._failure, self._said_failure = None, False
        if self.dropped["buffer_full"] != self._warned_drops:  # a disk too slow, not failing
            self._warn("the writer fell behind")

    def _warn(self, what: str) -> bool:
        """Say `what`, with the state of the queue, unless something was said < a minute ago."""
        now = time.monotonic()
        if now - self._warned_at < WARN_EVERY_S:
            return False
        self._warned_at = now
        self._warned_drops = self.dropped["buffer_full"]
        count, size = self.held()
        _say(
            f"log {self.path}: {what}; holding {count} records "
            f"({size / 2**20:.1f} of {self.buffer_bytes / 2**20:g} MB, log.buffer_mb), "
            f"the oldest dropped beyond; {self._drops()}"
            + (f"; retrying every {RETRY_S:g} s" if self._failure else "")
        )
        return True

    def _drops(self) -> str:
        return f"{self.dropped['buffer_full']} records dropped so far (buffer full)"


def _describe(exc: OSError) -> str:
    return f"{exc.strerror or exc} (errno {exc.errno})" if exc.errno else str(exc)


def _say(text: str) -> None:
    print(f"model-router: {text}", file=sys.stderr, flush=True)

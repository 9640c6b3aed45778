"""The routing log's file, as the writer thread keeps it: opened O_APPEND, re-created when
removed or renamed away, and written whole lines at a time, a line cut short by a full
disk ended before any other (contract section 13)."""

from __future__ import annotations

import contextlib
import errno
import os
import time
from pathlib import Path
from typing import Final

CHECK_S: Final = 1.0  # an idle writer looks this often whether its file is still there
# A file renamed away is written on for this long before a new one is made at its name:
# logrotate renames, then sends SIGUSR1, and lines logged before the signal belong in the
# rotated file. CHECK_S + AWAY_S stays below the contract's 5 s.
AWAY_S: Final = 2.0


class Unwritten(Exception):
    """A write failed: `lines` did not reach the file (the first perhaps in part)."""

    def __init__(self, error: OSError, lines: list[bytes]) -> None:
        super().__init__(error)
        self.error = error
        self.lines = lines


class Short(Exception):
    """A write stopped: `rest` of the data did not reach the file."""

    def __init__(self, error: OSError, rest: bytes) -> None:
        super().__init__(error)
        self.error = error
        self.rest = rest


class LogFile:
    """The writer thread's file: opened O_APPEND, re-created when removed or moved away.

    `tail` is the rest of a line whose start reached the file before a write failed: it
    is written first, before any other line, so that the line ends whole.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.tail: bytes | None = None
        self._line = b""  # the whole line `tail` ends
        self._checked = time.monotonic()
        self._away_since: float | None = None
        self._fd: int | None = self._open()

    def _open(self) -> int:
        if self.path == "-":
            return os.dup(1)
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def check(self, busy: bool) -> bool:
        """Open the file if it is not; re-create it if it was removed (at once: what is
        written to a removed file is lost) or moved away (after AWAY_S). Looked at before
        every write, and every CHECK_S when idle. True when a new file was made."""
        now = time.monotonic()
        if self._fd is not None and not busy and now - self._checked < CHECK_S:
            return False
        self._checked = now
        if self._fd is None:
            self._fd = self._open()
            return True
        if self.path == "-" or not self._moved(now):
            return False
        self.reopen()
        return True

    def _moved(self, now: float) -> bool:
        assert self._fd is not None
        mine = os.fstat(self._fd)
        if mine.st_nlink == 0:
            return True  # removed: every line written to it from here would be lost
        try:
            there = os.stat(self.path)
            elsewhere = (there.st_dev, there.st_ino) != (mine.st_dev, mine.st_ino)
        except (FileNotFoundError, NotADirectoryError):
            elsewhere = True
        if not elsewhere:
            self._away_since = None
            return False
        if self._away_since is None:
            self._away_since = now
        return now - self._away_since >= AWAY_S

    def reopen(self) -> None:
        """A new file at the path; a line begun in the old one is ended there if it can be,
        else written whole to the new one."""
        if self.tail is not None:
            try:
                self.finish_tail()
            except OSError:
                self.tail = self._line
        self.close()
        self._away_since = None
        self._fd = self._open()

    def finish_tail(self) -> None:
        """End the line a failed write cut short, before anything else is written."""
        if self.tail is not None:
            try:
                self._send(self.tail)
            except Short as short:
                self.tail = short.rest
                raise short.error from None
            self.tail = None

    def write(self, lines: list[bytes]) -> None:
        """Append `lines` with one write; Unwritten names those that did not get there."""
        data = b"\n".join(lines) + b"\n"
        try:
            self._send(data)
        except Short as short:
            # The disk took part: the line cut short is ended first, the rest go back.
            done, end = len(data) - len(short.rest), 0
            for i, line in enumerate(lines):
                end += len(line) + 1
                if end > done:
                    begun = end - len(line) - 1 < done  # its start is in the file
                    if begun:
                        self.tail, self._line = data[done:end], line + b"\n"
                    raise Unwritten(short.error, lines[i + begun :]) from None

    def _send(self, data: bytes) -> None:
        """Write all of `data`, or raise Short with what is left unwritten."""
        if self._fd is None:
            raise Short(OSError(errno.EBADF, "the log file is not open"), data)
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._fd, view)
            except OSError as exc:
                raise Short(exc, bytes(view)) from None
            if written == 0:
                raise Short(OSError(errno.EIO, "the write took nothing"), bytes(view))
            view = view[written:]

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            # An error reported at close (NFS) is not acted on: the writes were checked.
            with contextlib.suppress(OSError):
                os.close(fd)

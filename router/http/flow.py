"""Flow control over one asyncio transport, for both ends of the proxy (uvicorn's
`FlowControl`, with reasons): reading pauses while any reason to pause holds, and a
writer waits while the transport's write buffer is over its high-water mark."""

from __future__ import annotations

import asyncio


class Pause:
    """Why reading from a connection is paused: each reason a bit, so that the set of
    reasons is one int, tested without a Python-level hash on every body read (an Enum's
    is one: 0.1 us a test)."""

    BODY_UNREAD = 1  # a body's reader is HIGH_WATER bytes behind
    BODY_AHEAD = 2  # the body of a request not yet being handled is arriving
    PIPELINE = 4  # the most pipelined requests allowed wait their turn


class FlowControl:
    __slots__ = ("_drain", "_reasons", "_transport", "reading", "writing")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._reasons = 0  # Pause bits
        self._drain: asyncio.Future[None] | None = None
        self.reading = True
        self.writing = True  # False while the transport asks us to stop writing

    # --- reading ---

    def hold(self, reason: int, on: bool) -> None:
        """Add (`on`) or drop one `Pause` reason, and pause or resume reading to match."""
        self.update(reason, reason if on else 0)

    def update(self, mask: int, reasons: int) -> None:
        """Set the reasons under `mask` to `reasons` (several at once, one call)."""
        reasons |= self._reasons & ~mask
        if reasons == self._reasons:
            return  # the common case on the hot path: nothing changes
        self._reasons = reasons
        reading = not reasons
        if reading != self.reading and not self._transport.is_closing():
            self.reading = reading
            if reading:
                self._transport.resume_reading()
            else:
                self._transport.pause_reading()

    def release_all(self) -> None:
        """Read whatever comes from now on (a connection that only drops what it reads)."""
        self.update(self._reasons, 0)

    # --- writing: called by the protocol's pause_writing / resume_writing ---

    def pause_writing(self) -> None:
        self.writing = False

    def resume_writing(self) -> None:
        self.writing = True
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    async def drain(self) -> None:
        """Wait until the transport takes writes again (return at once if it does)."""
        if self.writing:
            return
        self._drain = asyncio.get_running_loop().create_future()
        try:
            await self._drain
        finally:
            self._drain = None

    def fail_drain(self, error: BaseException) -> bool:
        """Make a writer waiting in `drain` raise `error`; False if none was waiting."""
        if self._drain is None or self._drain.done():
            return False
        self._drain.set_exception(error)
        return True

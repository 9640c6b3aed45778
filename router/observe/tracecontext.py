"""W3C Trace Context (https://www.w3.org/TR/trace-context/, contract section 15), as the
router propagates it: a request that carries a valid `traceparent` continues that trace,
any other starts one; the request is a span of its own (its id goes back in
`traceresponse`, Trace Context level 2), and each attempt at a backend is a child span
whose id the backend gets as its parent, never the caller's unchanged."""

from __future__ import annotations

import re
from random import getrandbits
from typing import Final, NamedTuple

# version 00: exactly these four fields; a later version may add fields after them.
_TRACEPARENT: Final = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE: Final = "0" * 32
_ZERO_SPAN: Final = "0" * 16
_SAMPLED: Final = frozenset("13579bdf")  # the flags' low hex digit with bit 0 (sampled) set


class Trace(NamedTuple):
    """One request's place in a trace: its trace, its own span, the flags (the caller's,
    or sampled in by the router's ratio) and vendor state (passed on as received)."""

    trace_id: str
    span_id: str
    flags: str
    state: str | None
    parent_id: str | None = None  # the caller's span, when it sent a valid traceparent

    @property
    def sampled(self) -> bool:
        return self.flags[1] in _SAMPLED

    def upstream(self, span_id: str) -> list[tuple[str, str]]:
        """The trace headers (or metadata) of one attempt at a backend: `span_id` is the
        attempt's own span, a child of the router's."""
        parent = f"00-{self.trace_id}-{span_id}-{self.flags}"
        if self.state is None:
            return [("traceparent", parent)]
        return [("traceparent", parent), ("tracestate", self.state)]

    def response(self) -> str:
        """`traceresponse`: the trace and the router's own span, for the caller."""
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"


# A NamedTuple's own __new__ is a Python function: tuple's is half the instructions, and a
# request makes one Trace.
_trace = tuple.__new__


def new_span_id() -> str:
    return f"{getrandbits(64) or 1:016x}"


def ratio_bound(sample: float) -> int:
    """The bound under which a trace id's low 64 bits are sampled in at this ratio: the
    rule of OpenTelemetry's TraceIdRatioBased, so every replica decides a trace alike."""
    return round(sample * 2**64)


def continued(traceparent: str | None, tracestate: str | None, bound: int = 0) -> Trace:
    """The trace a request goes on (its caller's, when `traceparent` is valid), with a new
    span for the router; otherwise a new trace. A trace the caller did not sample is
    sampled in when its id falls under `bound` (`ratio_bound`; 0 when nothing is
    exported, and then the flags pass on as they came)."""
    if traceparent is not None and (parent := _parsed(traceparent)) is not None:
        trace_id, parent_id, flags = parent
        trace = _trace(Trace, (trace_id, new_span_id(), flags, tracestate or None, parent_id))
    else:
        # The new trace's id and the router's span id out of one draw: one call, one format.
        ids = f"{getrandbits(192):048x}"
        trace_id, span_id = ids[:32], ids[32:]
        if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:  # all zeros is invalid: again
            return continued(None, None, bound)
        trace = _trace(Trace, (trace_id, span_id, "00", None, None))
    if bound and not trace.sampled and int(trace.trace_id[16:], 16) < bound:
        return trace._replace(flags=f"{int(trace.flags, 16) | 1:02x}")
    return trace


def _parsed(value: str) -> tuple[str, str, str] | None:
    """(trace id, parent id, flags) of a valid `traceparent`, or None (section 3.2 of the
    spec)."""
    value = value.strip()
    found = _TRACEPARENT.match(value)
    if found is None:
        return None
    version, trace_id, parent_id, flags = found.groups()
    if version == "ff" or trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    rest = value[found.end() :]
    if (version == "00" and rest) or (rest and not rest.startswith("-")):
        return None
    return trace_id, parent_id, flags

"""The phases of a client connection and the moves between them, as a table (in the spirit
of h11's `_state.py`). The I/O lives in `connection.py`; this is only the map.

A connection only ever moves forward, so each phase also means "and not yet the next":

| phase       | takes new requests | parses what arrives        | answers requests received |
| ----------- | ------------------ | -------------------------- | ------------------------- |
| `OPEN`      | yes                | yes                        | yes                       |
| `DRAINING`  | no (shutdown)      | the bodies already begun   | yes, the last one closes  |
| `ENDING`    | no                 | no: read and dropped       | yes, the last one closes  |
| `LINGERING` | no                 | no: read and dropped       | done; write side shut     |
| `CLOSED`    | no                 | nothing is read            | nothing is written        |
"""

from __future__ import annotations

import enum


class Phase(enum.IntEnum):
    OPEN = 0
    DRAINING = 1  # the server is shutting down: requests not yet begun are not taken
    ENDING = 2  # framing broke, a head was refused, an upgrade or a close was asked for
    LINGERING = 3  # the last answer is out; the client's unread body is read and dropped
    CLOSED = 4


# The legal moves, and what makes each. Every arrow points forward, but not every forward
# arrow is legal: a connection lingers only once it has stopped parsing (`_close_after`
# ends parsing first), so OPEN or DRAINING never jump straight to LINGERING.
MOVES: dict[Phase, dict[Phase, str]] = {
    Phase.OPEN: {
        Phase.DRAINING: "the server stops accepting",
        Phase.ENDING: "a refusal, a broken body, an upgrade, an answer that closes",
        Phase.CLOSED: "the client hung up, or the last answer closed the connection",
    },
    Phase.DRAINING: {
        Phase.ENDING: "a refusal, a broken body, or an answer that closes, while draining",
        Phase.CLOSED: "the last answer is out, or the drain is over",
    },
    Phase.ENDING: {
        Phase.LINGERING: "the last answer is out, the client may still be sending",
        Phase.CLOSED: "the last answer is out",
    },
    Phase.LINGERING: {Phase.CLOSED: "linger_s is over, or the client hung up"},
    Phase.CLOSED: {},
}


def advance(current: Phase, to: Phase) -> Phase:
    """The phase after a move to `to`: a move back is no move (a shutdown reaching a
    connection that already ends leaves it ending); a forward move the table does not
    list is a bug, and raises."""
    if to <= current:
        return current
    if to not in MOVES[current]:
        raise RuntimeError(f"a connection cannot move from {current.name} to {to.name}")
    return to

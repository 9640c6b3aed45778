"""Where a top-level value sits in a JSON object's bytes, so that one value can be
replaced and every other byte forwarded as received (the OpenAI body's `"model"`, contract
section 11): no parse and re-serialise, which would reorder keys, change number spellings
and cost a copy of the whole body through Python objects.

The body has been validated by orjson first; this only walks its top level, jumping over
strings and nested values with C-speed searches.
"""

from __future__ import annotations

import re

import orjson

_WS = b" \t\r\n"
# The next character that matters inside a nested value.
_STRUCTURE = re.compile(rb'["\[\]{}]')
# The end of a number, `true`, `false` or `null` at the top level.
_SCALAR_END = re.compile(rb"[,}\s]")


def value_span(data: bytes, key: str) -> tuple[int, int] | None:
    """Start and end of the value of the top-level `key` in a valid JSON object (the last
    one when the key is repeated, as orjson reads it), or None."""
    found = None
    i = _skip_ws(data, 0)
    if data[i : i + 1] != b"{":
        return None
    i = _skip_ws(data, i + 1)
    while i < len(data) and data[i : i + 1] == b'"':
        end = _string_end(data, i)
        name = data[i + 1 : end - 1]
        i = _skip_ws(data, end)  # at ":"
        start = _skip_ws(data, i + 1)
        stop = _value_end(data, start)
        if _is_key(name, key):
            found = (start, stop)
        i = _skip_ws(data, stop)
        if data[i : i + 1] != b",":
            break
        i = _skip_ws(data, i + 1)
    return found


def replace_value(data: bytes, span: tuple[int, int], value: str) -> bytes:
    start, stop = span
    return b"".join((data[:start], orjson.dumps(value), data[stop:]))


def _is_key(raw: bytes, key: str) -> bool:
    if b"\\" not in raw:
        return raw == key.encode()
    decoded: object = orjson.loads(b'"' + raw + b'"')
    return decoded == key


def _skip_ws(data: bytes, i: int) -> int:
    while i < len(data) and data[i] in _WS:
        i += 1
    return i


def _string_end(data: bytes, i: int) -> int:
    """Just past the string that starts at `i` (its opening quote)."""
    j = i + 1
    while True:
        j = data.index(b'"', j)
        backslashes = 0
        k = j - 1
        while data[k] == 0x5C:  # an escaped quote has an odd number of "\" before it
            backslashes += 1
            k -= 1
        if backslashes % 2 == 0:
            return j + 1
        j += 1


def _value_end(data: bytes, i: int) -> int:
    """Just past the value that starts at `i`."""
    first = data[i : i + 1]
    if first == b'"':
        return _string_end(data, i)
    if first not in (b"{", b"["):
        match = _SCALAR_END.search(data, i)
        return match.start() if match else len(data)
    depth = 0
    j = i
    while True:
        match = _STRUCTURE.search(data, j)
        assert match is not None, "the body was validated as JSON"
        j = match.start()
        char = data[j : j + 1]
        if char == b'"':
            j = _string_end(data, j)
            continue
        depth += 1 if char in (b"{", b"[") else -1
        j += 1
        if depth == 0:
            return j

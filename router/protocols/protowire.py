"""The few protobuf wire operations routing needs (https://protobuf.dev/programming-guides/
encoding/), on raw message bytes: read the top-level string fields that name a model and
its version, write them anew, and encode the router's own small answers. The tensors of an
inference request are never decoded: a rewrite copies the other fields' bytes as they are,
once.
"""

from __future__ import annotations

from collections.abc import Iterable

VARINT, I64, LEN, I32 = 0, 1, 2, 5


class WireError(ValueError):
    """Bytes that are not a protobuf message."""


def _varint(data: bytes | memoryview, i: int) -> tuple[int, int]:
    """The varint at `i`, and where the next field starts."""
    value = shift = 0
    while True:
        if i >= len(data) or shift > 63:
            raise WireError("a varint runs past the end of the message")
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def fields(data: bytes | memoryview) -> Iterable[tuple[int, int, int, int]]:
    """Each top-level field as (number, wire type, start, end): `start` where its key
    begins, `end` just past its value."""
    i = 0
    while i < len(data):
        start = i
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == VARINT:
            _, i = _varint(data, i)
        elif wire == I64:
            i += 8
        elif wire == I32:
            i += 4
        elif wire == LEN:
            length, i = _varint(data, i)
            i += length
        else:  # groups (3, 4) are long deprecated, and no inference message has one
            raise WireError(f"field {number} has wire type {wire}, which is not read here")
        if i > len(data) or number == 0:
            raise WireError("a field runs past the end of the message")
        yield number, wire, start, i


def strings(data: bytes | memoryview, numbers: tuple[int, ...]) -> dict[int, str]:
    """The last value of each of the top-level string fields `numbers` (the last one wins,
    as protobuf parsers read a repeated scalar field)."""
    found: dict[int, str] = {}
    view = memoryview(data)
    for number, wire, start, end in fields(view):
        if number in numbers and wire == LEN:
            _, length_at = _varint(view, start)  # past the key
            _, value_start = _varint(view, length_at)  # past the length
            try:
                found[number] = bytes(view[value_start:end]).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise WireError(f"field {number} is not UTF-8 text") from exc
    return found


def string_field(number: int, value: str) -> bytes:
    encoded = value.encode("utf-8")
    return encode_varint(number << 3 | LEN) + encode_varint(len(encoded)) + encoded


def bool_field(number: int, value: bool) -> bytes:
    return encode_varint(number << 3 | VARINT) + (b"\x01" if value else b"\x00")


def with_strings(data: bytes, values: dict[int, str | None]) -> bytes:
    """The message with the top-level string fields `values` set (None: left out), every
    other field's bytes as they were, in their order; the new fields go first."""
    view = memoryview(data)
    kept = [view[start:end] for number, _, start, end in fields(view) if number not in values]
    head = [string_field(n, v) for n, v in sorted(values.items()) if v]
    return b"".join((*head, *kept))

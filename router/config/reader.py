"""Reading plain data from line-marked YAML, collecting every problem instead of stopping
at the first: the primitives (`number`, `string`, `choice`, a mapping and its keys) that
`validate.py` builds the table's sections from."""

from __future__ import annotations

import difflib
from decimal import Decimal, InvalidOperation
from typing import Any

from router.config import yamlmarks
from router.config.model import Address, Problem, parse_address


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class Reader:
    """Walks the data once, collecting every problem instead of stopping at the first."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def fail(self, parent: object, key: object, path: str, message: str) -> None:
        self.problems.append(Problem(yamlmarks.line_of(parent, key), path, message))

    def mapping(
        self, parent: dict[Any, Any] | list[Any], key: Any, path: str, keys: tuple[str, ...]
    ) -> dict[Any, Any] | None:
        """The mapping at parent[key], its unknown and duplicate keys reported."""
        value = parent[key]
        if not isinstance(value, dict):
            self.fail(parent, key, path, f"must be a mapping, not {kind(value)}")
            return None
        self.check_keys(value, path, keys)
        return value

    def check_keys(self, value: dict[Any, Any], path: str, keys: tuple[str, ...]) -> None:
        for name, line in getattr(value, "duplicates", []):
            self.problems.append(Problem(line, join(path, name), "is given twice"))
        if not keys:
            return
        for name in value:
            if name not in keys:
                hint = difflib.get_close_matches(str(name), keys, n=1)
                expected = (
                    f"did you mean '{hint[0]}'?" if hint else f"expected one of: {', '.join(keys)}"
                )
                self.fail(value, name, join(path, name), f"unknown key ({expected})")

    def number(
        self, parent: dict[Any, Any], key: str, path: str, default: float, *, positive: bool
    ) -> float:
        if key not in parent:
            return default
        value = parent[key]
        if not is_number(value) or value < 0 or (positive and value == 0):
            expected = "a number above 0" if positive else "a number, 0 or more"
            self.fail(parent, key, join(path, key), f"must be {expected}, not {show(value)}")
            return default
        return float(value)

    def count(self, parent: dict[Any, Any], key: str, path: str, default: int) -> int | None:
        """A whole number, 1 or more; None (and a problem) when it is not one."""
        value = parent.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            self.fail(
                parent,
                key,
                join(path, key),
                f"must be a whole number, 1 or more, not {show(value)}",
            )
            return None
        return value

    def boolean(self, parent: dict[Any, Any], key: str, path: str, default: bool) -> bool:
        value = parent.get(key, default)
        if not isinstance(value, bool):
            self.fail(parent, key, join(path, key), f"must be true or false, not {show(value)}")
            return default
        return value

    def string(self, parent: dict[Any, Any], key: str, path: str) -> str | None:
        if key not in parent:
            return None
        value = parent[key]
        if isinstance(value, int) and not isinstance(value, bool):
            # A salt or a header value written as a bare number: the text as written.
            return getattr(value, "text", str(value))
        if isinstance(value, bool):
            text = "true" if value else "false"
            message = f"must be a string, not the YAML boolean {text}; quote it: '{text}'"
            self.fail(parent, key, join(path, key), message)
            return None
        if not isinstance(value, str) or not value:
            self.fail(
                parent, key, join(path, key), f"must be a non-empty string, not {show(value)}"
            )
            return None
        return value

    def choice(
        self, parent: dict[Any, Any], key: str, path: str, options: tuple[str, ...]
    ) -> str | None:
        value = self.string(parent, key, path)
        if value is not None and value not in options:
            self.fail(
                parent,
                key,
                join(path, key),
                f"is '{value}'; expected one of: {', '.join(options)}",
            )
            return None
        return value

    def address(self, parent: dict[Any, Any], key: str, path: str, default: Address) -> Address:
        text = self.string(parent, key, path)
        if text is None:
            return default
        try:
            return parse_address(text)
        except ValueError as exc:
            self.fail(parent, key, join(path, key), str(exc))
            return default

    # --- sections ---


def percent(value: object) -> Decimal | None:
    """A percentage as an exact Decimal, or None if it is not 0..100 with two decimals at most."""
    if not is_number(value):
        return None
    try:
        percent = Decimal(str(value))
    except InvalidOperation:
        return None
    if not percent.is_finite() or percent < 0 or percent > 100:
        return None
    if percent != percent.quantize(Decimal("0.01")):
        return None
    return percent


def fmt(value: Decimal) -> str:
    return str(value.normalize()) if value != value.to_integral() else str(int(value))


def join(path: str, key: object) -> str:
    if key is None:
        return path
    return f"{path}.{key}" if path else str(key)


def show(value: object) -> str:
    """A value as YAML spells it: `true`, not Python's `True`; `nothing` for an empty value."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def kind(value: object) -> str:
    if value is None:
        return "nothing"
    for kind, name in (
        (bool, "a boolean"),
        (dict, "a mapping"),
        (list, "a list"),
        (str, "a string"),
    ):
        if isinstance(value, kind):
            return name
    return type(value).__name__

"""JSON values compared as values: what shadow agreement and the rollout's accuracy mean by
"the same answer" (the report's SQL says the same in users.py)."""

from __future__ import annotations

from typing import Any


def same_value(a: Any, b: Any) -> bool:
    """JSON equality: numbers by value (1 equals 1.0), a boolean never equals a number,
    objects whatever their key order."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and bool(a == b)

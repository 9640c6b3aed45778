"""JSON pointers (RFC 6901) into a model's answers: where the prediction sits
(`models.<m>.prediction`) and which parts of an answer a record copies (`log_response`,
contract section 11). Parsed once when the table loads; resolved per answer."""

from __future__ import annotations

import re
from typing import Any, Final

Tokens = tuple[str, ...]
# A record's `response` entry: the name it is logged under, and where it is in the answer.
Pick = tuple[str, Tokens]

DEFAULT_PREDICTION: Final = "/prediction"
_BAD_ESCAPE = re.compile(r"~(?![01])")
_INDEX = re.compile(r"0|[1-9][0-9]*\Z")
_MISSING: Final = object()


def pointer_problem(text: str) -> str | None:
    """Why `text` is not a JSON pointer, or None when it is one."""
    if not text.startswith("/"):
        return f"'{text}' is not a JSON pointer: it starts with /, like /outputs/0/data/0"
    if _BAD_ESCAPE.search(text):
        return f"'{text}' is not a JSON pointer: '~' is written ~0 and '/' in a name ~1"
    return None


def tokens(text: str) -> Tokens:
    """The reference tokens of a valid pointer, unescaped (`~1` is `/`, `~0` is `~`)."""
    return tuple(t.replace("~1", "/").replace("~0", "~") for t in text.split("/")[1:])


def picks_of(log_response: tuple[str, ...], prediction: str | None) -> tuple[Pick, ...]:
    """What a record copies from a JSON answer: each `log_response` entry under its own
    text (a field name is the pointer to that top-level field), and the prediction under
    `prediction` whenever `prediction` is set or `log_response` names it."""
    picks: dict[str, Tokens] = {}
    for entry in log_response:
        picks[entry] = tokens(entry) if entry.startswith("/") else (entry,)
    if prediction is not None or "prediction" in picks:
        picks["prediction"] = tokens(prediction or DEFAULT_PREDICTION)
    return tuple(picks.items())


def resolve(document: Any, path: Tokens) -> Any:
    """The value `path` points at in a parsed JSON document, or `missing()` when none."""
    for token in path:
        if isinstance(document, dict):
            document = document.get(token, _MISSING)
            if document is _MISSING:
                return _MISSING
        elif isinstance(document, list) and _INDEX.match(token) and int(token) < len(document):
            document = document[int(token)]
        else:
            return _MISSING
    return document


def pick(document: Any, picks: tuple[Pick, ...]) -> dict[str, Any]:
    """The picks found in a parsed answer, by name; those it lacks are left out."""
    found = {}
    for name, path in picks:
        if len(path) == 1 and isinstance(document, dict):  # a top-level field: most picks
            value = document.get(path[0], _MISSING)
        else:
            value = resolve(document, path)
        if value is not _MISSING:
            found[name] = value
    return found

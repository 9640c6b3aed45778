"""Which model a request target names (contract sections 3 and 4): `/models/<m>/<rest>`,
`/models/<m>/versions/<v>/<rest>` and `/feedback/<m>`; what goes to the version."""

from __future__ import annotations

import re
from typing import Literal, NamedTuple
from urllib.parse import unquote

from router.config.model import Model, Table
from router.errors import RouterError

_DOTS = (".", "..")
# Never forwarded in a path (400 `bad_path`): an encoded "/" or "\" (%2F, %5C), which a
# backend that decodes before it splits takes for a separator, so that `..%2F..%2Fadmin`
# would climb past the dot-segment check (Apache's `AllowEncodedSlashes Off`, Envoy's
# REJECT_REQUEST); a raw "\", a separator to some servers; an encoded NUL (%00), which
# ends a C string early (nginx refuses it too).
_UNSAFE = re.compile(r"%(?:2[Ff]|5[Cc]|00)|\\")


class Route(NamedTuple):
    """A tuple, not a frozen dataclass: one is made per request, and a frozen dataclass's
    `__init__` goes through `object.__setattr__` for each field."""

    kind: Literal["models", "feedback"]
    model: str  # as named, percent-decoded
    pinned: str | None = None  # /versions/<v>/
    target: str = "/"  # what the version gets: the rest of the path and the query, as sent


class PathError(RouterError):
    """A target that names no route; `model` is the model it names, if any, for the log."""

    def __init__(self, error: RouterError, model: str | None) -> None:
        super().__init__(error.code, error.message)
        self.model = model


def origin_form(target: str) -> str:
    """The path and query of a request target; absolute-form (`GET http://host/p`), which
    HTTP/1.1 servers must accept (RFC 9112 3.2.2), loses its scheme and authority."""
    if target.startswith("/"):
        return target
    scheme, sep, rest = target.partition("://")
    if sep and scheme.lower() in ("http", "https"):
        path_start = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=-1)
        return "/" + rest[path_start:].lstrip("/") if path_start >= 0 else "/"
    return target


def route(target: str) -> Route:
    """The route of a request target; PathError (`bad_path`, `not_found`) if none.

    The query string is never decoded: it is forwarded byte for byte.
    """
    path, has_query, query = origin_form(target).partition("?")
    segments = path.split("/")
    named = segments[2] if len(segments) >= 3 and segments[1] == "models" else None
    if "%" in path or "." in path or "\\" in path:  # else nothing there to refuse
        check_path(path, segments, named)
    if len(segments) < 3 or segments[0] != "":
        raise PathError(not_found(path), None)
    if segments[1] == "feedback" and len(segments) == 3:
        return Route("feedback", unquote(segments[2]))
    if segments[1] != "models":
        raise PathError(not_found(path), None)
    rest = segments[3:]
    pinned = None
    if len(rest) >= 2 and rest[0] == "versions":
        pinned, rest = unquote(rest[1]), rest[2:]
    return Route("models", unquote(segments[2]), pinned, "/" + "/".join(rest) + has_query + query)


def check_path(path: str, segments: list[str], named: str | None) -> None:
    """PathError (`bad_path`) for a path that must never be forwarded: one with `.` or
    `..` segments, or with an encoded separator or NUL."""
    if ("%" in path or "\\" in path) and (unsafe := _UNSAFE.search(path)):
        error = RouterError("bad_path", f"path '{path}' has '{unsafe[0]}' (encoded /, \\ or NUL)")
        raise PathError(error, named)
    if any(s[:1] in (".", "%") and _dot_segment(s) for s in segments):
        error = RouterError("bad_path", f"path '{path}' has '.' or '..' segments")
        raise PathError(error, named)


def _dot_segment(segment: str) -> bool:
    """`.` or `..`, percent-encoded or not (`%2e%2E`), also with parameters after `;`,
    which Tomcat and Spring drop before they resolve dots (`/..;/admin`)."""
    name = segment.partition(";")[0]
    return name in _DOTS or ("%" in name and unquote(name) in _DOTS)


def find_model(table: Table, name: str) -> Model:
    model = table.models.get(name)
    if model is None:
        known = ", ".join(table.models)
        raise RouterError("unknown_model", f"no model '{name}'; models: {known}")
    return model


def not_found(path: str) -> RouterError:
    return RouterError(
        "not_found",
        f"no route for '{path}'; models are under /models/<name>/, the Open Inference "
        "Protocol's /v2/models/<name>, TF Serving's /v1/models/<name> and OpenAI's "
        "/v1/chat/completions, /v1/completions, /v1/embeddings",
    )

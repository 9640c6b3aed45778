"""Choosing a version for a request (contract section 3).

Pure: no I/O. Everything that can be computed when the table loads (bucket
edges, rule sets) is computed then, so that a request costs one hash and one bisect.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple, Protocol

import mmh3

from router.config.model import BUCKETS, Model
from router.errors import RouterError

AssignedBy = Literal["pinned", "header", "rule", "split", "no_user_random", "no_user_default"]


def bucket(user_id: str, salt: str) -> int:
    """The user's bucket, 0..9999: the Optimizely SDK's formula, so analysts can recompute it.

    Multiplying and shifting (instead of a modulo) spreads the 2**32 hash values evenly
    over the buckets, with no bias towards the low ones.
    """
    # surrogateescape: the server decodes header bytes that are not UTF-8 into surrogates;
    # this gives the client's bytes back, so any id has a bucket, as bytes on the wire.
    h: int = mmh3.hash((user_id + salt).encode("utf-8", "surrogateescape"), seed=1, signed=False)
    return (h * BUCKETS) >> 32


class RequestLike(Protocol):
    """What choosing needs of a request; `router.http.request.Request` has it."""

    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def cookies(self) -> Mapping[str, str]: ...
    @property
    def query(self) -> Mapping[str, str]: ...


class Choice(NamedTuple):
    """A tuple, not a frozen dataclass (one is made per request): a frozen dataclass's
    `__init__` sets each field through `object.__setattr__`, 7,000 instructions against
    3,000."""

    version: str
    assigned_by: AssignedBy
    bucket: int | None
    user_id: str | None


def find_user_id(
    model: Model, request: RequestLike, body: Mapping[str, Any] | None = None
) -> str | None:
    """The first user-id source that is present and non-empty wins. `body` is the JSON
    object body's fields, when the body was held whole and is one."""
    for source in model.user_id:
        value: str | None
        if source.kind == "header":
            value = request.headers.get(source.name)
        elif source.kind == "cookie":
            value = request.cookies.get(source.name)
        elif source.kind == "query":
            value = request.query.get(source.name)
        else:  # a top-level string field of a JSON body (the OpenAI API's `user`)
            found = body.get(source.name) if body is not None else None
            value = found if isinstance(found, str) else None
        if value:
            return value
    return None


def choose(
    model: Model,
    request: RequestLike,
    pinned: str | None,
    body: Mapping[str, Any] | None = None,
) -> Choice:
    """The five steps of contract section 3; the first that applies decides.

    Raises RouterError for an unknown or retired version, and for a missing user id
    when the model says `when_no_user_id: reject`.
    """
    user_id = find_user_id(model, request, body)
    if pinned is not None:
        return Choice(_named(model, pinned), "pinned", None, user_id)
    header_version = request.headers.get("X-Model-Version")
    if header_version:
        return Choice(_named(model, header_version), "header", None, user_id)
    for rule in model.rules:
        if rule.matches(request.headers, user_id):
            return Choice(rule.version, "rule", None, user_id)
    if user_id is not None:
        b = bucket(user_id, model.salt)
        return Choice(model.split.version_at(b), "split", b, user_id)
    if model.when_no_user_id == "random":
        b = random.randrange(BUCKETS)
        return Choice(model.split.version_at(b), "no_user_random", b, None)
    if model.when_no_user_id == "reject":
        sources = ", ".join(f"{s.kind} {s.name}" for s in model.user_id)
        raise RouterError("missing_user_id", f"model '{model.name}' needs a user id ({sources})")
    return Choice(model.when_no_user_id, "no_user_default", None, None)


def _named(model: Model, name: str) -> str:
    version = model.versions.get(name)
    if version is None:
        known = ", ".join(model.versions)
        raise RouterError(
            "unknown_version",
            f"no version '{name}' of model '{model.name}'; versions: {known}",
        )
    if version.state == "retired":
        message = f"version '{name}' of model '{model.name}' is retired"
        if version.successor:
            message += (
                f"; use '{version.successor}' (/models/{model.name}/versions/{version.successor})"
            )
        raise RouterError("version_retired", message)
    return name

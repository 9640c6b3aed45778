"""Choosing a version for a request (contract section 3).

Pure: no aiohttp import. Everything that can be computed when the table loads (bucket
edges, rule sets) is computed then, so that a request costs one hash and one bisect.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Literal, Protocol

import mmh3

from router.errors import RouterError

if TYPE_CHECKING:
    from router.config import Model

BUCKETS = 10_000

AssignedBy = Literal["pinned", "header", "rule", "split", "no_user_random", "no_user_default"]


def bucket(user_id: str, salt: str) -> int:
    """The user's bucket, 0..9999: the Optimizely SDK's formula, so analysts can recompute it.

    Multiplying and shifting (instead of a modulo) spreads the 2**32 hash values evenly
    over the buckets, with no bias towards the low ones.
    """
    # surrogateescape: aiohttp decodes header bytes that are not UTF-8 into surrogates;
    # this gives the client's bytes back, so any id has a bucket, as bytes on the wire.
    h: int = mmh3.hash((user_id + salt).encode("utf-8", "surrogateescape"), seed=1, signed=False)
    return (h * BUCKETS) >> 32


@dataclass(frozen=True, slots=True)
class Split:
    """Percentages laid over buckets 0..9999 in the order the versions are listed.

    `edges[i]` is the first bucket past version i, so `bisect_right(edges, b)` finds the
    version of bucket b; a version with a 0% share has an empty range and is never chosen.
    """

    versions: tuple[str, ...]
    percents: tuple[Decimal, ...]
    edges: tuple[int, ...]

    @classmethod
    def of(cls, shares: Mapping[str, Decimal]) -> Split:
        """Build a split from percentages that are validated to add up to exactly 100."""
        edges: list[int] = []
        total = 0
        for percent in shares.values():
            total += int(percent * 100)  # at most two decimals: exact
            edges.append(total)
        return cls(tuple(shares), tuple(shares.values()), tuple(edges))

    def version_at(self, b: int) -> str:
        return self.versions[bisect.bisect_right(self.edges, b)]

    def ranges(self) -> dict[str, range]:
        """The buckets of each version."""
        starts = (0, *self.edges[:-1])
        return {v: range(s, e) for v, s, e in zip(self.versions, starts, self.edges, strict=True)}

    def as_dict(self) -> dict[str, float | int]:
        """Percentages as JSON numbers: ints where whole, for the log and the admin view."""
        return {v: int(p) if p == p.to_integral() else float(p) for v, p in self.shares()}

    def shares(self) -> list[tuple[str, Decimal]]:
        return list(zip(self.versions, self.percents, strict=True))


class RequestLike(Protocol):
    """What choosing needs of a request; aiohttp's `web.Request` has it."""

    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def cookies(self) -> Mapping[str, str]: ...
    @property
    def query(self) -> Mapping[str, str]: ...


@dataclass(frozen=True, slots=True)
class Choice:
    version: str
    assigned_by: AssignedBy
    bucket: int | None
    user_id: str | None


def find_user_id(model: Model, request: RequestLike) -> str | None:
    """The first user-id source that is present and non-empty wins."""
    for source in model.user_id:
        if source.kind == "header":
            value = request.headers.get(source.name)
        elif source.kind == "cookie":
            value = request.cookies.get(source.name)
        else:
            value = request.query.get(source.name)
        if value:
            return value
    return None


def choose(model: Model, request: RequestLike, pinned: str | None) -> Choice:
    """The five steps of contract section 3; the first that applies decides.

    Raises RouterError for an unknown or retired version, and for a missing user id
    when the model says `when_no_user_id: reject`.
    """
    user_id = find_user_id(model, request)
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

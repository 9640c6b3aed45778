"""Bucketing and version choice: published vectors and properties (contract section 3)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.config.model import BUCKETS, Split
from router.routing.choose import bucket


# The Optimizely SDK's published vectors: user id + experiment key, seed 1, scaled to 10000.
@pytest.mark.parametrize(("user", "expected"), [("ppid1", 5254), ("ppid2", 4299), ("ppid3", 5439)])
def test_published_vectors(user: str, expected: int) -> None:
    assert bucket(user, "1886780721") == expected


def test_buckets_edges_follow_the_listed_order() -> None:
    split = Split.of({"v1": Decimal(90), "v2": Decimal(10)})
    assert split.edges == (9000, 10000)
    assert [split.version_at(b) for b in (0, 8999, 9000, 9999)] == ["v1", "v1", "v2", "v2"]


def test_zero_share_version_is_never_chosen() -> None:
    split = Split.of({"v1": Decimal(50), "v0": Decimal(0), "v2": Decimal(50)})
    assert {split.version_at(b) for b in range(BUCKETS)} == {"v1", "v2"}


def test_fractional_percentages_are_exact() -> None:
    split = Split.of({"a": Decimal("33.33"), "b": Decimal("33.33"), "c": Decimal("33.34")})
    assert split.edges == (3333, 6666, 10000)


user_ids = st.text(min_size=1, max_size=40)


@given(user_ids, st.text(max_size=20))
def test_same_user_same_bucket(user: str, salt: str) -> None:
    first = bucket(user, salt)
    assert 0 <= first < BUCKETS
    assert bucket(user, salt) == first


@st.composite
def splits(draw: st.DrawFn) -> dict[str, Decimal]:
    """2-4 versions with shares in hundredths of a percent that add up to 100."""
    n = draw(st.integers(2, 4))
    cuts = sorted(draw(st.lists(st.integers(0, BUCKETS), min_size=n - 1, max_size=n - 1)))
    sizes = [b - a for a, b in zip([0, *cuts], [*cuts, BUCKETS], strict=True)]
    return {f"v{i}": Decimal(size) / 100 for i, size in enumerate(sizes)}


@settings(max_examples=25, deadline=None)
@given(splits(), st.text(min_size=1, max_size=10))
def test_shares_hold_over_many_users(shares: dict[str, Decimal], salt: str) -> None:
    """Over 20,000 ids each version's share is within 1.5 points of its percentage."""
    split = Split.of(shares)
    n = 20_000
    counts = dict.fromkeys(shares, 0)
    for i in range(n):
        counts[split.version_at(bucket(f"user-{i}", salt))] += 1
    for version, percent in shares.items():
        assert abs(counts[version] / n * 100 - float(percent)) < 1.5, (version, counts)


@given(splits(), st.integers(1, 5000), st.lists(user_ids, min_size=50, max_size=50))
def test_growing_one_share_moves_users_only_into_it(
    shares: dict[str, Decimal], grow: int, users: list[str]
) -> None:
    """Raise the last version's share, taking from the one listed before it: a ramp.

    Only the boundary between the two moves, so users move only into the growing version.
    (Taking from a version further up the list would shift the ranges in between.)
    """
    first, last = list(shares)[-2:]
    taken = min(grow, int(shares[first] * 100))
    grown = dict(shares)
    grown[first] -= Decimal(taken) / 100
    grown[last] += Decimal(taken) / 100
    before, after = Split.of(shares), Split.of(grown)
    for user in users:
        b = bucket(user, "salt")
        old, new = before.version_at(b), after.version_at(b)
        assert old == new or new == last, (user, old, new)


@given(splits())
def test_ranges_cover_every_bucket_once(shares: dict[str, Decimal]) -> None:
    ranges = Split.of(shares).ranges()
    assert sum(len(r) for r in ranges.values()) == BUCKETS
    for version, r in ranges.items():
        assert len(r) == int(shares[version] * 100)

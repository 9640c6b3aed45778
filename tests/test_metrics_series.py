"""Each version's metrics as series.py writes them, against prometheus-client's own.

A single router keeps its per-version families in a lean book of its own and writes their
text itself; workers keep prometheus-client's children (metrics.py `_Children`). Both must
say the same thing, sample for sample, as prometheus-client's parser reads it.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from router.observe.metrics import LATENCY_BUCKETS, _Children
from router.observe.series import SeriesBook

NAMES = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=8)
KEYS = st.tuples(NAMES, NAMES)
OUTCOMES = st.sampled_from(["ok", "server_error", "rejected", "unavailable"])
# Bucket bounds themselves among the latencies: a value on a bound counts in that bucket.
SECONDS = st.one_of(
    st.sampled_from(LATENCY_BUCKETS), st.floats(0, 30, allow_nan=False, allow_infinity=False)
)
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("observe"), KEYS, OUTCOMES, SECONDS),
        st.tuples(st.just("track"), KEYS, st.booleans()),
        st.tuples(st.just("set_up"), KEYS, st.booleans()),
        st.tuples(st.just("in_flight"), KEYS, st.integers(-3, 3)),
        st.tuples(st.just("queued"), KEYS, st.integers(-3, 3)),
    ),
    max_size=40,
)

Step = tuple[Any, ...]  # a method of the book, the version's key, its arguments


def samples(text: str) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
    """Every sample but the `_created` ones (prometheus-client's own; workers have none)."""
    return {
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")
    }


def families(text: str) -> dict[str, tuple[str, str]]:
    return {f.name: (f.type, f.documentation) for f in text_string_to_metric_families(text)}


def play(steps: list[Step], book: SeriesBook | _Children) -> None:
    """The steps as the router takes them: a version's gauges move once it is tracked."""
    tracked: set[tuple[str, str]] = set()
    for kind, key, *args in steps:
        if kind == "track":
            tracked.add(key)
        elif kind != "observe" and key not in tracked:
            continue
        getattr(book, kind)(*key, *args)


@settings(max_examples=200, deadline=None)
@given(STEPS)
def test_the_lean_book_writes_what_prometheus_client_writes(steps: list[Step]) -> None:
    registry = CollectorRegistry()
    children, book = _Children(registry), SeriesBook(LATENCY_BUCKETS)
    play(steps, children)
    play(steps, book)
    ours = b"".join(book.chunks()).decode()
    theirs = generate_latest(registry).decode()
    assert samples(ours) == samples(theirs)
    assert families(ours).items() <= families(theirs).items()


def test_the_text_comes_in_slices() -> None:
    """20,000 versions (10,000 models of two), 33 MB of text: the serving loop runs between
    chunks (metrics.py), so it must come in many, not in one."""
    book = SeriesBook(LATENCY_BUCKETS)
    for n in range(10_000):
        for version in ("v1", "v2"):
            book.track(f"model-{n}", version, True)
            book.observe(f"model-{n}", version, "ok", 0.003)
    chunks = list(book.chunks())
    assert len(chunks) > 10
    assert b"".join(chunks).count(b'le="+Inf"') == 20_000

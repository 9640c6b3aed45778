"""Each version's metrics as series.py writes them, against prometheus-client's own.

A single router keeps its per-version families in a lean book of its own and writes their
text itself; workers keep prometheus-client's children (metrics.py `_Children`) in its
multiprocess files, written straight at their places (mmapped.py), which the supervisor
reads with prometheus-client's collector. Both must say the same thing, sample for sample,
as prometheus-client's parser reads it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest, multiprocess, values
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


@contextlib.contextmanager
def worker_files() -> Iterator[str]:
    """prometheus-client in multiprocess mode, as in a worker, on files of a new directory;
    its own mode again after."""
    before, env = values.ValueClass, os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    with tempfile.TemporaryDirectory() as directory:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        values.ValueClass = values.MultiProcessValue(lambda: 1)  # type: ignore[no-untyped-call]  # untyped upstream
        try:
            yield directory
        finally:
            values.ValueClass = before
            if env is None:
                del os.environ["PROMETHEUS_MULTIPROC_DIR"]
            else:
                os.environ["PROMETHEUS_MULTIPROC_DIR"] = env


@settings(max_examples=200, deadline=None)
@given(STEPS)
def test_the_lean_book_writes_what_prometheus_client_writes(steps: list[Step]) -> None:
    """The supervisor's reading of a worker's files, and the worker's own registry."""
    book = SeriesBook(LATENCY_BUCKETS)
    play(steps, book)
    ours = b"".join(book.chunks()).decode()
    with worker_files() as directory:
        registry = CollectorRegistry()
        play(steps, _Children(registry))
        supervisor = CollectorRegistry()
        multiprocess.MultiProcessCollector(supervisor, directory)  # type: ignore[no-untyped-call]  # untyped upstream
        read = generate_latest(supervisor).decode()
        own = generate_latest(registry).decode()
    assert samples(ours) == samples(read) == samples(own)
    assert families(ours).items() <= families(own).items()


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

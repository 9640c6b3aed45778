"""Prometheus metrics, through prometheus-client, on a registry of the router's own.

Label children are cached per label tuple, so counting a request costs two dict look-ups
and two increments, not a label resolution each time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
from collections.abc import AsyncIterator, Callable, Collection, Iterator
from importlib.metadata import version as package_version
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values

from router.config.model import Table
from router.observe.mmapped import Latency, Place
from router.observe.series import IN_FLIGHT, LATENCY, QUEUED, REQUESTS, UP, SeriesBook
from router.observe.sink import DROP_REASONS, DropReason
from router.observe.spans import SPAN_DROP_REASONS, SpanDropReason

MULTIPROCESS = values.ValueClass is not values.MutexValue  # PROMETHEUS_MULTIPROC_DIR is set
if MULTIPROCESS:
    # Multiprocess mode (`serve --workers`): by default every increment asks os.getpid()
    # whether the process forked, a system call, three per request. Workers are spawned,
    # never forked, so their pid is asked for once.
    _PID = os.getpid()
    values.ValueClass = values.MultiProcessValue(lambda: _PID)  # type: ignore[no-untyped-call]  # untyped upstream

# From 1 ms to 10 s: model calls are rarely faster, and timeouts rarely longer.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
NONE = "none"  # label value when a request matched no model or version


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # Requests, latency and each version's gauges: see series.py and _Children.
        self.versions: SeriesBook | _Children = (
            _Children(r) if MULTIPROCESS else SeriesBook(LATENCY_BUCKETS)
        )
        self.reloads = Counter(
            "model_router_reloads", "Routing-table reloads by result.", ["result"], registry=r
        )
        # A gauge rather than an Info: Info does not work in multiprocess mode.
        self.build = Gauge(
            "model_router_build_info",
            "Versions of the router and its runtime.",
            ["version", "python"],
            registry=r,
            multiprocess_mode="max",
        )
        self.build.labels(package_version("model-router"), platform.python_version()).set(1)
        self._shadow_and_rollout(r)
        self._admission(r)
        self._log(r)
        self._spans(r)

    def _shadow_and_rollout(self, r: CollectorRegistry) -> None:
        self.shadow_requests = Counter(
            "model_router_shadow_requests",
            "Shadow copies by model, shadow version and outcome (dropped included).",
            ["model", "version", "outcome"],
            registry=r,
        )
        self.shadow_agreement = Counter(
            "model_router_shadow_agreement",
            "Shadow answers that agree with the primary's (true, false, or null: not judged).",
            ["model", "version", "agree"],
            registry=r,
        )
        # The rollout as the table in force says it (contract section 9): the controller
        # writes its state into the table, so every router shows where a ramp stands.
        self.rollout_percent = Gauge(
            "model_router_rollout_candidate_percent",
            "The rollout candidate's share of the split in the table in force.",
            ["model", "candidate"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.rollout_state = Gauge(
            "model_router_rollout_state",
            "1 for the rollout's state in the table in force: ramping, rolled_back, promoted.",
            ["model", "candidate", "state"],
            registry=r,
            multiprocess_mode="livemax",
        )

    def _admission(self, r: CollectorRegistry) -> None:
        self.overload = Counter(
            "model_router_overloaded",
            "Requests answered 503 overloaded, by reason: full (no queue), queue_timeout, "
            "or local (the router itself ran out of descriptors or buffers).",
            ["model", "version", "reason"],
            registry=r,
        )

    def _log(self, r: CollectorRegistry) -> None:
        # Contract section 13: every record the log could not keep is counted here.
        self.log_dropped = Counter(
            "model_router_log_records_dropped",
            "Routing-log records lost, by reason: buffer_full (the log could not be written "
            "and log.buffer_mb was full: the oldest went), shutdown (still unwritten at exit).",
            ["reason"],
            registry=r,
        )
        for reason in DROP_REASONS:  # shown from the start: 0 is not "unknown"
            self.log_dropped.labels(reason)

    def _spans(self, r: CollectorRegistry) -> None:
        # Contract section 15 and issue 24: a collector that is down costs spans, counted.
        self.spans_dropped = Counter(
            "model_router_spans_dropped",
            "Trace spans not exported, by reason: queue_full (the export queue was full: "
            "the collector is down or slow), export_failed (the collector refused the batch "
            "or could not be reached in time), shutdown (still queued at exit).",
            ["reason"],
            registry=r,
        )
        for reason in SPAN_DROP_REASONS:
            self.spans_dropped.labels(reason)
        self.spans_exported = Counter(
            "model_router_spans_exported", "Trace spans the collector accepted.", registry=r
        )

    def spans_lost(self, reason: SpanDropReason, count: int) -> None:
        """Called from the span export thread, or the loop's: prometheus-client locks."""
        self.spans_dropped.labels(reason).inc(count)

    def spans_sent(self, count: int) -> None:
        self.spans_exported.inc(count)

    def log_records_dropped(self, reason: DropReason, count: int) -> None:
        """Called from the log's writer thread, or the loop's: prometheus-client locks."""
        self.log_dropped.labels(reason).inc(count)

    def in_flight(self, key: tuple[str, str, str], change: int) -> None:
        self.versions.in_flight(key[0], key[1], change)

    def queued(self, key: tuple[str, str, str], change: int) -> None:
        self.versions.queued(key[0], key[1], change)

    def overloaded(self, key: tuple[str, str, str], reason: str) -> None:
        self.overload.labels(key[0], key[1], reason).inc()

    def count_reload(self, result: str) -> None:
        self.reloads.labels(result).inc()

    def observe(self, model: str | None, version: str | None, outcome: str, seconds: float) -> None:
        self.versions.observe(model or NONE, version or NONE, outcome, seconds)

    async def exposition(self) -> AsyncIterator[bytes]:
        """The /metrics body in chunks: the registry's families, then each version's, with
        the event loop let through between chunks."""
        yield generate_latest(self.registry)
        for chunk in self.versions.chunks():
            await asyncio.sleep(0)
            yield chunk

    def shadow(self, model: str, version: str, outcome: str, agree: bool | None) -> None:
        self.shadow_requests.labels(model, version, outcome).inc()
        if outcome != "dropped":
            word = "null" if agree is None else "true" if agree else "false"
            self.shadow_agreement.labels(model, version, word).inc()

    def track(
        self,
        table: Table,
        is_down: Callable[[tuple[str, str, str]], bool],
        only: Collection[str] | None = None,
    ) -> None:
        """Show every version of a table in force (of the models in `only`, if given) as up,
        unless its health says down, and where each rollout stands."""
        names = table.models.keys() if only is None else only
        for model in (table.models[name] for name in names):
            if (rollout := model.rollout) is not None:
                share = dict(model.split.shares()).get(rollout.candidate, 0)
                self.rollout_percent.labels(model.name, rollout.candidate).set(float(share))
                for state in ("ramping", "rolled_back", "promoted"):
                    on = state == (rollout.state or "ramping")
                    self.rollout_state.labels(model.name, rollout.candidate, state).set(int(on))
            for version in model.versions.values():
                down = is_down((model.name, version.name, version.url))
                self.versions.track(model.name, version.name, not down)

    def set_up(self, model: str, version: str, up: bool) -> None:
        self.versions.set_up(model, version, up)

    def forget(self, model: str, version: str) -> None:
        """A version a reload removed leaves /metrics (contract section 13)."""
        self.versions.forget(model, version)


class _Children:
    """The per-version families as prometheus-client children, for workers: their values
    live in the files the supervisor sums (multiprocess mode), so `chunks` adds nothing.
    Each child is resolved once per label tuple, not per request."""

    def __init__(self, r: CollectorRegistry) -> None:
        labels = ["model", "version"]
        self.requests = Counter(*_help(REQUESTS), [*labels, "outcome"], registry=r)
        self.latency = Histogram(*_help(LATENCY), labels, buckets=LATENCY_BUCKETS, registry=r)
        # livemin: 0 if any worker has the version down; the others add up across workers
        self.up = Gauge(*_help(UP), labels, registry=r, multiprocess_mode="livemin")
        self.in_flights = Gauge(*_help(IN_FLIGHT), labels, registry=r, multiprocess_mode="livesum")
        self.queues = Gauge(*_help(QUEUED), labels, registry=r, multiprocess_mode="livesum")
        self._children: dict[tuple[Any, ...], Any] = {}
        self._of: dict[tuple[str, str], list[tuple[Any, ...]]] = {}  # children by version
        # What a request writes, by (model, version): places in this process's files.
        self._counts: dict[tuple[str, str], dict[str, Place]] = {}  # by outcome
        self._latencies: dict[tuple[str, str], Latency] = {}
        self._in_flight: dict[tuple[str, str], Place] = {}
        self._queued: dict[tuple[str, str], Place] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        child = self._children.get((metric, *labels))
        if child is None:
            child = self._children[metric, *labels] = metric.labels(*labels)
            self._of.setdefault((labels[0], labels[1]), []).append((metric, *labels))
        return child

    def forget(self, model: str, version: str) -> None:
        """Let a removed version's children go from this process. Their values stay in
        the files (prometheus-client cannot take a value out of them); the supervisor shows
        only the versions of the table in force (pooled.py). A request still in flight
        there makes its child again, from the value in the file: the gauges stay right."""
        for places in (self._counts, self._latencies, self._in_flight, self._queued):
            places.pop((model, version), None)
        for key in self._of.pop((model, version), []):
            del self._children[key]
            metric, *labels = key
            with contextlib.suppress(KeyError):  # removed already
                metric.remove(*labels)

    def observe(self, model: str, version: str, outcome: str, seconds: float) -> None:
        counts = self._counts.get((model, version))
        if counts is None:
            counts = self._counts[model, version] = {}
        count = counts.get(outcome)
        if count is None:
            count = counts[outcome] = Place(
                self._child(self.requests, model, version, outcome)._value
            )
        count.add(1.0)
        latency = self._latencies.get((model, version))
        if latency is None:
            latency = self._latency_of(model, version)
        latency.observe(seconds)

    def _latency_of(self, model: str, version: str) -> Latency:
        histogram = self._child(self.latency, model, version)
        latency = self._latencies[model, version] = Latency(histogram, LATENCY_BUCKETS)
        return latency

    def track(self, model: str, version: str, up: bool) -> None:
        """Every gauge of a version shows from the start (0 is not "unknown"); the
        histogram is made now, so that the table's freeze (holder.py) covers it."""
        self.set_up(model, version, up)
        if (model, version) not in self._latencies:
            self._latency_of(model, version)
        self.in_flight(model, version, 0)
        self.queued(model, version, 0)

    def set_up(self, model: str, version: str, up: bool) -> None:
        self._child(self.up, model, version).set(1 if up else 0)

    def in_flight(self, model: str, version: str, change: int) -> None:
        place = self._in_flight.get((model, version))
        if place is None:
            gauge = self._child(self.in_flights, model, version)
            place = self._in_flight[model, version] = Place(gauge._value)
        place.add(change)

    def queued(self, model: str, version: str, change: int) -> None:
        place = self._queued.get((model, version))
        if place is None:
            gauge = self._child(self.queues, model, version)
            place = self._queued[model, version] = Place(gauge._value)
        place.add(change)

    def chunks(self) -> Iterator[bytes]:
        return iter(())


def _help(family: tuple[str, str, str]) -> tuple[str, str]:
    """A family's name and HELP text, as series.py writes them."""
    return family[0], family[2]

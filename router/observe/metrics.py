"""Prometheus metrics, through prometheus-client, on a registry of the router's own.

Label children are cached per label tuple, so counting a request costs two dict look-ups
and two increments, not a label resolution each time.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Collection
from importlib.metadata import version as package_version
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values

from router.config.model import Table

if values.ValueClass is not values.MutexValue:
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
        self.requests = Counter(
            "model_router_requests",
            "Requests by model, version that answered and outcome.",
            ["model", "version", "outcome"],
            registry=r,
        )
        self.latency = Histogram(
            "model_router_request_duration_seconds",
            "Time in the router per request.",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_up = Gauge(
            "model_router_upstream_up",
            "1 while a version takes traffic, 0 while it is marked down.",
            ["model", "version"],
            registry=r,
            multiprocess_mode="livemin",  # with workers: 0 if any worker has it down
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
        self._counters: dict[tuple[str, str, str], Any] = {}
        self._histograms: dict[tuple[str, str], Any] = {}

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
        self.in_flight_requests = Gauge(
            "model_router_upstream_in_flight",
            "Requests forwarded to a version and not yet answered whole.",
            ["model", "version"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.queued_requests = Gauge(
            "model_router_upstream_queued",
            "Requests waiting for a place at a version (max_in_flight reached).",
            ["model", "version"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.overload = Counter(
            "model_router_overloaded",
            "Requests answered 503 overloaded, by reason: full (no queue), queue_timeout, "
            "or local (the router itself ran out of descriptors or buffers).",
            ["model", "version", "reason"],
            registry=r,
        )
        self._gauges: dict[tuple[str, str, str], Any] = {}

    def in_flight(self, key: tuple[str, str, str], change: int) -> None:
        self._gauge("in_flight", key).inc(change)

    def queued(self, key: tuple[str, str, str], change: int) -> None:
        self._gauge("queued", key).inc(change)

    def _gauge(self, which: str, key: tuple[str, str, str]) -> Any:
        child = self._gauges.get((which, key[0], key[1]))
        if child is None:
            gauge = self.in_flight_requests if which == "in_flight" else self.queued_requests
            child = self._gauges[which, key[0], key[1]] = gauge.labels(key[0], key[1])
        return child

    def overloaded(self, key: tuple[str, str, str], reason: str) -> None:
        self.overload.labels(key[0], key[1], reason).inc()

    def count_reload(self, result: str) -> None:
        self.reloads.labels(result).inc()

    def observe(self, model: str | None, version: str | None, outcome: str, seconds: float) -> None:
        model, version = model or NONE, version or NONE
        counter = self._counters.get((model, version, outcome))
        if counter is None:
            counter = self._counters[model, version, outcome] = self.requests.labels(
                model, version, outcome
            )
        counter.inc()
        histogram = self._histograms.get((model, version))
        if histogram is None:
            histogram = self._histograms[model, version] = self.latency.labels(model, version)
        histogram.observe(seconds)

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
                self.set_up(model.name, version.name, not down)
                # Made now, not at the version's first request: a histogram is 16 values,
                # and made then, on a table of thousands of versions, they would feed the
                # cyclic collector's full passes for minutes; made here, the table's
                # freeze (config/holder.py) takes them out of its sight too.
                if (model.name, version.name) not in self._histograms:
                    self._histograms[model.name, version.name] = self.latency.labels(
                        model.name, version.name
                    )

    def set_up(self, model: str, version: str, up: bool) -> None:
        self.upstream_up.labels(model, version).set(1 if up else 0)

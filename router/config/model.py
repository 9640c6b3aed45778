"""The routing table: frozen dataclasses (contract section 2), and its errors.

`router.validate` builds them from YAML, reporting every problem at once.
"""

from __future__ import annotations

import bisect
import copyreg
import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Final, Literal, get_args

from router.http.origin import Origin
from router.http.text import host_port

State = Literal["active", "deprecated", "retired"]
UserIdMode = Literal["hash", "raw", "omit"]
UserIdKind = Literal["header", "cookie", "query", "body"]
STATES: tuple[State, ...] = get_args(State)
USER_ID_MODES: tuple[UserIdMode, ...] = get_args(UserIdMode)
USER_ID_KINDS: tuple[UserIdKind, ...] = get_args(UserIdKind)

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
DEFAULT_CONFIG = "config/routes.yaml"
DEFAULT_TIMEOUT_S = 30.0
BUCKETS = 10_000  # 0.01% resolution (contract section 3)


# Fields computed at load time rather than written in the YAML.
DERIVED: Final = {"derived": True}


def yaml_keys(cls: type[Any]) -> tuple[str, ...]:
    """The keys of a YAML section: its dataclass's fields, less the derived ones. The
    dataclasses below are the schema, stated once; the validator reads it from them."""
    return tuple(f.name for f in fields(cls) if not f.metadata.get("derived"))


def default_of(cls: type[Any], name: str) -> Any:
    """A field's default, as the dataclass states it."""
    (found,) = [f for f in fields(cls) if f.name == name]
    if found.default is not MISSING:
        return found.default
    assert found.default_factory is not MISSING, f"{cls.__name__}.{name} has no default"
    return found.default_factory()


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return host_port(self.host, self.port)


def parse_address(text: str) -> Address:
    """`HOST:PORT` (IPv6 hosts in brackets); raises ValueError naming the expected form."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"'{text}' is not HOST:PORT (for example 127.0.0.1:8080)")
    return Address(host, int(port))


@dataclass(frozen=True, slots=True)
class Tracing:
    """Span export over OTLP/HTTP (contract section 15)."""

    # The collector's base URL, as OTEL_EXPORTER_OTLP_ENDPOINT: spans go to <it>/v1/traces.
    otlp_endpoint: str
    # The share of new traces exported (by trace id, as OpenTelemetry's TraceIdRatioBased);
    # a caller that sampled its trace in is always exported. 1.0 is the SDK's own default.
    sample: float = 1.0


@dataclass(frozen=True, slots=True)
class ServerSettings:
    listen: Address = Address("127.0.0.1", 8080)
    admin_listen: Address = Address("127.0.0.1", 8081)
    admin_token_env: str | None = None
    max_body_mb: float = 10.0
    drain_s: float = 10.0
    # Longest wait for each piece of a request body (nginx's client_body_timeout).
    body_timeout_s: float = 30.0
    # Client connections at once; beyond it, new ones wait in the listen backlog.
    max_connections: int = 10_000
    # Read a chunked request body whole (up to 1 MiB) before forwarding it.
    request_buffering: bool = True
    # When this variable is set, POST /feedback/<m> needs "Authorization: Bearer <its value>"
    # (contract section 13): labels decide rollouts.
    feedback_token_env: str | None = None
    # The longest a reload's reader process may take before the reload is refused.
    reload_timeout_s: float = 120.0
    # Where gRPC (HTTP/2 cleartext) is served, if anywhere (contract section 12).
    grpc_listen: Address | None = None
    # Where spans are exported, if anywhere (contract section 15); fixed at start.
    tracing: Tracing | None = None

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)


@dataclass(frozen=True, slots=True)
class LogSettings:
    path: str = "logs/routing.jsonl"
    user_ids: UserIdMode = "hash"
    # Records that cannot be written yet (disk full, directory gone) wait in memory up to
    # this; beyond it the oldest are dropped, and counted (contract section 13).
    buffer_mb: float = 64.0

    @property
    def buffer_bytes(self) -> int:
        return int(self.buffer_mb * 1024 * 1024)


@dataclass(frozen=True, slots=True)
class UserIdSource:
    kind: UserIdKind
    name: str


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """An active check: `GET path` every `interval_s`; 5xx or no answer is a failure."""

    path: str
    interval_s: float = 5.0


@dataclass(frozen=True, slots=True)
class Outlier:
    """Passive outlier detection: `failures` in a row mark a version down for `cooloff_s`."""

    failures: int = 5
    cooloff_s: float = 10.0


@dataclass(frozen=True, slots=True)
class Version:
    name: str = field(metadata=DERIVED)  # its key under `versions`
    url: str  # scheme://host[:port][/base], no trailing slash
    timeout_s: float
    state: State = "active"
    sunset: dt.date | None = None
    successor: str | None = None
    health: HealthCheck | None = None
    # Requests forwarded to it at once, and how long one more waits for a place (contract
    # section 10; Envoy's circuit-breaker default).
    max_in_flight: int = 1024
    queue_s: float = 1.0
    # The model's name and version on its backend, for the inference protocols (contract
    # section 11): the table's model name and the unversioned path by default.
    upstream_model: str | None = None
    upstream_version: str | None = None
    # Where it answers gRPC: "HOST:PORT", or "grpcs://HOST:PORT" over TLS.
    grpc_url: str | None = None
    # The url taken apart once, for the upstream client; derived from `url`, so left out
    # of comparisons.
    origin: Origin = field(
        default=Origin("http", "", 80, "", "", ":80"), compare=False, metadata=DERIVED
    )


@dataclass(frozen=True, slots=True)
class Split:
    """Percentages laid over buckets 0..9999 in the order the versions are listed.

    `edges[i]` is the first bucket past version i, so `bisect_right(edges, b)` finds the
    version of bucket b; a version with a 0% share has an empty range and is never chosen.
    """

    versions: tuple[str, ...]
    percents: tuple[Decimal, ...]
    edges: tuple[int, ...]
    # The percentages as JSON numbers, worked out once: every reload's `config_loaded`
    # lists every model's split.
    shown: tuple[tuple[str, float | int], ...] = field(default=(), compare=False)

    @classmethod
    def of(cls, shares: Mapping[str, Decimal]) -> Split:
        """Build a split from percentages that are validated to add up to exactly 100."""
        edges: list[int] = []
        total = 0
        for percent in shares.values():
            total += int(percent * 100)  # at most two decimals: exact
            edges.append(total)
        shown = tuple((v, int(p) if p == p.to_integral() else float(p)) for v, p in shares.items())
        return cls(tuple(shares), tuple(shares.values()), tuple(edges), shown)

    def version_at(self, b: int) -> str:
        return self.versions[bisect.bisect_right(self.edges, b)]

    def ranges(self) -> dict[str, range]:
        """The buckets of each version."""
        starts = (0, *self.edges[:-1])
        return {v: range(s, e) for v, s, e in zip(self.versions, starts, self.edges, strict=True)}

    def as_dict(self) -> dict[str, float | int]:
        """Percentages as JSON numbers: ints where whole, for the log and the admin view."""
        if self.shown:
            return dict(self.shown)
        return {v: int(p) if p == p.to_integral() else float(p) for v, p in self.shares()}

    def shares(self) -> list[tuple[str, Decimal]]:
        return list(zip(self.versions, self.percents, strict=True))


@dataclass(frozen=True, slots=True)
class Shadow:
    """A version that gets copies of the model's requests and never answers a client
    (contract section 8): `percent` of them, at most `max_in_flight` at once per model."""

    version: str
    percent: float = 100.0
    max_in_flight: int = 64


RolloutState = Literal["rolled_back", "promoted"]
ROLLOUT_STATES: tuple[RolloutState, ...] = get_args(RolloutState)
# Each guardrail's one key in YAML, and what its margin means (contract section 9).
GUARDRAILS: Final = {
    "error_rate": "max_increase",  # absolute: 0.005 is half a percentage point
    "latency_p95": "max_increase",  # relative: 0.20 is +20%
    "accuracy": "max_decrease",  # absolute, from feedback
}


@dataclass(frozen=True, slots=True)
class Rollout:
    """`model-router rollout` ramps `candidate` through `steps` (its split percent at each)
    and rolls it back when a guardrail says it hurts (contract section 9). `guardrails`
    maps a name of GUARDRAILS to its margin."""

    candidate: str
    steps: tuple[Decimal, ...]
    guardrails: Mapping[str, float]
    step_s: float = 600.0
    min_users: int = 500
    alpha: float = 0.05
    state: RolloutState | None = None


RULE_KEYS: Final = ("match", "version")
MATCH_KEYS: Final = ("header", "user_id")


@dataclass(frozen=True, slots=True)
class Rule:
    """`match` conditions, all of which must hold; an empty condition set is refused.

    In YAML a rule is `{match: {header: {...}, user_id: [...]}, version: v}`: RULE_KEYS
    and MATCH_KEYS.
    """

    version: str
    headers: tuple[tuple[str, str], ...] = ()
    user_ids: frozenset[str] | None = None

    def matches(self, headers: Mapping[str, str], user_id: str | None) -> bool:
        if any(headers.get(name) != value for name, value in self.headers):
            return False
        return self.user_ids is None or user_id in self.user_ids


@dataclass(frozen=True, slots=True)
class Model:
    name: str = field(metadata=DERIVED)  # its key under `models`
    salt: str  # defaults to the name
    versions: Mapping[str, Version]
    split: Split
    user_id: tuple[UserIdSource, ...] = (UserIdSource("header", "X-User-ID"),)
    when_no_user_id: str = "random"  # "random", "reject" or a version name
    rules: tuple[Rule, ...] = ()
    fallback: str | None = None
    log_response: tuple[str, ...] = ()
    # A JSON pointer (RFC 6901) to the prediction in a JSON answer (contract section 11).
    prediction: str | None = None
    # Send a POST to its version again on a new connection when a kept-alive one failed
    # after it was written (contract section 13): only for backends where that is safe.
    retry_post: bool = False
    # gRPC services (`package.Service`) whose calls go to this model (contract section 12).
    grpc_services: tuple[str, ...] = ()
    # A user id may come from the request body (`{body: NAME}`): the body is read first.
    body_user_id: bool = field(default=False, compare=False, metadata=DERIVED)
    # What a JSON answer's record copies (`response`): (name, pointer tokens) pairs worked
    # out from `log_response` and `prediction` at load time.
    picks: tuple[tuple[str, tuple[str, ...]], ...] = field(
        default=(), compare=False, metadata=DERIVED
    )
    outlier: Outlier = Outlier()
    shadow: Shadow | None = None
    rollout: Rollout | None = None
    # Each version's timeout_s unless it has its own.
    timeout_s: float = field(default=DEFAULT_TIMEOUT_S, compare=False)
    # Of the model's section as written: a reload redoes its bookkeeping (moves, metrics)
    # only for the models whose digest changed.
    digest: str = field(default="", compare=False, metadata=DERIVED)


@dataclass(frozen=True, slots=True)
class Table:
    server: ServerSettings
    log: LogSettings
    models: Mapping[str, Model]
    digest: str = field(metadata=DERIVED)
    # The table as written, rendered as JSON once, for the admin view: a few bytes per key,
    # where the parsed data with its line marks took kilobytes per rule.
    written: bytes = field(default=b"{}", compare=False, repr=False, metadata=DERIVED)
    # Each gRPC service of a model's `grpc_services`, and that model.
    grpc_services: Mapping[str, str] = field(
        default_factory=lambda: frozen({}), compare=False, metadata=DERIVED
    )


@dataclass(frozen=True, slots=True)
class Overrides:
    """Command-line flags that win over the file, on every reload too (picklable, so that
    worker processes get them)."""

    listen: Address | None = None
    admin_listen: Address | None = None
    log_path: str | None = None
    grpc_listen: Address | None = None  # a worker's: the supervisor's resolved port

    def __call__(self, table: Table) -> Table:
        server = replace(
            table.server,
            listen=self.listen or table.server.listen,
            admin_listen=self.admin_listen or table.server.admin_listen,
            grpc_listen=self.grpc_listen or table.server.grpc_listen,
        )
        log = replace(table.log, path=self.log_path or table.log.path)
        return replace(table, server=server, log=log)


@dataclass(frozen=True, slots=True)
class Problem:
    line: int | None
    path: str
    message: str

    def render(self, source: str) -> str:
        where = f"{source}:{self.line}" if self.line else source
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(Exception):
    """Every problem found in a routing table, each naming its key and line."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(self.messages()))

    def messages(self) -> list[str]:
        return [p.render(self.source) for p in self.problems]


def frozen(mapping: dict[Any, Any]) -> MappingProxyType[Any, Any]:
    """A read-only view of `mapping`, as a table's mappings are."""
    return MappingProxyType(mapping)


def _reduce_view(view: MappingProxyType[Any, Any]) -> tuple[Any, tuple[dict[Any, Any]]]:
    return frozen, (dict(view),)


# A table crosses processes pickled (config/apart.py), and pickle cannot name the view type.
copyreg.pickle(MappingProxyType, _reduce_view)

"""Reading and validating a routing table: YAML with line marks in, frozen dataclasses out.

`parse_table(data)` is pure and reports every problem at once; `load_table(path)` reads the
YAML file keeping line numbers so that each problem reads `FILE:LINE: key.path: message`.
"""

from __future__ import annotations

import hashlib
import sys
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType
from typing import Any

import orjson
import yaml

from router.config import yamlmarks
from router.config.answers import AnswersReader
from router.config.grpc import GrpcReader
from router.config.model import (
    MATCH_KEYS,
    NAME,
    RULE_KEYS,
    USER_ID_MODES,
    ConfigError,
    HealthCheck,
    LogSettings,
    Model,
    Outlier,
    Problem,
    Rule,
    ServerSettings,
    Split,
    Table,
    Version,
    default_of,
    frozen,
    yaml_keys,
)
from router.config.pointer import picks_of
from router.config.reader import fmt, kind, percent, show
from router.config.rollout import RolloutReader
from router.config.tracing import TracingReader
from router.config.users import UsersReader


def load_table(path: str | Path) -> Table:
    """Read and validate a routing table file; raises ConfigError with every problem."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(source, [Problem(None, "", f"cannot read the file: {exc}")]) from exc
    return parse_text(text, source)


def parse_text(text: str, source: str = "<table>") -> Table:
    with yamlmarks.collector_off():
        return _parse_text(text, source)


def _parse_text(text: str, source: str) -> Table:
    try:
        data = yamlmarks.load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and context_mark is not None and context_mark.line + 1 != line:
            problem += f" ({context} on line {context_mark.line + 1})"
        raise ConfigError(source, [Problem(line, "", f"not valid YAML: {problem}")]) from exc
    return parse_table(data, source)


def parse_table(data: Any, source: str = "<table>") -> Table:
    """Validate a table given as plain data (from YAML or JSON); freeze it or raise."""
    reader = _TableReader()
    table = reader.table(data)
    if reader.problems or table is None:
        reader.problems.sort(key=lambda p: p.line or 0)
        raise ConfigError(source, reader.problems)
    return table


def digest_of(data: Any) -> str:
    """A short digest of the table's content, the same for the same settings in any layout.

    Keys are sorted, except in a split, whose order decides which buckets go where; whole
    floats count as integers (`100.0` is `100`).
    """
    canonical = orjson.dumps(_canonical(data), option=orjson.OPT_NON_STR_KEYS, default=str)
    return hashlib.sha256(canonical).hexdigest()[:12]


def _canonical(data: Any, key: object = None) -> Any:
    if isinstance(data, dict):
        items = [(k, _canonical(v, k)) for k, v in data.items()]
        return (
            [[k, v] for k, v in items]
            if key == "split"
            else dict(sorted(items, key=lambda kv: str(kv[0])))
        )
    if isinstance(data, list):
        return [_canonical(v) for v in data]
    if isinstance(data, float) and data.is_integer():
        return int(data)
    return data


# --- validation -------------------------------------------------------------------------

# Each section's keys are its dataclass's fields (model.py states the schema once).
_TOP = yaml_keys(Table)
_SERVER = yaml_keys(ServerSettings)
_LOG = yaml_keys(LogSettings)
_MODEL = yaml_keys(Model)
_VERSION = yaml_keys(Version)
_HEALTH = yaml_keys(HealthCheck)
_OUTLIER = yaml_keys(Outlier)


class _TableReader(RolloutReader, AnswersReader, GrpcReader, UsersReader, TracingReader):
    """The table's sections, each from the primitives of `Reader`."""

    def table(self, data: Any) -> Table | None:
        if not isinstance(data, dict):
            self.problems.append(
                Problem(1, "", f"a routing table is a mapping with 'models', not {kind(data)}")
            )
            return None
        self.check_keys(data, "", _TOP)
        server = self.server(data)
        log = self.log(data)
        models: dict[str, Model] = {}
        if "models" not in data:
            self.problems.append(
                Problem(getattr(data, "line", 1), "models", "is missing; name at least one model")
            )
        elif (found := self.mapping(data, "models", "models", ())) is not None:
            if not found:
                self.fail(data, "models", "models", "is empty; name at least one model")
            for name in found:
                model = self.model(found, name)
                if model is not None:
                    models[str(name)] = model
        services = self.grpc_index(data, models)
        self.grpc_extra(data, models)
        written = orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS, default=str)
        # The table's digest stands on its models' (each section is walked once).
        shown = {**data, "models": {name: model.digest for name, model in models.items()}}
        return Table(
            server, log, MappingProxyType(models), digest_of(shown), written, frozen(services)
        )

    def server(self, data: dict[Any, Any]) -> ServerSettings:
        defaults = ServerSettings()
        if (
            "server" not in data
            or (section := self.mapping(data, "server", "server", _SERVER)) is None
        ):
            return defaults
        token_env = self.string(section, "admin_token_env", "server")
        return ServerSettings(
            listen=self.address(section, "listen", "server", defaults.listen),
            admin_listen=self.address(section, "admin_listen", "server", defaults.admin_listen),
            admin_token_env=token_env,
            max_body_mb=self.number(
                section, "max_body_mb", "server", defaults.max_body_mb, positive=True
            ),
            drain_s=self.number(section, "drain_s", "server", defaults.drain_s, positive=False),
            body_timeout_s=self.number(
                section, "body_timeout_s", "server", defaults.body_timeout_s, positive=True
            ),
            max_connections=self.count(
                section, "max_connections", "server", defaults.max_connections
            )
            or defaults.max_connections,
            request_buffering=self.boolean(
                section, "request_buffering", "server", defaults.request_buffering
            ),
            feedback_token_env=self.string(section, "feedback_token_env", "server"),
            reload_timeout_s=self.number(
                section, "reload_timeout_s", "server", defaults.reload_timeout_s, positive=True
            ),
            grpc_listen=self.grpc_listen(section),
            tracing=self.tracing(section),
        )

    def log(self, data: dict[Any, Any]) -> LogSettings:
        defaults = LogSettings()
        if "log" not in data or (section := self.mapping(data, "log", "log", _LOG)) is None:
            return defaults
        path = self.string(section, "path", "log") or defaults.path
        mode = self.choice(section, "user_ids", "log", USER_ID_MODES) or defaults.user_ids
        buffer_mb = self.number(section, "buffer_mb", "log", defaults.buffer_mb, positive=True)
        return LogSettings(path=path, user_ids=mode, buffer_mb=buffer_mb)  # type: ignore[arg-type]

    def model(self, models: dict[Any, Any], name: Any) -> Model | None:
        path = f"models.{name}"
        before = len(self.problems)
        if not isinstance(name, str) or not NAME.match(name):
            self.fail(models, name, path, "model names match [A-Za-z0-9][A-Za-z0-9._-]*")
        section = self.mapping(models, name, path, _MODEL)
        if section is None:
            return None
        line = yamlmarks.line_of(models, name)
        timeout_s = self.number(
            section, "timeout_s", path, default_of(Model, "timeout_s"), positive=True
        )
        versions = self.versions(section, path, timeout_s, line)
        split = self.split(section, path, versions, line)
        rules = self.rules(section, path, versions)
        user_id = self.user_id_sources(section, path)
        salt = self.string(section, "salt", path) or name
        when = self.when_no_user_id(section, path, versions)
        fallback = self.string(section, "fallback", path)
        if fallback is not None:
            self.version_ref(section, "fallback", path, versions, what="a fallback")
        log_response, prediction = self.answers(section, path)
        retry_post = self.boolean(section, "retry_post", path, default_of(Model, "retry_post"))
        outlier = self.outlier(section, path)
        shadow = self.shadow(section, path, versions, split)
        rollout = self.rollout(section, path, versions, split)
        if len(self.problems) > before or split is None:
            return None
        return Model(
            name=name,
            salt=salt,
            user_id=user_id,
            when_no_user_id=when,
            versions=MappingProxyType(versions),
            split=split,
            rules=rules,
            fallback=fallback,
            log_response=log_response,
            prediction=prediction,
            picks=picks_of(log_response, prediction),
            retry_post=retry_post,
            body_user_id=any(source.kind == "body" for source in user_id),
            grpc_services=self.grpc_services(section, path),
            outlier=outlier,
            shadow=shadow,
            rollout=rollout,
            timeout_s=timeout_s,
            digest=digest_of(section),
        )

    def split(
        self, section: dict[Any, Any], path: str, versions: dict[str, Version], line: int | None
    ) -> Split | None:
        path = f"{path}.split"
        if "split" not in section:
            message = "is missing; give each version its percent of users"
            self.problems.append(Problem(line, path, message))
            return None
        found = self.mapping(section, "split", path, ())
        if found is None:
            return None
        if not found:
            self.fail(section, "split", path, "is empty; give each version its percent of users")
            return None
        shares: dict[str, Decimal] = {}
        for name, value in found.items():
            where = f"{path}.{name}"
            share = percent(value)
            if share is None:
                self.fail(
                    found,
                    name,
                    where,
                    f"must be a number from 0 to 100 with at most two decimals, not {show(value)}",
                )
                continue
            version = versions.get(str(name))
            if version is None:
                self.fail(
                    found,
                    name,
                    where,
                    f"no such version; versions: {', '.join(versions) or 'none'}",
                )
            elif version.state == "retired" and share != 0:
                self.fail(
                    found,
                    name,
                    where,
                    f"version '{name}' is retired; its share must be 0, not {value}",
                )
            shares[str(name)] = share
        total = sum(shares.values(), Decimal(0))
        if len(shares) == len(found) and total != 100:
            self.fail(section, "split", path, f"percentages add up to {fmt(total)}, not 100")
        return Split.of(shares) if total == 100 else None

    def rules(
        self, section: dict[Any, Any], path: str, versions: dict[str, Version]
    ) -> tuple[Rule, ...]:
        if "rules" not in section:
            return ()
        found = section["rules"]
        if not isinstance(found, list):
            self.fail(
                section, "rules", f"{path}.rules", f"must be a list of rules, not {kind(found)}"
            )
            return ()
        rules = []
        for i in range(len(found)):
            where = f"{path}.rules[{i}]"
            item = self.mapping(found, i, where, RULE_KEYS)
            if item is None:
                continue
            rule = self.rule(item, where, versions)
            if rule is not None:
                rules.append(rule)
        return tuple(rules)

    def rule(self, item: dict[Any, Any], path: str, versions: dict[str, Version]) -> Rule | None:
        version = self.version_ref(item, "version", path, versions, what="a rule's version")
        if "match" not in item:
            self.fail(
                item,
                None,
                f"{path}.match",
                "is missing (for example match: {header: {X-Beta-Tester: 'true'}})",
            )
            return None
        match = self.mapping(item, "match", f"{path}.match", MATCH_KEYS)
        if match is None:
            return None
        if not match:
            self.fail(item, "match", f"{path}.match", "has no condition; use header or user_id")
            return None
        headers: list[tuple[str, str]] = []
        if (
            "header" in match
            and (wanted := self.mapping(match, "header", f"{path}.match.header", ())) is not None
        ):
            for name in wanted:
                value = self.string(wanted, name, f"{path}.match.header")
                if value is not None:  # interned: the same few names and values in every rule
                    headers.append((sys.intern(str(name)), sys.intern(value)))
        user_ids: frozenset[str] | None = None
        if "user_id" in match:
            ids = match["user_id"]
            ids = [ids] if isinstance(ids, str) else ids
            if not isinstance(ids, list) or not all(isinstance(i, str) and i for i in ids):
                self.fail(
                    match,
                    "user_id",
                    f"{path}.match.user_id",
                    "must be a user id or a list of user ids (strings)",
                )
            else:
                user_ids = frozenset(ids)
        if version is None:
            return None
        return Rule(version=sys.intern(version), headers=tuple(headers), user_ids=user_ids)

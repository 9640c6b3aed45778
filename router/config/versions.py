"""A model's versions from the routing table: url, state, sunset, successor, timeout,
health check and outlier detection, and the references to a version by name."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any
from urllib.parse import urlsplit

from router.config import yamlmarks
from router.config.model import (
    NAME,
    STATES,
    HealthCheck,
    Outlier,
    Problem,
    Version,
    default_of,
    parse_address,
    yaml_keys,
)
from router.config.reader import Reader, join, show
from router.http.origin import Origin

_VERSION = yaml_keys(Version)
# What an upstream model or version name may hold: it is written into a URL path segment
# (OIP, TF Serving) and a JSON string (OpenAI) without escaping. OpenAI-compatible servers
# name models like "meta-llama/Llama-3.1-8B-Instruct", hence "/" (only in the JSON body:
# a path segment gets it percent-encoded) is allowed too.
_UPSTREAM_NAME = re.compile(r"[A-Za-z0-9._:@+/-]+\Z")
_IN_FLIGHT = default_of(Version, "max_in_flight")
_QUEUE_S = default_of(Version, "queue_s")
_HEALTH = yaml_keys(HealthCheck)
_OUTLIER = yaml_keys(Outlier)


class VersionsReader(Reader):
    """The `versions` of a model, and the keys that name one of them."""

    def versions(
        self, section: dict[Any, Any], path: str, timeout_s: float, line: int | None
    ) -> dict[str, Version]:
        path = f"{path}.versions"
        if "versions" not in section:
            self.problems.append(
                Problem(line, path, "is missing; list the versions and their urls")
            )
            return {}
        found = self.mapping(section, "versions", path, ())
        if not found:
            if found is not None:
                self.fail(section, "versions", path, "is empty; list the versions and their urls")
            return {}
        versions: dict[str, Version] = {}
        for name in found:
            version = self.version(found, name, f"{path}.{name}", timeout_s)
            if version is not None:
                versions[version.name] = version
        for name, version in versions.items():
            if version.successor is not None:
                self.version_ref(
                    found[name], "successor", f"{path}.{name}", versions, what="a successor"
                )
                if version.successor == name:
                    self.fail(
                        found[name],
                        "successor",
                        f"{path}.{name}.successor",
                        "cannot be the version itself",
                    )
        return versions

    def version(
        self, found: dict[Any, Any], name: Any, path: str, timeout_s: float
    ) -> Version | None:
        if not isinstance(name, str) or not NAME.match(name):
            self.fail(found, name, path, "version names match [A-Za-z0-9][A-Za-z0-9._-]*")
        section = self.mapping(found, name, path, _VERSION)
        if section is None:
            return None
        grpc_url = self.grpc_url(section, path)
        url = None
        if "url" in section or "grpc_url" not in section:
            url = self.url(section, path, yamlmarks.line_of(found, name))
        state = self.choice(section, "state", path, STATES) or default_of(Version, "state")
        successor = self.string(section, "successor", path)
        sunset = self.sunset(section, path)
        if sunset is not None and state == "active":
            self.fail(
                section,
                "sunset",
                f"{path}.sunset",
                "only a deprecated or retired version has a sunset; add state: deprecated",
            )
        # A version with a bad url is still a version, so that references to it are not
        # reported as missing; the model is refused for the url problem anyway.
        parts = urlsplit(url or "")
        return Version(
            name=str(name),
            url=url or "",
            timeout_s=self.number(section, "timeout_s", path, timeout_s, positive=True),
            state=state,  # type: ignore[arg-type]
            sunset=sunset,
            successor=successor,
            health=self.health(section, path),
            max_in_flight=self.count(section, "max_in_flight", path, _IN_FLIGHT) or _IN_FLIGHT,
            queue_s=self.number(section, "queue_s", path, _QUEUE_S, positive=False),
            upstream_model=self.upstream_name(section, "upstream_model", path),
            upstream_version=self.upstream_name(section, "upstream_version", path),
            grpc_url=grpc_url,
            origin=Origin.of(parts),
        )

    def upstream_name(self, section: dict[Any, Any], key: str, path: str) -> str | None:
        """A name the backend knows the model or version by (a string, or an integer
        version as written): it goes into a path segment or a JSON string as it is, so it
        may hold no "/", no space and no control character."""
        name = self.string(section, key, path)
        if name is not None and not _UPSTREAM_NAME.match(name):
            self.fail(
                section,
                key,
                f"{path}.{key}",
                f"'{name}' cannot name a model on its backend: use letters, digits and ._:@+/-",
            )
            return None
        return name

    def health(self, section: dict[Any, Any], path: str) -> HealthCheck | None:
        where = f"{path}.health"
        if "health" not in section:
            return None
        found = self.mapping(section, "health", where, _HEALTH)
        if found is None:
            return None
        check_path = self.string(found, "path", where)
        if check_path is None or not check_path.startswith("/"):
            self.fail(found, "path", f"{where}.path", "is needed and starts with /, like /health")
            return None
        interval = default_of(HealthCheck, "interval_s")
        return HealthCheck(
            check_path, self.number(found, "interval_s", where, interval, positive=True)
        )

    def outlier(self, section: dict[Any, Any], path: str) -> Outlier:
        where = f"{path}.outlier"
        if "outlier" not in section:
            return Outlier()
        found = self.mapping(section, "outlier", where, _OUTLIER)
        if found is None:
            return Outlier()
        defaults = Outlier()
        failures = found.get("failures", defaults.failures)
        if isinstance(failures, bool) or not isinstance(failures, int) or failures < 1:
            message = f"must be a whole number, 1 or more, not {show(failures)}"
            self.fail(found, "failures", f"{where}.failures", message)
            failures = defaults.failures
        cooloff = self.number(found, "cooloff_s", where, defaults.cooloff_s, positive=True)
        return Outlier(failures, cooloff)

    def grpc_url(self, section: dict[Any, Any], path: str) -> str | None:
        """`HOST:PORT` or `grpcs://HOST:PORT`: where the version answers gRPC."""
        text = self.string(section, "grpc_url", path)
        if text is None:
            return None
        address = text.removeprefix("grpcs://")
        try:
            parse_address(address)
        except ValueError:
            message = f"'{text}' is not HOST:PORT or grpcs://HOST:PORT (for example 127.0.0.1:9011)"
            self.fail(section, "grpc_url", f"{path}.grpc_url", message)
            return None
        return text

    def url(self, section: dict[Any, Any], path: str, line: int | None) -> str | None:
        if "url" not in section:
            message = "is missing (for example url: http://127.0.0.1:9001, or a grpc_url)"
            self.problems.append(Problem(line, f"{path}.url", message))
            return None
        text = self.string(section, "url", path)
        if text is None:
            return None
        try:
            parts = urlsplit(text)
            parts.port  # noqa: B018 (raises ValueError on a bad port)
        except ValueError as exc:
            self.fail(section, "url", f"{path}.url", f"'{text}' is not a valid URL: {exc}")
            return None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            self.fail(
                section, "url", f"{path}.url", f"'{text}' must be http:// or https:// with a host"
            )
            return None
        if parts.query or parts.fragment:
            self.fail(section, "url", f"{path}.url", f"'{text}' must not carry a query or fragment")
            return None
        return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"

    def sunset(self, section: dict[Any, Any], path: str) -> dt.date | None:
        if "sunset" not in section:
            return None
        value = section["sunset"]
        if isinstance(value, dt.datetime):
            return value.date()
        if isinstance(value, dt.date):
            return value
        try:
            return dt.date.fromisoformat(str(value))
        except ValueError:
            self.fail(
                section,
                "sunset",
                f"{path}.sunset",
                f"must be a date like 2027-03-31, not {show(value)}",
            )
            return None

    def version_ref(
        self,
        parent: dict[Any, Any],
        key: str,
        path: str,
        versions: dict[str, Version],
        *,
        what: str,
    ) -> str | None:
        """A version named by a key; it must exist and must not be retired."""
        where = join(path, key)
        if key not in parent:
            self.fail(parent, None, where, "is missing; name a version")
            return None
        name = self.string(parent, key, path)
        if name is None:
            return None
        version = versions.get(name)
        if version is None:
            self.fail(
                parent,
                key,
                where,
                f"no version '{name}'; versions: {', '.join(versions) or 'none'}",
            )
            return None
        if version.state == "retired" and what != "a successor":
            self.fail(parent, key, where, f"version '{name}' is retired and cannot be {what}")
            return None
        return name

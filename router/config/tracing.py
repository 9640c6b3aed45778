"""The routing table's `server.tracing` (contract section 15): where spans go and which share
of new traces, and the check that the `otel` extra is installed when a table asks for it."""

from __future__ import annotations

import importlib.util
from typing import Any
from urllib.parse import urlsplit

from router.config.model import Tracing, default_of, yaml_keys
from router.config.reader import Reader, is_number, join, show

EXTRA = "pip install 'model-router[otel]'"
_KEYS = yaml_keys(Tracing)
_SIGNAL = "/v1/traces"
_DEFAULT_SAMPLE: float = default_of(Tracing, "sample")


class TracingReader(Reader):
    def tracing(self, server: dict[Any, Any]) -> Tracing | None:
        if "tracing" not in server:
            return None
        section = self.mapping(server, "tracing", "server.tracing", _KEYS)
        if section is None:
            return None
        if "otlp_endpoint" not in section:
            example = "otlp_endpoint: http://127.0.0.1:4318"
            message = f"needs the collector's OTLP/HTTP base URL, like {example}"
            self.fail(server, "tracing", "server.tracing", message)
        endpoint = self._endpoint(section)
        sample = section.get("sample", _DEFAULT_SAMPLE)
        if not is_number(sample) or not 0 <= sample <= 1:
            where = "server.tracing.sample"
            self.fail(section, "sample", where, f"must be a number from 0 to 1, not {show(sample)}")
            sample = _DEFAULT_SAMPLE
        if endpoint is None:
            return None
        if not _installed():
            self.fail(server, "tracing", "server.tracing", f"tracing needs the extra: {EXTRA}")
        return Tracing(endpoint, float(sample))

    def _endpoint(self, section: dict[Any, Any]) -> str | None:
        where = "server.tracing"
        if "otlp_endpoint" not in section:
            return None
        text = self.string(section, "otlp_endpoint", where)
        if text is None:
            return None
        where = join(where, "otlp_endpoint")
        url = urlsplit(text)
        if url.scheme not in ("http", "https") or not url.hostname:
            example = "http://127.0.0.1:4318"
            message = f"'{text}' is not an http:// or https:// URL, like {example}"
            self.fail(section, "otlp_endpoint", where, message)
            return None
        if url.path.rstrip("/").endswith(_SIGNAL):
            message = f"is the collector's base URL: drop '{_SIGNAL}' (the router adds it)"
            self.fail(section, "otlp_endpoint", where, message)
            return None
        return text.rstrip("/")


def _installed() -> bool:
    try:
        return importlib.util.find_spec("opentelemetry.exporter.otlp.proto.http") is not None
    except (ValueError, ModuleNotFoundError):  # a parent package missing, or made unimportable
        return False

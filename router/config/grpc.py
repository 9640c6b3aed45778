"""The routing table's gRPC keys (contract section 12): `server.grpc_listen`, a model's
`grpc_services`, and the check that the `grpc` extra is installed when a table asks for
gRPC."""

from __future__ import annotations

import importlib.util
import re
from typing import Any

from router.config import yamlmarks
from router.config.model import Address, Model, Problem
from router.config.reader import Reader, join

# `package.Service`, as a method path names it: /package.Service/Method.
_SERVICE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")
EXTRA = "pip install 'model-router[grpc]'"


class GrpcReader(Reader):
    def grpc_listen(self, server: dict[Any, Any]) -> Address | None:
        if "grpc_listen" not in server:
            return None
        return self.address(server, "grpc_listen", "server", Address("127.0.0.1", 0))

    def grpc_services(self, section: dict[Any, Any], path: str) -> tuple[str, ...]:
        if "grpc_services" not in section:
            return ()
        found = section["grpc_services"]
        where = join(path, "grpc_services")
        if not isinstance(found, list) or not all(isinstance(s, str) for s in found):
            message = "must be a list of gRPC services, like [mycompany.Recommender]"
            self.fail(section, "grpc_services", where, message)
            return ()
        for i, service in enumerate(found):
            if not _SERVICE.match(service):
                message = f"'{service}' is not a gRPC service name (package.Service)"
                self.fail(found, i, f"{where}[{i}]", message)
        return tuple(found)

    def grpc_index(self, data: dict[Any, Any], models: dict[str, Model]) -> dict[str, str]:
        """Each service and the one model that serves it; a service named twice is refused."""
        index: dict[str, str] = {}
        for name, model in models.items():
            for i, service in enumerate(model.grpc_services):
                if service in index:
                    section = data["models"][name]["grpc_services"]
                    where = f"models.{name}.grpc_services[{i}]"
                    self.fail(
                        section, i, where, f"'{service}' is served by '{index[service]}' already"
                    )
                index.setdefault(service, name)
        return index

    def grpc_extra(self, data: dict[Any, Any], models: dict[str, Model]) -> None:
        """A table that asks for gRPC needs grpcio: say so when `check` reads it."""
        if _installed("grpc"):
            return
        server = data.get("server")
        if isinstance(server, dict) and "grpc_listen" in server:
            self.fail(server, "grpc_listen", "server.grpc_listen", f"gRPC needs the extra: {EXTRA}")
            return
        for name, model in models.items():
            for version in model.versions.values():
                if version.grpc_url:
                    line = yamlmarks.line_of(data["models"][name]["versions"], version.name)
                    where = f"models.{name}.versions.{version.name}.grpc_url"
                    self.problems.append(Problem(line, where, f"gRPC needs the extra: {EXTRA}"))
                    return


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # in sys.modules as None: made unimportable on purpose
        return False
